#!/usr/bin/env node
/**
 * raw-bench: `qemu-img bench -f raw` against blockgraph's raw-over-file stack (Graph + BlockBackend) on the
 * same file in the same run, interleaved A B A B, and prints medians and ratios.
 *
 *   node bench/raw-bench.mjs [--reps 5] [--dir DIR] [--file-size 512M] [--only seq-read,seq-write,rand4k]
 *                            (also: --only direct-read,direct-write for O_DIRECT, qemu-img -t none)
 *
 * Runs from a clean checkout after `pnpm install`: the script re-executes itself with tsx and the
 * `@blockgraph/source` export condition, so the packages' TypeScript sources are used without a build.
 *
 * Our side follows qemu-img bench's semantics: -c count, -d depth (requests in flight), -s size, -S step
 * (offset advance per request, wrapping to 0 at the end of the image), -w write, -t writeback (page cache,
 * no O_DIRECT). Only the request loop is timed, as qemu-img does (the final flush on close is not).
 * Scenarios: sequential 1 MiB reads and writes at depth 4, 4 KiB reads at depth 32 with the page cache warm.
 */
import { Buffer } from 'node:buffer';
import { spawnSync } from 'node:child_process';
import console from 'node:console';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { fileURLToPath, URL } from 'node:url';

const SELF = fileURLToPath(import.meta.url);
const MiB = 1024 * 1024;

function parseSize(text) {
  const m = /^(\d+)([kKmMgG]?)$/.exec(text);
  if (!m) throw new Error(`bad size ${text}`);
  return Number(m[1]) * { '': 1, k: 1024, m: MiB, g: 1024 * MiB }[m[2].toLowerCase()];
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

// --------------------------------------------------------------------------------------------------------
// Worker: one run of our bench loop, result as JSON on stdout.
// --------------------------------------------------------------------------------------------------------

async function ourBench({ file, count, depth, size, step, write, direct }) {
  // The workspace packages by path (bench/ is not a package); their own imports resolve through pnpm's links.
  const { Graph } = await import(new URL('../packages/block-core/src/index.ts', import.meta.url).href);
  const { allRawDrivers, allocAlignedBuffer } = await import(new URL('../packages/driver-raw/src/node/file.ts', import.meta.url).href);
  const graph = new Graph({ drivers: allRawDrivers });
  const node = await graph.openImage(file, { format: 'raw', options: direct ? { cache: { direct: true } } : {} });
  const be = graph.backend(node);
  const imageSize = be.getLength();
  const bufs = [];
  // Page-aligned buffers, like the qemu_blockalign() ones of qemu-img bench (see driver-raw aligned.ts).
  // One allocation sliced per request slot (every WebAssembly.Memory reserves a lot of address space).
  const all = allocAlignedBuffer(depth * size).fill(write ? 0xa5 : 0);
  for (let i = 0; i < depth; i++) bufs.push(all.subarray(i * size, (i + 1) * size));
  let issued = 0;
  let done = 0;
  let offset = 0;
  const t0 = performance.now();
  await new Promise((resolve, reject) => {
    const submit = (slot) => {
      if (issued >= count) return;
      issued++;
      const off = offset;
      offset += step;
      if (offset + size > imageSize) offset = 0;
      const p = write ? be.pwrite(off, bufs[slot]) : be.pread(off, bufs[slot]);
      p.then(() => {
        if (++done === count) resolve();
        else submit(slot);
      }, reject);
    };
    for (let i = 0; i < Math.min(depth, count); i++) submit(i);
  });
  const seconds = (performance.now() - t0) / 1000;
  await graph.close();
  return { seconds };
}

// --------------------------------------------------------------------------------------------------------
// Driver: prepare the file, run both sides interleaved, report.
// --------------------------------------------------------------------------------------------------------

const SCENARIOS = {
  // 4 passes over the file (the offset wraps, as in qemu-img bench) so that a run lasts long enough to measure.
  'seq-read': { label: 'sequential read 1 MiB, depth 4', size: MiB, depth: 4, write: false, unit: 'MiB/s', passes: 4 },
  'seq-write': { label: 'sequential write 1 MiB, depth 4', size: MiB, depth: 4, write: true, unit: 'MiB/s', passes: 4 },
  rand4k: { label: '4 KiB reads, depth 32, page cache warm', size: 4096, depth: 32, write: false, unit: 'IOPS', count: 200000 },
  // Opt-in (--only): O_DIRECT, qemu-img -t none against cache.direct=on.
  'direct-read': { label: 'O_DIRECT sequential read 1 MiB, depth 4', size: MiB, depth: 4, write: false, unit: 'MiB/s', direct: true },
  'direct-write': { label: 'O_DIRECT sequential write 1 MiB, depth 4', size: MiB, depth: 4, write: true, unit: 'MiB/s', direct: true },
};
const DEFAULT_SCENARIOS = ['seq-read', 'seq-write', 'rand4k'];

function qemuBench(file, s) {
  const args = ['bench', '-f', 'raw', '-t', s.direct ? 'none' : 'writeback', '-c', String(s.count), '-d', String(s.depth), '-s', String(s.size), '-S', String(s.step)];
  if (s.write) args.push('-w');
  args.push(file);
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  if (r.error) throw r.error;
  const m = /Run completed in ([0-9.]+) seconds/.exec(r.stdout);
  if (r.status !== 0 || !m) throw new Error(`qemu-img ${args.join(' ')} failed: ${r.stderr || r.stdout}`);
  return Number(m[1]);
}

function workerArgs() {
  const tsx = fileURLToPath(import.meta.resolve('tsx'));
  return ['--conditions=@blockgraph/source', '--import', tsx];
}

function ourRun(file, s) {
  const job = JSON.stringify({ file, count: s.count, depth: s.depth, size: s.size, step: s.step, write: s.write, direct: !!s.direct });
  const r = spawnSync(process.execPath, [...workerArgs(), SELF, '--worker', job], { encoding: 'utf8' });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`our bench failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()).seconds;
}

function fillFile(path, bytes) {
  const fd = openSync(path, 'w');
  const buf = Buffer.alloc(MiB);
  for (let i = 0; i < buf.length; i++) buf[i] = (i * 7 + 3) & 0xff;
  for (let pos = 0; pos < bytes; pos += MiB) writeSync(fd, buf, 0, Math.min(MiB, bytes - pos), pos);
  closeSync(fd);
}

function warmCache(path, bytes) {
  const fd = openSync(path, 'r');
  const buf = Buffer.alloc(MiB);
  for (let pos = 0; pos < bytes; pos += MiB) readSync(fd, buf, 0, MiB, pos);
  closeSync(fd);
}

async function main() {
  const argv = process.argv.slice(2);
  if (argv[0] === '--worker') {
    const res = await ourBench(JSON.parse(argv[1]));
    process.stdout.write(JSON.stringify(res) + '\n');
    return;
  }
  const opt = (name, dflt) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : dflt;
  };
  const reps = Number(opt('--reps', '5'));
  const fileSize = parseSize(opt('--file-size', '512M'));
  const only = opt('--only', DEFAULT_SCENARIOS.join(',')).split(',');
  const dir = opt('--dir', undefined) ?? mkdtempSync(join(tmpdir(), 'raw-bench-'));
  const file = join(dir, 'bench.raw');
  const qv = spawnSync('qemu-img', ['--version'], { encoding: 'utf8' });
  if (qv.error) throw new Error('qemu-img not found (apt-get install qemu-utils)');
  console.log(`${qv.stdout.split('\n')[0]}; node ${process.version}; UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? '4 (default)'}`);
  console.log(`file ${file}, ${fileSize / MiB} MiB, ${reps} repetitions, interleaved qemu-img / blockgraph\n`);
  fillFile(file, fileSize);
  const results = [];
  try {
    for (const key of only) {
      const base = SCENARIOS[key];
      if (!base) throw new Error(`unknown scenario ${key}`);
      const s = { ...base, step: base.size, count: base.count ?? Math.floor(fileSize / base.size) * (base.passes ?? 1) };
      const bytes = s.count * s.size;
      const rate = (sec) => (s.unit === 'IOPS' ? s.count / sec : bytes / MiB / sec);
      const qemu = [];
      const ours = [];
      warmCache(file, fileSize);
      // A B A B ..., with the first runner alternating so that neither always follows the other.
      for (let i = 0; i < reps; i++) {
        if (i % 2 === 0) {
          qemu.push(rate(qemuBench(file, s)));
          ours.push(rate(ourRun(file, s)));
        } else {
          ours.push(rate(ourRun(file, s)));
          qemu.push(rate(qemuBench(file, s)));
        }
      }
      const q = median(qemu);
      const o = median(ours);
      const cmd = `qemu-img bench -f raw -t ${s.direct ? 'none' : 'writeback'} -c ${s.count} -d ${s.depth} -s ${s.size} -S ${s.step}${s.write ? ' -w' : ''}`;
      results.push({ key, label: s.label, unit: s.unit, qemu: q, ours: o, ratio: o / q, qemuRuns: qemu, ourRuns: ours, cmd });
      const fmt = (v) => (s.unit === 'IOPS' ? Math.round(v).toLocaleString('en-US') : v.toFixed(0));
      console.log(`${s.label}  [${cmd}]`);
      console.log(`  qemu-img   ${qemu.map(fmt).join(' / ')} ${s.unit}  median ${fmt(q)}`);
      console.log(`  blockgraph ${ours.map(fmt).join(' / ')} ${s.unit}  median ${fmt(o)}`);
      console.log(`  ratio blockgraph/qemu-img: ${(o / q).toFixed(2)}x\n`);
    }
  } finally {
    if (!argv.includes('--dir')) rmSync(dir, { recursive: true, force: true });
  }
  console.log('summary:');
  for (const r of results) console.log(`  ${r.key.padEnd(10)} ${r.ratio.toFixed(2)}x  (${r.label})`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exit(1);
});
