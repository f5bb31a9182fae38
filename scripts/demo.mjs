#!/usr/bin/env node
// The main demo: a qcow2 disk under a simulated guest workload (random 4 KiB reads and writes at thousands of
// IOPS) is live-mirrored to a new qcow2 in read-write-blocking mode, with job states and a progress bar; then
// the copy is verified byte for byte (and with `qemu-img compare` / `qemu-img check` when QEMU is installed).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Graph, Perm } from '@blockgraph/block-core';
import { rawDriver } from '@blockgraph/driver-raw';
import { fileDriver } from '@blockgraph/driver-raw/file';
import { qcow2Driver } from '@blockgraph/driver-qcow2/node';
import { copyOnReadDriver } from '@blockgraph/filter-cor';
import { startMirror } from '@blockgraph/job-mirror';

const MiB = 1 << 20;
const SIZE = Number(process.env.DEMO_SIZE_MIB ?? 256) * MiB;
const GUEST_WORKERS = 16;
const tty = process.stdout.isTTY;
const t0 = performance.now();
const secs = () => ((performance.now() - t0) / 1000).toFixed(1).padStart(5);
const log = (msg) => process.stdout.write(`${tty ? '\r\x1b[K' : ''}[${secs()} s] ${msg}\n`);

function bar(done, total, width = 32) {
  const f = total ? Math.min(1, done / total) : 0;
  const n = Math.round(f * width);
  return `[${'#'.repeat(n)}${'.'.repeat(width - n)}] ${(f * 100).toFixed(1).padStart(5)}%`;
}

/** xorshift32 so a run can be replayed. */
function prng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 0x100000000;
  };
}

const dir = mkdtempSync(join(tmpdir(), 'blockgraph-demo-'));
const srcFile = join(dir, 'disk.qcow2');
const dstFile = join(dir, 'copy.qcow2');
const graph = new Graph({ drivers: [fileDriver, rawDriver, qcow2Driver, copyOnReadDriver] });

try {
  log(`creating ${SIZE / MiB} MiB qcow2 disk ${srcFile}`);
  await graph.createImage('qcow2', { filename: srcFile, size: SIZE });
  const disk = await graph.openImage(srcFile, { format: 'qcow2', nodeName: 'disk0', options: { discard: 'unmap' } });
  const guest = graph.backend(disk, { name: 'guest', perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED });

  // The guest's disk, as the guest knows it: every read is checked against this model.
  const model = new Uint8Array(SIZE);
  const rnd = prng(2026);
  const fill = new Uint8Array(MiB);
  for (let off = 0; off < SIZE; off += 2 * MiB) {
    for (let i = 0; i < fill.length; i += 512) fill[i] = Math.floor(rnd() * 256) || 1;
    model.set(fill, off);
    await guest.pwrite(off, fill);
  }
  log(`guest data written: half the disk, ${SIZE / 2 / MiB} MiB`);

  let guestRunning = true;
  let ops = 0;
  let mismatches = 0;
  async function guestWorker(w) {
    const r = prng(7000 + w);
    const region = SIZE / GUEST_WORKERS;
    const lo = w * region;
    const buf = new Uint8Array(4096);
    while (guestRunning) {
      const off = lo + Math.floor(r() * (region / 4096)) * 4096;
      if (r() < 0.5) {
        buf.fill(Math.floor(r() * 255) + 1);
        await guest.pwrite(off, buf);
        model.set(buf, off);
      } else {
        const got = await guest.read(off, 4096);
        for (let i = 0; i < 4096; i++) if (got[i] !== model[off + i]) { mismatches++; break; }
      }
      ops++;
    }
  }
  const workers = Array.from({ length: GUEST_WORKERS }, (_, w) => guestWorker(w));
  log(`simulated guest started: ${GUEST_WORKERS} workers doing random 4 KiB reads and writes`);

  await graph.createImage('qcow2', { filename: dstFile, size: SIZE });
  await graph.openImage(dstFile, { format: 'qcow2', nodeName: 'copy0', options: { discard: 'unmap' } });
  log(`target created: ${dstFile}`);

  graph.on((e) => {
    if (e.event === 'JOB_STATUS_CHANGE') log(`job ${e.data.id}: ${e.data.status}`);
    else if (e.event.startsWith('BLOCK_JOB_')) log(`${e.event} ${JSON.stringify(e.data)}`);
  });
  const job = await startMirror(graph, {
    jobId: 'mirror0', device: 'disk0', target: 'copy0', sync: 'full', copyMode: 'read-write-blocking', targetIsZero: true,
  });
  const tStart = performance.now();
  let lastOps = 0;
  let lastT = performance.now();
  const ticker = setInterval(() => {
    const now = performance.now();
    const iops = Math.round(((ops - lastOps) * 1000) / (now - lastT));
    lastOps = ops;
    lastT = now;
    const line = `${job.status.padEnd(8)} ${bar(job.progress.current, job.progress.total)} ${(job.progress.current / MiB).toFixed(0)}/${(job.progress.total / MiB).toFixed(0)} MiB  guest ${iops} IOPS`;
    if (tty) process.stdout.write(`\r\x1b[K${line}`);
    else if (Math.round((now - tStart) / 100) % 10 === 0) process.stdout.write(`${line}\n`);
  }, 100);

  await job.waitFor('ready');
  // Keep the guest busy while READY: every write is mirrored synchronously now.
  await new Promise((r) => setTimeout(r, 2000));
  log(`guest did ${ops} operations during the mirror; stopping it`);
  guestRunning = false;
  await Promise.all(workers);
  job.complete();
  await job.waitFinished();
  clearInterval(ticker);
  const mirrorSecs = ((performance.now() - tStart) / 1000).toFixed(1);
  log(`mirror finished in ${mirrorSecs} s; the guest now uses node '${guest.root.node.nodeName}' (${guest.root.node.filename})`);

  // Verify: the guest (now on the copy) reads exactly its model.
  let diff = -1;
  for (let off = 0; off < SIZE && diff < 0; off += 4 * MiB) {
    const got = await guest.read(off, 4 * MiB);
    for (let i = 0; i < got.length; i++) if (got[i] !== model[off + i]) { diff = off + i; break; }
  }
  if (mismatches || diff >= 0) throw new Error(`verification failed: ${mismatches} guest read mismatches, first copy difference at ${diff}`);
  log('verified byte for byte: the copy equals what the guest wrote');
  await graph.close();

  const qemu = spawnSync('qemu-img', ['--version'], { encoding: 'utf8' });
  if (qemu.status === 0) {
    const cmp = spawnSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', srcFile, dstFile], { encoding: 'utf8' });
    log(`qemu-img compare disk.qcow2 copy.qcow2: ${(cmp.stdout + cmp.stderr).trim()} (exit ${cmp.status})`);
    const chk = spawnSync('qemu-img', ['check', dstFile], { encoding: 'utf8' });
    log(`qemu-img check copy.qcow2: ${chk.stdout.split('\n')[0]} (exit ${chk.status})`);
    if (cmp.status !== 0 || chk.status !== 0) throw new Error('QEMU does not agree');
  } else {
    log('qemu-img not installed: skipping the QEMU cross-check');
  }
  log(`done in ${secs().trim()} s`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
