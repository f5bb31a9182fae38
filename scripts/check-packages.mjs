#!/usr/bin/env node
// publint and attw (ESM-only profile) on every published package, against the packed tarball so that
// publishConfig (the dist-only exports map) is what gets checked.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
let bad = 0;
for (const dir of readdirSync(join(root, 'packages'))) {
  const pkgDir = join(root, 'packages', dir);
  const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
  if (pkg.private || !pkg.exports) continue;
  const out = mkdtempSync(join(tmpdir(), 'bg-pack-'));
  try {
    const pack = spawnSync('pnpm', ['pack', '--pack-destination', out], { cwd: pkgDir, encoding: 'utf8' });
    if (pack.status !== 0) {
      console.error(`${pkg.name}: pnpm pack failed\n${pack.stderr}`);
      bad++;
      continue;
    }
    const tgz = join(out, readdirSync(out).find((f) => f.endsWith('.tgz')));
    const pub = spawnSync('pnpm', ['exec', 'publint', '--strict', tgz], { cwd: root, encoding: 'utf8' });
    const attw = spawnSync('pnpm', ['exec', 'attw', '--profile', 'esm-only', '--format', 'table-flipped', tgz], { cwd: root, encoding: 'utf8' });
    const ok = pub.status === 0 && attw.status === 0;
    console.log(`${ok ? 'ok ' : 'BAD'} ${pkg.name}`);
    if (!ok) {
      bad++;
      if (pub.status !== 0) console.log(pub.stdout + pub.stderr);
      if (attw.status !== 0) console.log(attw.stdout + attw.stderr);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}
process.exit(bad ? 1 : 0);
