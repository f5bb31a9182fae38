/**
 * Guest write latency under a write-blocking mirror, blockgraph beside QEMU.
 *
 * The guest writes 4 KiB blocks one at a time (queue depth 1) at scattered offsets of a 1 GiB qcow2 disk (half data
 * in 2 MiB extents, half unallocated: the QHALF1G fixture), the way `qemu-img bench -w -d 1 -s 4k -S STEP` does:
 * the offset advances by STEP = 104729 blocks (a prime) modulo the disk size, so every write lands ~400 MiB from
 * the previous one and no block is written twice; about half of them allocate a cluster. Three phases, each on a
 * fresh copy of the disk:
 *
 *   base   no mirror
 *   copy   a write-blocking mirror (sync=full, to a new qcow2) starts together with the guest: the guest's writes
 *          compete with the bulk copy and are mirrored synchronously
 *   ready  the same mirror, the guest started only after BLOCK_JOB_READY: the steady state of write-blocking
 *          mode, where every guest write is written to the source and then to the target before it completes
 *
 * QEMU: qemu-storage-daemon opens the disk and exports it over NBD (UNIX socket); the guest is `qemu-img bench` as
 * an NBD client, so QEMU's latencies include an NBD round trip (client → socket → daemon → socket → client) that
 * blockgraph's do not; the mirror is started over QMP (blockdev-mirror copy-mode=write-blocking). Latency is the
 * run time qemu-img bench reports divided by the number of writes (depth 1: the mean latency).
 * blockgraph: one process holds the graph, the mirror job and the guest, which writes through a BlockBackend on
 * the disk (as a device model would); every write is timed (mean, median, 99th percentile).
 *
 * Both mirrors zero the target's unallocated areas first (blockdev-mirror's default: no target-is-zero).
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';
import { fileURLToPath, URL } from 'node:url';
import { Qmp } from './qmp.mjs';
import { median } from './stats.mjs';

const SELF = fileURLToPath(import.meta.url);
const BLOCK = 4096;
/** Offset step in 4 KiB blocks: a prime, so the sequence visits every block of the disk once. */
export const STEP_BLOCKS = 104729;
export const PHASES = ['base', 'copy', 'ready'];

function must(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr || r.error}`);
  return r.stdout;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------------------------------------------------
// QEMU: qemu-storage-daemon + NBD export + qemu-img bench as the guest
// ------------------------------------------------------------------------------------------------------------

async function qemuPhase({ src, dst, size, count, phase, dir }) {
  const sock = join(dir, 'qmp.sock');
  const nbd = join(dir, 'nbd.sock');
  rmSync(sock, { force: true });
  rmSync(nbd, { force: true });
  const qsd = spawn('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=src-file,filename=${src}`,
    '--blockdev', 'driver=qcow2,node-name=src,file=src-file',
    '--blockdev', `driver=file,node-name=dst-file,filename=${dst},discard=unmap`,
    '--blockdev', 'driver=qcow2,node-name=dst,file=dst-file,discard=unmap',
    '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
    '--export', 'type=nbd,id=exp0,node-name=src,name=disk,writable=on',
    '--chardev', `socket,id=qmp,path=${sock},server=on,wait=off`,
    '--monitor', 'chardev=qmp',
  ], { stdio: ['ignore', 'inherit', 'inherit'] });
  try {
    while (!existsSync(sock) || !existsSync(nbd)) await sleep(5);
    const qmp = new Qmp(sock);
    await qmp.connect();
    let tStart = 0;
    let readyAt = null;
    if (phase !== 'base') {
      tStart = performance.now();
      await qmp.execute('blockdev-mirror', { 'job-id': 'mirror', device: 'src', target: 'dst', sync: 'full', 'copy-mode': 'write-blocking' });
      const ready = qmp.waitEvent('BLOCK_JOB_READY').then(() => (readyAt = performance.now()));
      if (phase === 'ready') await ready;
    }
    const guestStart = performance.now();
    const out = await new Promise((resolve, reject) => {
      const p = spawn('qemu-img', ['bench', '-w', '-f', 'raw', '-t', 'writeback', '-d', '1', '-c', String(count), '-s', '4k',
        '-S', String(STEP_BLOCKS * BLOCK), `nbd+unix:///disk?socket=${nbd}`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let s = '';
      let e = '';
      p.stdout.on('data', (d) => (s += d));
      p.stderr.on('data', (d) => (e += d));
      p.on('close', (code) => (code === 0 ? resolve(s) : reject(new Error(`qemu-img bench over NBD failed: ${e}`))));
    });
    const guestEnd = performance.now();
    const m = /Run completed in ([0-9.]+) seconds/.exec(out);
    if (!m) throw new Error(`qemu-img bench: no run time in ${out}`);
    const secs = Number(m[1]);
    const res = { meanUs: (secs / count) * 1e6, guestSeconds: secs };
    if (phase !== 'base') {
      const jobs = await qmp.execute('query-block-jobs');
      if (!jobs.length || jobs[0].type !== 'mirror') throw new Error('the mirror job is gone');
      res.copyOverlap = overlap(guestStart, guestEnd, tStart, readyAt);
      await qmp.execute('block-job-cancel', { device: 'mirror', force: true });
      await qmp.waitEvent('BLOCK_JOB_CANCELLED').catch(() => undefined);
      if (readyAt === null) await sleep(0);
    }
    await qmp.execute('quit').catch(() => undefined);
    qmp.close();
    void size;
    return res;
  } finally {
    qsd.kill();
    await new Promise((r) => (qsd.exitCode !== null ? r() : qsd.once('exit', r)));
  }
}

/** Fraction of the guest's run [g0, g1] during which the mirror was still copying ([m0, ready)). */
function overlap(g0, g1, m0, ready) {
  const end = ready ?? g1;
  const o = Math.max(0, Math.min(g1, end) - Math.max(g0, m0));
  return g1 > g0 ? o / (g1 - g0) : 0;
}

// ------------------------------------------------------------------------------------------------------------
// blockgraph: graph + mirror job + in-process guest (child process running this file with --ours)
// ------------------------------------------------------------------------------------------------------------

async function oursPhase({ src, dst, count, phase }) {
  const { Graph, Perm } = await import('@blockgraph/block-core');
  const { allRawDrivers, allocAlignedBuffer } = await import('@blockgraph/driver-raw/file');
  const { qcow2Driver } = await import('@blockgraph/driver-qcow2/node');
  const { copyOnReadDriver } = await import('@blockgraph/filter-cor');
  const { startMirror } = await import('@blockgraph/job-mirror');
  const graph = new Graph({ drivers: [...allRawDrivers, qcow2Driver, copyOnReadDriver] });
  try {
    const disk = await graph.openImage(src, { format: 'qcow2', nodeName: 'disk0', options: { discard: 'unmap' } });
    const guest = graph.backend(disk, { name: 'guest', perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED });
    const size = disk.totalBytes;
    let job = null;
    let tStart = 0;
    let readyAt = null;
    if (phase !== 'base') {
      await graph.openImage(dst, { format: 'qcow2', nodeName: 'copy0', options: { discard: 'unmap' } });
      tStart = performance.now();
      job = await startMirror(graph, { jobId: 'mirror', device: 'disk0', target: 'copy0', sync: 'full', copyMode: 'write-blocking' });
      const ready = job.waitFor('ready').then(() => (readyAt = performance.now()));
      if (phase === 'ready') await ready;
    }
    const buf = allocAlignedBuffer(BLOCK).fill(0xa5);
    const lat = new Float64Array(count);
    let offset = 0;
    const g0 = performance.now();
    for (let i = 0; i < count; i++) {
      const t = performance.now();
      await guest.pwrite(offset, buf);
      lat[i] = performance.now() - t;
      offset = (offset + STEP_BLOCKS * BLOCK) % size;
    }
    const g1 = performance.now();
    const sorted = Array.from(lat).sort((a, b) => a - b);
    const res = {
      meanUs: ((g1 - g0) / count) * 1000,
      p50Us: sorted[Math.floor(count / 2)] * 1000,
      p99Us: sorted[Math.floor(count * 0.99)] * 1000,
      guestSeconds: (g1 - g0) / 1000,
    };
    if (job) {
      if (job.status !== 'running' && job.status !== 'ready') throw new Error(`mirror job is ${job.status}: ${job.error?.message ?? ''}`);
      res.copyOverlap = overlap(g0, g1, tStart, readyAt);
      job.cancel(true);
      await job.waitFinished().catch(() => undefined);
    }
    return res;
  } finally {
    await graph.close();
  }
}

function oursPhaseInChild(args, source) {
  const flags = source ? ['--conditions=@blockgraph/source', '--import', 'tsx'] : [];
  const r = spawnSync(process.execPath, [...flags, SELF, '--ours', JSON.stringify(args)], { encoding: 'utf8', cwd: fileURLToPath(new URL('../..', import.meta.url)) });
  if (r.status !== 0) throw new Error(`blockgraph guest failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

// ------------------------------------------------------------------------------------------------------------
// Both sides, interleaved
// ------------------------------------------------------------------------------------------------------------

/**
 * Run every phase `reps` times on each side (QEMU, blockgraph alternating), each on a fresh copy of `fixture`.
 * Returns { count, reps, step, qemu: {phase: [run...]}, ours: {phase: [run...]} }.
 */
export async function runMirrorLatency({ fixture, dir, reps = 3, count = 5000, log = () => {}, source = false }) {
  const work = mkdtempSync(join(dir, 'mirror-latency-'));
  const src = join(work, 'disk.qcow2');
  const dst = join(work, 'copy.qcow2');
  const size = JSON.parse(must('qemu-img', ['info', '--output=json', fixture]))['virtual-size'];
  const out = { count, reps, stepBytes: STEP_BLOCKS * BLOCK, size, qemu: {}, ours: {} };
  for (const p of PHASES) {
    out.qemu[p] = [];
    out.ours[p] = [];
  }
  const fresh = () => {
    rmSync(src, { force: true });
    rmSync(dst, { force: true });
    copyFileSync(fixture, src);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', dst, String(size)]);
    // Dirty pages of the previous run (copies, targets) must not be written back during this one.
    spawnSync('sync');
  };
  try {
    for (let i = 0; i < reps; i++) {
      for (const phase of PHASES) {
        const sides = i % 2 ? ['ours', 'qemu'] : ['qemu', 'ours'];
        for (const side of sides) {
          fresh();
          const r = side === 'qemu'
            ? await qemuPhase({ src, dst, size, count, phase, dir: work })
            : oursPhaseInChild({ src, dst, count, phase }, source);
          out[side][phase].push(r);
          log(`  mirror-latency ${side.padEnd(4)} ${phase.padEnd(5)} mean ${r.meanUs.toFixed(1)} µs${r.p99Us ? ` (p50 ${r.p50Us.toFixed(1)}, p99 ${r.p99Us.toFixed(1)})` : ''}${r.copyOverlap !== undefined ? `, copying during ${(r.copyOverlap * 100).toFixed(0)}% of the guest run` : ''}`);
        }
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return out;
}

const fmtUs = (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
const med = (runs, key) => median(runs.map((r) => r[key]));

/** BENCHMARKS.md section (markdown lines). */
export function renderMirrorLatency(res) {
  const { qemu, ours } = res;
  const lines = [
    '## Guest write latency under a write-blocking mirror',
    '',
    `A guest writes ${res.count} blocks of 4 KiB, one at a time (queue depth 1), at offsets ${res.stepBytes} bytes (${STEP_BLOCKS} blocks) apart modulo`,
    'the 1 GiB disk (`$QHALF1G`: half data, half unallocated; about half of the writes allocate a cluster). **base**: no',
    'mirror; **copy**: a write-blocking mirror (sync=full, to a new qcow2) starts together with the guest and bulk-copies',
    'while the guest writes; **ready**: the guest starts after BLOCK_JOB_READY, when every guest write goes to the source',
    'and then synchronously to the target. Each phase runs on a fresh copy of the disk; medians of',
    `${res.reps} runs per side, QEMU and blockgraph alternating (\`bench/mirror-latency.mjs\`, also run by \`pnpm bench\`).`,
    '',
    'QEMU: `qemu-storage-daemon` opens the disk and exports it over NBD on a UNIX socket; the guest is',
    `\`qemu-img bench -w -f raw -d 1 -c ${res.count} -s 4k -S ${res.stepBytes} nbd+unix:///disk?socket=…\`, and the mirror is`,
    'started over QMP (`blockdev-mirror copy-mode=write-blocking`). Its latency is the reported run time / writes, and',
    '**includes an NBD round trip** (client → socket → daemon → socket → client) that blockgraph\'s does not have.',
    'blockgraph: one process holds the graph, the mirror job (`startMirror(..., copyMode: \'write-blocking\')`) and the',
    'guest, which writes through a `BlockBackend` on the disk node, as a device model would; every write is timed.',
    '',
    '| phase | QEMU mean (µs) | blockgraph mean (µs) | blockgraph p50 / p99 (µs) | QEMU ×base | blockgraph ×base | mirror still copying during (QEMU / blockgraph) |',
    '|---|---:|---:|---:|---:|---:|---|',
  ];
  const qb = med(qemu.base, 'meanUs');
  const ob = med(ours.base, 'meanUs');
  for (const p of PHASES) {
    const q = med(qemu[p], 'meanUs');
    const o = med(ours[p], 'meanUs');
    const ov = p === 'base' ? '' : `${(med(qemu[p], 'copyOverlap') * 100).toFixed(0)}% / ${(med(ours[p], 'copyOverlap') * 100).toFixed(0)}% of the guest run`;
    lines.push(`| ${p} | ${fmtUs(q)} | ${fmtUs(o)} | ${fmtUs(med(ours[p], 'p50Us'))} / ${fmtUs(med(ours[p], 'p99Us'))} | ${(q / qb).toFixed(2)}× | ${(o / ob).toFixed(2)}× | ${ov} |`);
  }
  lines.push('', 'All runs (mean µs), QEMU / blockgraph:', '');
  for (const p of PHASES) {
    lines.push(`- ${p}: ${qemu[p].map((r) => fmtUs(r.meanUs)).join(' ')} / ${ours[p].map((r) => fmtUs(r.meanUs)).join(' ')}`);
  }
  lines.push('');
  return lines;
}

// ------------------------------------------------------------------------------------------------------------
// Command line
// ------------------------------------------------------------------------------------------------------------

async function main() {
  const argv = process.argv.slice(2);
  if (argv[0] === '--ours') {
    const res = await oursPhase(JSON.parse(argv[1]));
    process.stdout.write(`${JSON.stringify(res)}\n`);
    return;
  }
}

if (process.argv[1] === SELF) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
