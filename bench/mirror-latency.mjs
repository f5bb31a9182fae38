#!/usr/bin/env node
/**
 * Guest write latency under a write-blocking mirror, blockgraph beside QEMU (see lib/mirror-latency.mjs for the
 * method). `pnpm bench` runs it too and puts the table into BENCHMARKS.md; this runs it alone and prints it.
 *
 *   node bench/mirror-latency.mjs [--reps 3] [--count 5000] [--dir DIR] [--source]
 *
 * blockgraph's side uses the built packages (packages/* /dist; `pnpm build`), or with --source their TypeScript
 * sources through tsx.
 */
import console from 'node:console';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import process from 'node:process';
import { buildFixtures } from './lib/fixtures.mjs';
import { renderMirrorLatency, runMirrorLatency } from './lib/mirror-latency.mjs';

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const reps = Number(opt('--reps', '3'));
const count = Number(opt('--count', '5000'));
const given = opt('--dir', undefined);
const dir = given ?? mkdtempSync(join(tmpdir(), 'blockgraph-mirror-latency-'));
try {
  const { QHALF1G } = buildFixtures(['QHALF1G'], dir, console.log);
  const res = await runMirrorLatency({ fixture: QHALF1G, dir, reps, count, log: console.log, source: argv.includes('--source') });
  console.log(`\n${renderMirrorLatency(res).join('\n')}`);
} finally {
  if (!given) rmSync(dir, { recursive: true, force: true });
}
