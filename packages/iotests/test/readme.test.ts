import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { conformanceTests } from '../src/index.js';

describe('README', () => {
  it('lists every conformance check with the capabilities that gate it', () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const rows = readme
      .split('\n')
      .filter((l) => /^\| [a-z][a-z -]*: /.test(l))
      .map((l) => l.split('|').map((c) => c.trim()).slice(1, 3));
    const expected = conformanceTests().map((t) => [
      t.name,
      [...t.requires.map((r) => `\`${r}\``), ...t.excludes.map((r) => `not \`${r}\``)].join(', ') || '— (always)',
    ]);
    expect(rows).toEqual(expected);
  });
});
