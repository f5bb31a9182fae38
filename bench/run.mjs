#!/usr/bin/env node
/**
 * pnpm bench: blockgraph against QEMU's tools on identical workloads, in one run, interleaved (QEMU, blockgraph,
 * QEMU, blockgraph, ...), several repetitions; prints the medians and the ratio per workload and rewrites
 * BENCHMARKS.md (machine, versions, exact commands, results).
 *
 *   node bench/run.mjs [--reps 5] [--only id,id] [--dir DIR] [--no-write]
 *
 * blockgraph runs as the built CLI (packages/cli/dist/bin.js, built first when missing or older than the
 * sources). The workloads are in bench/lib/workloads.mjs, the input images in bench/lib/fixtures.mjs.
 */
import { spawnSync } from 'node:child_process';
import console from 'node:console';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import process from 'node:process';
import { URL, fileURLToPath } from 'node:url';
import { buildFixtures } from './lib/fixtures.mjs';
import { median, reportedSeconds } from './lib/stats.mjs';
import { machineInfo, versions } from './lib/system.mjs';
import { WORKLOADS } from './lib/workloads.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI_DIR = join(ROOT, 'packages', 'cli');
const BIN = join(CLI_DIR, 'dist', 'bin.js');

function parseArgs(argv) {
  const o = { reps: 5, only: null, dir: null, write: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--reps') o.reps = Number(argv[++i]);
    else if (a.startsWith('--reps=')) o.reps = Number(a.slice(7));
    else if (a === '--only') o.only = argv[++i].split(',');
    else if (a.startsWith('--only=')) o.only = a.slice(7).split(',');
    else if (a === '--dir') o.dir = argv[++i];
    else if (a === '--no-write') o.write = false;
    else if (a === '-h' || a === '--help') {
      console.log('usage: node bench/run.mjs [--reps N] [--only id,id] [--dir DIR] [--no-write]');
      console.log(`workloads: ${WORKLOADS.map((w) => w.id).join(', ')}`);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (!(o.reps >= 1)) throw new Error('--reps must be at least 1');
  return o;
}

const log = (s) => console.log(s);

function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

/** Build the CLI and the packages it loads when its build is missing or stale. */
function ensureBuilt() {
  const sources = ['block-core', 'driver-raw', 'driver-qcow2', 'filter-cor', 'cli']
    .map((p) => join(ROOT, 'packages', p, 'src'))
    .filter(existsSync);
  const fresh = existsSync(BIN) && statSync(BIN).mtimeMs >= Math.max(...sources.map(newest));
  if (fresh) return;
  log('building @blockgraph/cli and its dependencies (pnpm --filter @blockgraph/cli... build)');
  const r = spawnSync('pnpm', ['--filter', '@blockgraph/cli...', 'run', 'build'], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) throw new Error('build failed');
}

function substitute(args, paths) {
  return args.map((a) => a.replace(/\$([A-Z0-9]+)/g, (m, name) => paths[name] ?? m));
}

function runOnce(argv, metric, before, paths) {
  for (const p of substitute(before ?? [], paths)) rmSync(p, { force: true });
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0], argv.slice(1), { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20 });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed (${r.status}): ${r.stderr}`);
  const seconds = metric === 'reported' ? reportedSeconds(r.stdout) : wall;
  if (!Number.isFinite(seconds)) throw new Error(`${argv.join(' ')}: no run time in its output:\n${r.stdout}`);
  return seconds;
}

function fmt(s) {
  return s < 10 ? s.toFixed(3) : s.toFixed(2);
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const workloads = WORKLOADS.filter((w) => !opts.only || opts.only.includes(w.id));
  if (!workloads.length) throw new Error(`no workload matches --only ${opts.only}`);
  for (const tool of ['qemu-img', 'qemu-io']) {
    if (spawnSync(tool, ['--version']).status !== 0) throw new Error(`${tool} is needed (apt-get install qemu-utils)`);
  }
  ensureBuilt();
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'blockgraph-bench-'));
  const machine = machineInfo(dir);
  const ver = versions(ROOT);
  log(`blockgraph ${ver.blockgraph}, ${ver.qemu}, node ${ver.node}; ${machine.cpu}, ${machine.cores} cores`);
  log(`images in ${dir}, ${opts.reps} repetitions, interleaved QEMU/blockgraph`);
  const results = [];
  try {
    const needed = [...new Set(workloads.flatMap((w) => w.fixtures))];
    const paths = { ...buildFixtures(needed, dir, log), OUT: join(dir, 'out.img'), DIR: dir };
    for (const w of workloads) {
      const qemu = substitute(w.qemu, paths);
      const ours = [process.execPath, BIN, ...substitute(w.ours, paths)];
      // One untimed warm-up of each (page cache, first-run effects).
      runOnce(qemu, w.metric, w.before, paths);
      runOnce(ours, w.metric, w.before, paths);
      const q = [];
      const b = [];
      for (let i = 0; i < opts.reps; i++) {
        q.push(runOnce(qemu, w.metric, w.before, paths));
        b.push(runOnce(ours, w.metric, w.before, paths));
      }
      const r = { w, q, b, qm: median(q), bm: median(b) };
      // Speed relative to QEMU: QEMU's time / ours (higher is better; 1.00 = as fast as QEMU).
      r.speed = r.qm / r.bm;
      results.push(r);
      const verdict = w.target ? (r.speed >= w.target ? `meets ≥ ${w.target}×` : `MISSES ≥ ${w.target}×`) : '';
      log(`${w.id.padEnd(24)} qemu ${fmt(r.qm)} s  blockgraph ${fmt(r.bm)} s  speed ${r.speed.toFixed(2)}× ${verdict}  [q: ${q.map(fmt).join(' ')}] [b: ${b.map(fmt).join(' ')}]`);
    }
  } finally {
    if (!opts.dir) rmSync(dir, { recursive: true, force: true });
  }
  if (opts.write) {
    writeFileSync(join(ROOT, 'BENCHMARKS.md'), report(results, machine, ver, opts));
    log('BENCHMARKS.md rewritten');
  }
}

function report(results, machine, ver, opts) {
  const date = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const lines = [
    '# Benchmarks',
    '',
    'blockgraph against QEMU 7.2 on the same workloads, measured in one run by `pnpm bench` (`bench/run.mjs`), which',
    'rewrites this file. Each workload runs once untimed as a warm-up, then QEMU and blockgraph alternate',
    `(${opts.reps} repetitions each); the table shows medians. **speed** = QEMU's time / blockgraph's time (higher is`,
    'better, 1.00 = as fast as QEMU); **target** is what the issues ask for. "reported" is the run time the tool prints itself (`Run completed in N seconds.`, which',
    'leaves out process start-up); "wall" is the whole process, start-up included. The machine may be shared with',
    'other work: the load average at the start is recorded below, and single runs vary (all runs are listed).',
    '',
    '## Machine and versions',
    '',
    `| | |`,
    `|---|---|`,
    `| date | ${date} |`,
    `| CPU | ${machine.cpu} |`,
    `| cores | ${machine.cores} |`,
    `| memory | ${machine.memory} |`,
    `| kernel | ${machine.kernel} |`,
    `| disk | ${machine.disk} |`,
    `| load average at start | ${machine.load} |`,
    `| Node.js | ${ver.node} |`,
    `| QEMU | ${ver.qemu} |`,
    `| blockgraph | git ${ver.blockgraph} (\`packages/cli/dist/bin.js\`) |`,
    '',
    '## Results',
    '',
    '| workload | metric | QEMU (s) | blockgraph (s) | speed | target | all runs QEMU / blockgraph (s) |',
    '|---|---|---:|---:|---:|---|---|',
    ...results.map(
      (r) =>
        `| ${r.w.id} | ${r.w.metric} | ${fmt(r.qm)} | ${fmt(r.bm)} | ${r.speed.toFixed(2)}× | ${r.w.target ? `≥ ${r.w.target}× ${r.speed >= r.w.target ? 'met' : '**missed**'}` : ''} | ${r.q.map(fmt).join(' ')} / ${r.b.map(fmt).join(' ')} |`,
    ),
    '',
    '## Workloads and exact commands',
    '',
    '`$DATA256`, `$HALF1G`: input images created at the start of the run with `qemu-img create` and `qemu-io` (see',
    '`bench/lib/fixtures.mjs`); `$OUT` is deleted before every convert run. `blockgraph` is',
    '`node packages/cli/dist/bin.js`.',
    '',
  ];
  for (const r of results) {
    lines.push(`### ${r.w.id}`, '', r.w.title, '', '```sh', r.w.qemu.join(' '), `blockgraph ${r.w.ours.join(' ')}`, '```', '');
  }
  return lines.join('\n');
}

try {
  main();
} catch (e) {
  console.error(`bench: ${e.message}`);
  process.exit(1);
}
