#!/usr/bin/env node
// Runs every check of the repository and prints one summary line at the end:
// "N passed, N failed, N skipped". Static checks (lint, typecheck, package checks) count as one test each.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
let passed = 0;
let failed = 0;
let skipped = 0;
const failures = [];

function check(name, cmd, args) {
  const t0 = Date.now();
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env });
  const ok = r.status === 0;
  console.log(`${ok ? '✓' : '✗'} ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  if (ok) passed++;
  else {
    failed++;
    failures.push(name);
  }
}

const only = process.argv.slice(2);
if (only.length === 0) {
  check('lint', 'pnpm', ['exec', 'eslint', '.']);
  check('typecheck', 'pnpm', ['exec', 'tsc', '-b']);
  check('package checks (publint, attw)', 'node', ['scripts/check-packages.mjs']);
}

const results = join(root, '.vitest-results.json');
rmSync(results, { force: true });
const t0 = Date.now();
const v = spawnSync('pnpm', ['exec', 'vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${results}`, ...only], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, FORCE_COLOR: process.env.FORCE_COLOR ?? '0' },
});
console.log(`vitest finished in ${((Date.now() - t0) / 1000).toFixed(1)} s (exit ${v.status})`);
if (existsSync(results)) {
  const json = JSON.parse(readFileSync(results, 'utf8'));
  passed += json.numPassedTests;
  failed += json.numFailedTests;
  skipped += json.numPendingTests + json.numTodoTests;
  // A test file that fails to load has no failed test of its own: count it.
  for (const f of json.testResults ?? []) {
    if (f.status === 'failed' && (f.assertionResults ?? []).every((a) => a.status !== 'failed')) {
      failed++;
      failures.push(`${f.name}: ${(f.message ?? '').split('\n')[0]}`);
    }
    for (const a of f.assertionResults ?? []) if (a.status === 'failed') failures.push(a.fullName);
  }
} else {
  failed++;
  failures.push('vitest produced no results');
}
if (failures.length) {
  console.log('\nFailed:');
  for (const f of failures) console.log(`  - ${f}`);
}
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed ? 1 : 0);
