import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

/** block-core must run in a browser: no Node built-in may be imported from its sources. */
const NODE_BUILTINS = /(?:from\s+|import\s*\(\s*|require\s*\(\s*)['"](node:[^'"]+|fs|path|os|zlib|child_process|crypto|events|stream|util|url|worker_threads|buffer|net)['"]/;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

describe('platform neutrality', () => {
  it('block-core/src imports nothing from node:', () => {
    const files = sources(join(import.meta.dirname, '../src'));
    expect(files.length).toBeGreaterThan(10);
    const offenders = files.filter((f) => NODE_BUILTINS.test(readFileSync(f, 'utf8')));
    expect(offenders).toEqual([]);
  });

  it('the check itself recognises a Node import', () => {
    expect(NODE_BUILTINS.test("import { readFile } from 'node:fs';")).toBe(true);
    expect(NODE_BUILTINS.test("import x from 'fs'")).toBe(true);
    expect(NODE_BUILTINS.test("import { Graph } from './graph.js';")).toBe(false);
  });

  it('no Buffer in public sources', () => {
    const files = sources(join(import.meta.dirname, '../src'));
    expect(files.filter((f) => /\bBuffer\./.test(readFileSync(f, 'utf8')))).toEqual([]);
  });
});
