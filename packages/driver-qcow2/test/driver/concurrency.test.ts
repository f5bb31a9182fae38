/**
 * Concurrency: many requests in flight against a byte-array model. Overlapping writes into one unallocated
 * cluster (disjoint bytes) must all survive; random mixes of writes, reads, zero writes and discards at queue
 * depth 32 must match the model — also over a storage node with random per-request latency, so that requests
 * really interleave (reads in flight while their clusters are freed and reallocated). Afterwards
 * `qemu-img check` must find the image clean.
 */
import { writeFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { Graph, type BlockBackend, type BlockNode } from '@blockgraph/block-core';
import { allRawDrivers } from '@blockgraph/driver-raw/file';
import { memStore, testMemDriver } from '../../../block-core/test/drivers.js';
import { qcow2Driver, Qcow2Instance } from '../../src/node/index.js';
import { Workdir, firstDiff, hasQemu, newGraph, openQcow2, prng, qemuCheck, randInt, readAll } from './helpers.js';

/** Stress runs: QCOW2_CONCURRENCY_SEEDS=N repeats the random tests with N seeds (seed 0 is the one CI runs). */
const SEEDS = Array.from({ length: Math.max(1, Number(process.env.QCOW2_CONCURRENCY_SEEDS ?? 1)) }, (_, i) => i);
/** `rows` once per seed; the name of every run after the first says its seed. */
function seeded<R extends readonly [string, ...unknown[]]>(rows: readonly R[]): (readonly [string, number, ...R])[] {
  return SEEDS.flatMap((seed) => rows.map((row) => [seed ? `${row[0]} (seed ${seed})` : row[0], seed, ...row] as const));
}

const K = 1024;
const M = 1024 * K;

interface Op {
  kind: 'write' | 'read' | 'zero' | 'discard';
  offset: number;
  bytes: number;
  pattern: number;
}

/** A batch of requests whose ranges do not overlap (the model is then exact). */
function batch(r: () => number, size: number, cs: number, n: number, kinds: Op['kind'][]): Op[] {
  const ops: Op[] = [];
  for (let tries = 0; ops.length < n && tries < n * 20; tries++) {
    const kind = kinds[randInt(r, 0, kinds.length)]!;
    let offset = randInt(r, 0, size);
    let bytes = randInt(r, 1, r() < 0.3 ? 3 * cs : 16 * K);
    if (kind === 'discard' || kind === 'zero') {
      offset -= offset % cs;
      bytes = Math.max(cs, bytes - (bytes % cs));
    }
    bytes = Math.min(bytes, size - offset);
    // Zero writes and discards act on whole clusters, and copy-on-write may touch a whole cluster: keep every
    // request of a batch in clusters of its own when it changes data.
    const c0 = Math.floor(offset / cs);
    const c1 = Math.ceil((offset + bytes) / cs);
    if (ops.some((o) => Math.floor(o.offset / cs) < c1 && c0 < Math.ceil((o.offset + o.bytes) / cs))) continue;
    ops.push({ kind, offset, bytes, pattern: randInt(r, 1, 256) });
  }
  return ops;
}

async function runBatch(be: BlockBackend, ops: Op[], model: Uint8Array, discardZeroes: boolean): Promise<void> {
  const results = await Promise.all(
    ops.map(async (op) => {
      switch (op.kind) {
        case 'write':
          await be.pwrite(op.offset, new Uint8Array(op.bytes).fill(op.pattern));
          return null;
        case 'read':
          return be.read(op.offset, op.bytes);
        case 'zero':
          await be.pwriteZeroes(op.offset, op.bytes, op.pattern & 1 ? 0x4 : 0);
          return null;
        case 'discard':
          await be.pdiscard(op.offset, op.bytes);
          return null;
      }
    }),
  );
  ops.forEach((op, i) => {
    if (op.kind === 'read') {
      const d = firstDiff(results[i]!, model.subarray(op.offset, op.offset + op.bytes));
      expect(d, `read [${op.offset}, +${op.bytes}) differs at ${d}`).toBe(-1);
    }
  });
  for (const op of ops) {
    if (op.kind === 'write') model.fill(op.pattern, op.offset, op.offset + op.bytes);
    else if (op.kind === 'zero' || (op.kind === 'discard' && discardZeroes)) model.fill(0, op.offset, op.offset + op.bytes);
  }
}

describe.skipIf(!hasQemu)('concurrency', () => {
  test.each(
    seeded([
      ['64k clusters', [] as string[], 65536],
      ['4k clusters, refcount_bits=1', ['cluster_size=4k', 'refcount_bits=1'], 4096],
      ['extended_l2', ['extended_l2=on'], 65536],
      ['512 B clusters, refcount_bits=64', ['cluster_size=512', 'refcount_bits=64'], 512],
    ] as const),
  )('%s: concurrent writes to disjoint bytes of unallocated clusters all survive', async (_name, seed, _n, opts, cs) => {
    const w = new Workdir();
    try {
      const size = 8 * M;
      w.create('a.qcow2', String(size), [...opts]);
      const graph = newGraph();
      const { be } = await openQcow2(graph, w.path('a.qcow2'));
      const model = new Uint8Array(size);
      const r = prng(42 + seed * 1_000_003);
      for (let round = 0; round < 8; round++) {
        const base = randInt(r, 0, size / cs - 4) * cs;
        const slot = Math.max(64, cs / 16);
        const slots: number[] = [];
        for (let o = base; o + slot <= base + 3 * cs; o += slot) slots.push(o);
        // Shuffle, so that later slots often start before earlier ones.
        for (let i = slots.length - 1; i > 0; i--) {
          const j = randInt(r, 0, i + 1);
          [slots[i], slots[j]] = [slots[j]!, slots[i]!];
        }
        const ps = slots.map((o, i) => {
          const data = new Uint8Array(slot - 1).fill((round * 31 + i) & 0xff || 1);
          model.set(data, o);
          return be.pwrite(o, data);
        });
        // Reads of the whole area racing the writes must see old or new bytes only: checked below by content.
        await Promise.all(ps);
      }
      const got = await readAll(be, size);
      expect(firstDiff(got, model)).toBe(-1);
      await graph.close();
      const chk = qemuCheck(w.path('a.qcow2'));
      expect(chk.out).toContain('No errors were found on the image.');
    } finally {
      w.cleanup();
    }
  });

  test.each(
    seeded([
      ['64k clusters', [] as string[], 65536, false],
      ['4k clusters, tiny caches', ['cluster_size=4k'], 4096, false],
      ['extended_l2 over a backing file', ['extended_l2=on'], 65536, true],
      ['compat=0.10', ['compat=0.10'], 65536, false],
    ] as const),
  )('%s: random mixes at queue depth 32 match the model', async (_name, seed, _n, opts, cs, withBacking) => {
    const w = new Workdir();
    try {
      const size = 16 * M;
      const extra: string[] = [];
      const model = new Uint8Array(size);
      if (withBacking) {
        w.create('base.qcow2', String(size));
        w.qemuIo('base.qcow2', `write -q -P 0x3c 0 ${size / 2}`);
        model.fill(0x3c, 0, size / 2);
        extra.push('-b', 'base.qcow2', '-F', 'qcow2');
      }
      w.create('a.qcow2', String(size), [...opts], extra);
      const graph = newGraph();
      const { be } = await openQcow2(graph, w.path('a.qcow2'), { options: cs === 4096 ? { l2CacheSize: 8 * K, refcountCacheSize: 16 * K } : {} });
      const r = prng(7 + seed * 1_000_003);
      const discardZeroes = !(opts as readonly string[]).includes('compat=0.10') || !withBacking;
      for (let round = 0; round < 40; round++) {
        await runBatch(be, batch(r, size, cs, 32, ['write', 'write', 'read', 'read', 'zero', 'discard']), model, discardZeroes);
        if (round % 10 === 9) await be.flush();
      }
      const got = await readAll(be, size);
      expect(firstDiff(got, model)).toBe(-1);
      await graph.close();
      const chk = qemuCheck(w.path('a.qcow2'));
      expect(chk.out).toContain('No errors were found on the image.');
    } finally {
      w.cleanup();
    }
  });

  test.each(seeded([['over storage with random latency: reads, writes, frees and reallocation interleave'] as const]))('%s', async (_name, seed) => {
    const w = new Workdir();
    try {
      const size = 8 * M;
      const cs = 4096;
      w.create('lat.qcow2', String(size), ['cluster_size=4k']);
      const name = `qcow2-latency-${process.pid}-${seed}`;
      memStore.set(name, new Uint8Array(w.read('lat.qcow2')));
      const graph = new Graph({ drivers: [...allRawDrivers, testMemDriver, qcow2Driver] });
      const node: BlockNode = await graph.addNode({
        driver: 'qcow2',
        discard: 'unmap',
        file: { driver: 'test-mem', name, size: memStore.get(name)!.length, latencyMs: 3 },
      });
      const be = graph.backend(node);
      const model = new Uint8Array(size);
      const r = prng(99 + seed * 1_000_003);
      for (let round = 0; round < 30; round++) {
        await runBatch(be, batch(r, size, cs, 32, ['write', 'read', 'read', 'discard', 'zero']), model, true);
      }
      expect(firstDiff(await readAll(be, size), model)).toBe(-1);
      await graph.close();
      writeFileSync(w.path('lat-out.qcow2'), memStore.get(name)!);
      memStore.delete(name);
      const chk = qemuCheck(w.path('lat-out.qcow2'));
      expect(chk.out).toContain('No errors were found on the image.');
    } finally {
      w.cleanup();
    }
  });

  test('a freed cluster is not reused while I/O that looked it up is still in flight', async () => {
    const w = new Workdir();
    try {
      const cs = 4096;
      const size = 4 * M;
      w.create('reuse.qcow2', String(size), ['cluster_size=4k']);
      const name = `qcow2-reuse-${process.pid}`;
      memStore.set(name, new Uint8Array(w.read('reuse.qcow2')));
      const graph = new Graph({ drivers: [...allRawDrivers, testMemDriver, qcow2Driver] });
      const node = await graph.addNode({
        driver: 'qcow2',
        discard: 'unmap',
        file: { driver: 'test-mem', name, size: memStore.get(name)!.length, latencyMs: 4 },
      });
      const be = graph.backend(node);
      for (let i = 0; i < 60; i++) {
        const a = 2 * i * cs;
        const b = (2 * i + 1) * cs + 1024 * 1024;
        await be.pwrite(a, new Uint8Array(cs).fill(0x11));
        // In place into A, a read of A, A freed, and B allocated, all at once.
        const [, readA] = await Promise.all([
          be.pwrite(a, new Uint8Array(cs).fill(0x22)),
          be.read(a, cs),
          be.pdiscard(a, cs),
          be.pwrite(b, new Uint8Array(cs).fill(0x33)),
        ]);
        expect(readA.every((x) => x === 0x11 || x === 0x22 || x === 0)).toBe(true);
        const gotB = await be.read(b, cs);
        expect(gotB.every((x) => x === 0x33), `round ${i}: B got someone else's data`).toBe(true);
        const gotA = await be.read(a, cs);
        expect(gotA.every((x) => x === 0 || x === 0x22)).toBe(true);
      }
      await graph.close();
      writeFileSync(w.path('reuse-out.qcow2'), memStore.get(name)!);
      memStore.delete(name);
      expect(qemuCheck(w.path('reuse-out.qcow2')).status).toBe(0);
    } finally {
      w.cleanup();
    }
  });

  test('quarantine: a cluster freed while older I/O is in flight is reallocated only after that I/O ends', async () => {
    const w = new Workdir();
    try {
      const cs = 65536;
      w.create('q.qcow2', '4M');
      const graph = newGraph();
      const { node, be } = await openQcow2(graph, w.path('q.qcow2'));
      const s = (node.impl as Qcow2Instance).state;
      await be.pwrite(0, new Uint8Array(cs).fill(1));
      const hostOf = async (off: number): Promise<number | undefined> => (await be.blockStatus(off, cs)).map;
      const h = await hostOf(0);
      // An in-place write or read that looked up cluster 0 is still in flight...
      const ticket = s.tickets.enter();
      await be.pdiscard(0, cs);
      // ...so a new allocation must not get that host cluster.
      await be.pwrite(cs, new Uint8Array(cs).fill(2));
      expect(await hostOf(cs)).not.toBe(h);
      s.tickets.leave(ticket);
      // Once it is done the cluster is free again.
      await be.pwrite(2 * cs, new Uint8Array(cs).fill(3));
      expect(await hostOf(2 * cs)).toBe(h);
      await graph.close();
      expect(qemuCheck(w.path('q.qcow2')).status).toBe(0);
    } finally {
      w.cleanup();
    }
  });

  test.each([
    ['64 KiB clusters', [] as string[]],
    ['extended L2, 32 KiB clusters', ['extended_l2=on', 'cluster_size=32k']],
  ])('%s: a rewrite of allocated clusters does not wait for the metadata lock', async (_name, opts) => {
    const w = new Workdir();
    try {
      w.create('l.qcow2', '4M', opts);
      const graph = newGraph();
      const { node, be } = await openQcow2(graph, w.path('l.qcow2'));
      const s = (node.impl as Qcow2Instance).state;
      await be.pwrite(0, new Uint8Array(256 * K).fill(1));
      // Someone holds the metadata lock (an allocation writing an L2 table, say).
      await s.lock.lock();
      let rewritten = false;
      let allocated = false;
      const rewrite = be.pwrite(64 * K, new Uint8Array(128 * K).fill(2)).then(() => (rewritten = true));
      const allocate = be.pwrite(1 * M, new Uint8Array(4 * K).fill(3)).then(() => (allocated = true));
      try {
        await Promise.race([rewrite, new Promise((r) => setTimeout(r, 2000))]);
        expect(rewritten).toBe(true);
        // An allocating write does need the lock.
        expect(allocated).toBe(false);
      } finally {
        s.lock.unlock();
      }
      await rewrite;
      await allocate;
      expect((await be.read(0, 256 * K)).every((b, i) => b === (i >= 64 * K && i < 192 * K ? 2 : 1))).toBe(true);
      expect((await be.read(1 * M, 4 * K)).every((b) => b === 3)).toBe(true);
      await graph.close();
      expect(qemuCheck(w.path('l.qcow2')).status).toBe(0);
    } finally {
      w.cleanup();
    }
  });
});
