/**
 * Model-based randomized mirror test: concurrent reads, writes, zero writes and discards at random offsets
 * through the guest backend (and, in background mode, directly on the source behind the mirror node's back);
 * at completion target == source byte for byte. In write-blocking and read-write-blocking modes, after READY
 * every flushed guest write is on the target at once and completion copies nothing.
 */
import { describe, expect, it } from 'vitest';
import type { BlockBackend } from '@blockgraph/block-core';
import { startMirror, type MirrorCopyMode } from '../src/index.js';
import { firstDiff, R, setup, W, WU } from './helpers.js';
import { randInt, xorshift } from '../../block-core/test/prng.js';

const SIZE = 2 << 20;
const SEEDS = (process.env.MIRROR_SEEDS ?? "1,2,3,4,5,6").split(",").map(Number);

/** Random guest I/O on a region of its own per worker, so every read has one right answer. */
async function workload(be: BlockBackend, model: Uint8Array, rnd: () => number, ops: number, lo: number, hi: number, check = true): Promise<void> {
  for (let i = 0; i < ops; i++) {
    const off = randInt(rnd, lo, hi - 1);
    const len = randInt(rnd, 1, Math.min(hi - off, 150000));
    const k = rnd();
    if (k < 0.4) {
      const d = new Uint8Array(len).fill(randInt(rnd, 1, 255));
      await be.pwrite(off, d);
      model.set(d, off);
    } else if (k < 0.5) {
      await be.pwriteZeroes(off, len);
      model.fill(0, off, off + len);
    } else if (k < 0.6) {
      await be.pdiscard(off, len);
      // test-mem zeroes discarded ranges.
      model.fill(0, off, off + len);
    } else if (k < 0.65) {
      await be.flush();
    } else {
      const got = await be.read(off, len);
      if (check) {
        const d = firstDiff(got, model.subarray(off, off + len));
        if (d >= 0) throw new Error(`read mismatch at ${off + d}`);
      }
    }
  }
}

async function run(mode: MirrorCopyMode, seed: number): Promise<void> {
  const { g, guest, model, readTarget } = await setup({ size: SIZE, latencyMs: 1, fill: 'half', guestShared: R | W | WU });
  const rnd = xorshift(seed * 7919);
  const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', copyMode: mode, granularity: 65536, bufSize: 4 * 65536, speed: 8 << 20 });
  const workers = 4;
  const region = SIZE / workers;
  // Phase 1: load while the job copies.
  const sideWriter = mode === 'background' ? g.backend('src', { name: 'side', perm: R | W, shared: 15 }) : null;
  if (mode !== 'background') {
    // The guest would let it write; the mirror node does not.
    expect(() => g.backend('src', { name: 'side', perm: R | W, shared: 15 })).toThrow(/unshared by node '#block/);
  }
  await Promise.all(
    Array.from({ length: workers }, (_, w) =>
      // In background mode the last region is written by a parent that bypasses the mirror node.
      workload(w === workers - 1 && sideWriter ? sideWriter : guest, model, xorshift(seed * 100 + w), 25, w * region, (w + 1) * region),
    ),
  );
  job.setSpeed(0);
  await job.waitFor('ready');
  // Phase 2 (active modes): every flushed write is on the target at once.
  if (mode !== 'background') {
    for (let i = 0; i < 10; i++) {
      const off = randInt(rnd, 0, SIZE - 70000);
      const len = randInt(rnd, 1, 70000);
      const d = new Uint8Array(len).fill(randInt(rnd, 1, 255));
      await guest.pwrite(off, d);
      model.set(d, off);
      await guest.flush();
      expect(job.bitmap.count(), `seed ${seed}: bitmap clean after active write`).toBe(0);
      const tgt = await readTarget();
      expect(firstDiff(tgt.subarray(off, off + len), d), `seed ${seed}: write at ${off} on target`).toBe(-1);
    }
  } else {
    await Promise.all(Array.from({ length: workers }, (_, w) => workload(guest, model, xorshift(seed * 1000 + w), 10, w * region, (w + 1) * region)));
  }
  const before = job.progress.current;
  job.complete();
  await job.waitFinished();
  if (mode !== 'background') expect(job.progress.current, `seed ${seed}: completion copied nothing`).toBe(before);
  sideWriter?.remove();
  expect(guest.root!.node.nodeName).toBe('tgt');
  guest.remove();
  const tgt = await readTarget();
  expect(firstDiff(tgt, model), `seed ${seed} ${mode}: target == source`).toBe(-1);
  const src = g.backend('src', { perm: R, shared: 15 });
  expect(firstDiff(await src.read(0, SIZE), model), `seed ${seed} ${mode}: source == model`).toBe(-1);
  await g.close();
}

describe('mirror: model-based randomized test', () => {
  for (const mode of ['background', 'write-blocking', 'read-write-blocking'] as const) {
    it(`${mode}: target equals source after completion (${SEEDS.length} seeds)`, async () => {
      for (const seed of SEEDS) await run(mode, seed);
    }, 120_000);
  }
});
