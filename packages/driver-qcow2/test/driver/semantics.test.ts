/**
 * Behaviour that must match QEMU 7.2 beyond content: what zero writes and discards leave in the L2 tables
 * (reference §3.4, compared through `qemu-img map` including host offsets), format-specific info, resize,
 * lazy refcounts and the dirty bit, autoclear bits and persistent bitmaps, runtime options, compressed cluster
 * layout, and external data files.
 */
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { IOVector, isBlockError, Perm, PERM_ALL } from '@blockgraph/block-core';
import { cacheSizes } from '../../src/driver/options.js';
import { parseHeader, peekClusterSize, compressedHostOffset, compressedReadLength } from '../../src/format/index.js';
import { Qcow2Instance } from '../../src/node/index.js';
import { genOps, qemuIoCommands } from './matrix-ops.js';
import { l2EntryOf, openImage as openFormatView } from '../format/map.js';
import { Workdir, dataView, firstDiff, hasQemu, newGraph, openQcow2, qemuCheck, readAll, run } from './helpers.js';

const K = 1024;
const M = 1024 * K;

type Step = { op: 'write'; off: number; len: number; p?: number } | { op: 'zero'; off: number; len: number; unmap?: boolean } | { op: 'discard'; off: number; len: number } | { op: 'compressed'; off: number; len: number; p: number };

function qemuCmd(s: Step): string {
  switch (s.op) {
    case 'write':
      return `write -q -P ${s.p ?? 0x11} ${s.off} ${s.len}`;
    case 'zero':
      return `write -q -z ${s.unmap ? '-u ' : ''}${s.off} ${s.len}`;
    case 'discard':
      return `discard -q ${s.off} ${s.len}`;
    case 'compressed':
      return `write -q -c -P ${s.p} ${s.off} ${s.len}`;
  }
}

describe.skipIf(!hasQemu)('QEMU-compatible behaviour', () => {
  let w: Workdir;
  beforeEach(() => {
    w = new Workdir();
  });
  afterEach(() => w.cleanup());

  async function applyOurs(image: string, steps: Step[]): Promise<void> {
    const graph = newGraph();
    const { be } = await openQcow2(graph, w.path(image));
    for (const s of steps) {
      switch (s.op) {
        case 'write':
          await be.pwrite(s.off, new Uint8Array(s.len).fill(s.p ?? 0x11));
          break;
        case 'zero':
          await be.pwriteZeroes(s.off, s.len, s.unmap ? 0x4 : 0);
          break;
        case 'discard':
          await be.pdiscard(s.off, s.len);
          break;
        case 'compressed':
          await be.pwritevCompressed(s.off, s.len, IOVector.of(new Uint8Array(s.len).fill(s.p))).catch(() => undefined);
          break;
      }
    }
    await graph.close();
  }

  const map = (image: string): string => run('qemu-img', ['map', '--output=json', image], w.dir).out;

  const TABLE: [string, string[], Step[], boolean][] = [
    ['write -z on an allocated cluster keeps it (ZERO_ALLOC)', [], [{ op: 'write', off: 0, len: 64 * K }, { op: 'zero', off: 0, len: 64 * K }], false],
    ['write -z -u on an allocated cluster frees it (ZERO_PLAIN)', [], [{ op: 'write', off: 0, len: 64 * K }, { op: 'zero', off: 0, len: 64 * K, unmap: true }], false],
    ['discard of an allocated cluster (no backing)', [], [{ op: 'write', off: 0, len: 128 * K }, { op: 'discard', off: 0, len: 64 * K }], false],
    ['discard of an unallocated cluster over a backing file', [], [{ op: 'discard', off: 64 * K, len: 64 * K }], true],
    ['write -z of 4 KiB inside an unallocated cluster (no backing) zeroes the whole cluster', [], [{ op: 'zero', off: 4 * K, len: 4 * K }], false],
    ['discard of 4 KiB is ignored', [], [{ op: 'write', off: 0, len: 64 * K }, { op: 'discard', off: 4 * K, len: 4 * K }], false],
    ['v2: write -z on an allocated cluster deallocates it', ['compat=0.10'], [{ op: 'write', off: 0, len: 128 * K }, { op: 'zero', off: 64 * K, len: 64 * K }], false],
    ['v2 over a backing file: write -z writes zeroes', ['compat=0.10'], [{ op: 'zero', off: 64 * K, len: 64 * K }], true],
    ['partial write into an overlay cluster copies from the backing file', [], [{ op: 'write', off: 1 * M, len: 4 * K }], true],
    ['extended L2: sub-cluster writes and zero writes', ['extended_l2=on'], [
      { op: 'write', off: 0, len: 4 * K },
      { op: 'write', off: 70 * K, len: 10 * K },
      { op: 'zero', off: 1 * M, len: 8 * K },
      { op: 'write', off: 2 * M, len: 64 * K },
      { op: 'zero', off: 2 * M + 8 * K, len: 4 * K },
      { op: 'discard', off: 2 * M, len: 64 * K },
    ], false],
    ['extended L2 over a backing file', ['extended_l2=on'], [
      { op: 'write', off: 6 * K, len: 2 * K },
      { op: 'zero', off: 1 * M, len: 4 * K },
      { op: 'write', off: 1 * M + 16 * K, len: 3 * K },
      { op: 'discard', off: 4 * M, len: 64 * K },
    ], true],
    ['compressed writes are packed byte-adjacent', [], [
      { op: 'compressed', off: 0, len: 64 * K, p: 7 },
      { op: 'compressed', off: 64 * K, len: 64 * K, p: 8 },
      { op: 'compressed', off: 3 * M, len: 64 * K, p: 9 },
      { op: 'write', off: 64 * K, len: 4 * K },
    ], false],
  ];

  test.each(TABLE)('%s: same L2 state as qemu-io (qemu-img map with offsets)', async (_n, opts, steps, backing) => {
    const extra: string[] = [];
    if (backing) {
      w.create('base.qcow2', '8M');
      w.qemuIo('base.qcow2', 'write -q -P 0x22 0 8M');
      extra.push('-b', 'base.qcow2', '-F', 'qcow2');
    }
    w.create('ours.qcow2', '8M', opts, extra);
    w.create('twin.qcow2', '8M', opts, extra);
    w.qemuIo('twin.qcow2', ...steps.map(qemuCmd));
    await applyOurs('ours.qcow2', steps);
    const compressed = steps.some((s) => s.op === 'compressed');
    if (compressed) {
      // Compressed sizes depend on the zlib build: compare layout rules instead of offsets.
      const view = openFormatView(w.read('ours.qcow2'));
      const a = l2EntryOf(view, 0);
      const b = l2EntryOf(view, 48);
      const endA = compressedHostOffset(a.hi, a.lo, view.geometry) + compressedReadLength(a.hi, a.lo, view.geometry);
      const startB = compressedHostOffset(b.hi, b.lo, view.geometry);
      // Byte-adjacent: the next compressed cluster starts inside the last sector of the previous one.
      expect(startB).toBeGreaterThan(compressedHostOffset(a.hi, a.lo, view.geometry));
      expect(endA - startB).toBeLessThan(512);
      expect(run('qemu-img', ['compare', 'ours.qcow2', 'twin.qcow2'], w.dir).out).toContain('Images are identical');
    } else {
      expect(map('ours.qcow2')).toBe(map('twin.qcow2'));
    }
    expect(qemuCheck(w.path('ours.qcow2')).status).toBe(0);
  });

  test('format-specific info equals qemu-img info for every kind of image', async () => {
    const images: [string, string[]][] = [
      ['a.qcow2', []],
      ['b.qcow2', ['compat=0.10']],
      ['c.qcow2', ['extended_l2=on', 'lazy_refcounts=on', 'refcount_bits=8']],
      ['d.qcow2', ['compression_type=zstd']],
      ['e.qcow2', [`data_file=${w.path('e.data')}`, 'data_file_raw=on']],
      ['f.qcow2', [`data_file=${w.path('f.data')}`]],
    ];
    for (const [name, opts] of images) {
      w.create(name, '8M', opts);
      const graph = newGraph();
      try {
        const { node } = await openQcow2(graph, w.path(name), { readOnly: true });
        const q = JSON.parse(run('qemu-img', ['info', '--output=json', name], w.dir).out) as {
          'format-specific': { type: string; data: Record<string, unknown> };
          'cluster-size': number;
          'dirty-flag': boolean;
        };
        expect(node.impl.getSpecificInfo!()).toEqual(q['format-specific']);
        const info = node.impl.getInfo!();
        expect(info.clusterSize).toBe(q['cluster-size']);
        expect(info.isDirty).toBe(q['dirty-flag']);
        expect(node.impl.hasZeroInit!()).toBe(true);
      } finally {
        await graph.close();
      }
    }
  });

  test('resize: grow and shrink like qemu-img resize', async () => {
    for (const opts of [[], ['cluster_size=4k'], ['extended_l2=on']]) {
      w.create('r.qcow2', '4M', opts);
      w.create('t.qcow2', '4M', opts);
      const cmds = ['write -q -P 1 0 3M', 'write -q -P 2 3500k 500k'];
      w.qemuIo('r.qcow2', ...cmds);
      w.qemuIo('t.qcow2', ...cmds);
      const graph = newGraph();
      const { be } = await openQcow2(graph, w.path('r.qcow2'));
      await be.truncate(20 * M, false);
      await be.pwrite(19 * M, new Uint8Array(M).fill(3));
      await be.truncate(2 * M + 512, false);
      await be.truncate(6 * M, false);
      expect(be.getLength()).toBe(6 * M);
      await graph.close();
      w.qemuImg('resize', 't.qcow2', '20M');
      w.qemuIo('t.qcow2', 'write -q -P 3 19M 1M');
      w.qemuImg('resize', '--shrink', 't.qcow2', String(2 * M + 512));
      w.qemuImg('resize', 't.qcow2', '6M');
      expect(run('qemu-img', ['compare', 'r.qcow2', 't.qcow2'], w.dir).out).toContain('Images are identical');
      expect(qemuCheck(w.path('r.qcow2')).status).toBe(0);
      expect(map('r.qcow2')).toBe(map('t.qcow2'));
      w.write('r.qcow2', new Uint8Array(0));
      w.write('t.qcow2', new Uint8Array(0));
    }
  });

  test('resize with preallocation (metadata, falloc, full) reads zeroes and checks clean', async () => {
    for (const mode of ['metadata', 'falloc', 'full'] as const) {
      w.create(`p-${mode}.qcow2`, '1M');
      w.qemuIo(`p-${mode}.qcow2`, 'write -q -P 5 0 1M');
      const graph = newGraph();
      const { be } = await openQcow2(graph, w.path(`p-${mode}.qcow2`));
      await be.truncate(4 * M, false, mode);
      const all = await readAll(be, 4 * M);
      expect(all.subarray(0, M).every((x) => x === 5)).toBe(true);
      expect(all.subarray(M).every((x) => x === 0)).toBe(true);
      await graph.close();
      expect(qemuCheck(w.path(`p-${mode}.qcow2`)).status).toBe(0);
    }
  });

  test('lazy refcounts: dirty bit set before the first L2 update, cleared on close; refcounts accurate after', async () => {
    w.create('lazy.qcow2', '8M', ['lazy_refcounts=on']);
    const graph = newGraph();
    const { be } = await openQcow2(graph, w.path('lazy.qcow2'));
    await be.pwrite(0, new Uint8Array(64 * K).fill(1));
    await be.flush();
    expect(dataView(w.read('lazy.qcow2')).getUint32(76) & 1).toBe(1);
    await graph.close();
    expect(dataView(w.read('lazy.qcow2')).getUint32(76) & 1).toBe(0);
    expect(qemuCheck(w.path('lazy.qcow2')).status).toBe(0);
  });

  test('a dirty image is repaired on read-write open, not on read-only open', async () => {
    w.create('dirty.qcow2', '8M', ['lazy_refcounts=on']);
    w.qemuIoCrash('dirty.qcow2', 'write -P 0x91 0 1M', 'write -P 0x92 3M 64k', 'abort');
    expect(qemuCheck(w.path('dirty.qcow2')).status).toBe(2);
    const before = w.read('dirty.qcow2');
    let graph = newGraph();
    let node = (await openQcow2(graph, w.path('dirty.qcow2'), { readOnly: true })).node;
    expect(node.impl.getInfo!().isDirty).toBe(true);
    await graph.close();
    expect(Buffer.compare(Buffer.from(w.read('dirty.qcow2')), Buffer.from(before))).toBe(0);
    graph = newGraph();
    const opened = await openQcow2(graph, w.path('dirty.qcow2'));
    node = opened.node;
    expect(node.impl.getInfo!().isDirty).toBe(false);
    expect((await opened.be.read(3 * M, 64 * K)).every((x) => x === 0x92)).toBe(true);
    await graph.close();
    expect(qemuCheck(w.path('dirty.qcow2')).status).toBe(0);
  });

  test('unknown autoclear bits are cleared on read-write open (kept on read-only open)', async () => {
    w.create('ac.qcow2', '8M');
    const b = w.read('ac.qcow2');
    dataView(b).setUint32(92, 0x80);
    w.write('ac.qcow2', b);
    let graph = newGraph();
    await openQcow2(graph, w.path('ac.qcow2'), { readOnly: true });
    await graph.close();
    expect(dataView(w.read('ac.qcow2')).getUint32(92)).toBe(0x80);
    graph = newGraph();
    await openQcow2(graph, w.path('ac.qcow2'));
    await graph.close();
    expect(dataView(w.read('ac.qcow2')).getUint32(92)).toBe(0);
    expect(qemuCheck(w.path('ac.qcow2')).status).toBe(0);
  });

  test('images with internal snapshots: writes copy shared clusters, snapshots stay intact, refcounts correct', async () => {
    for (const opts of [[], ['cluster_size=4k', 'refcount_bits=8'], ['extended_l2=on']]) {
      w.create('s.qcow2', '4M', opts);
      w.qemuIo('s.qcow2', 'write -q -P 1 0 1M', 'write -q -c -P 2 2M 64k', 'write -q -P 3 3M 100k');
      w.qemuImg('snapshot', '-c', 'one', 's.qcow2');
      w.qemuIo('s.qcow2', 'write -q -P 4 512k 8k', 'write -q -z 3M 64k');
      w.qemuImg('snapshot', '-c', 'two', 's.qcow2');
      w.write('t.qcow2', w.read('s.qcow2'));
      // No compressed writes: with them qemu-io 7.2 itself corrupts the twin (see the next test).
      const ops = genOps(1234, 4 * M, opts.length ? 4096 : 65536, 40).filter((o) => o.kind !== 'compressed');
      run('qemu-io', ['-d', 'unmap', '-f', 'qcow2', ...qemuIoCommands(ops).flatMap((c) => ['-c', c]), 't.qcow2'], w.dir);
      const graph = newGraph();
      const { be } = await openQcow2(graph, w.path('s.qcow2'));
      for (const op of ops) {
        if (op.kind === 'write') await be.pwrite(op.offset, new Uint8Array(op.bytes).fill(op.pattern));
        else if (op.kind === 'zero') await be.pwriteZeroes(op.offset, op.bytes, op.unmap ? 0x4 : 0);
        else if (op.kind === 'discard') await be.pdiscard(op.offset, op.bytes);
      }
      await graph.close();
      expect(qemuCheck(w.path('s.qcow2')).status).toBe(0);
      expect(run('qemu-img', ['compare', 's.qcow2', 't.qcow2'], w.dir).out).toContain('Images are identical');
      for (const snap of ['one', 'two']) {
        const a = run('qemu-img', ['convert', '-l', `snapshot.name=${snap}`, '-O', 'raw', 's.qcow2', `s-${snap}.raw`], w.dir);
        const b = run('qemu-img', ['convert', '-l', `snapshot.name=${snap}`, '-O', 'raw', 't.qcow2', `t-${snap}.raw`], w.dir);
        expect(a.status).toBe(0);
        expect(b.status).toBe(0);
        expect(firstDiff(w.read(`s-${snap}.raw`), w.read(`t-${snap}.raw`))).toBe(-1);
      }
    }
  });

  test('a freed cluster that held the compressed-write position is not written into again (QEMU 7.2 does)', async () => {
    const cs = 65536;
    const steps: Step[] = [
      { op: 'compressed', off: 0x3d0000, len: cs, p: 7 },
      { op: 'discard', off: 0x3c0000, len: 2 * cs },
      { op: 'write', off: 0x230000, len: 2 * cs, p: 0x66 },
      { op: 'compressed', off: 0x3e0000, len: cs, p: 9 },
    ];
    w.create('fb.qcow2', '4M');
    await applyOurs('fb.qcow2', steps);
    const chk = qemuCheck(w.path('fb.qcow2'));
    expect(chk.status).toBe(0);
    const io = run('qemu-io', ['-r', '-c', `read -q -P 0x66 ${0x230000} ${2 * cs}`, '-c', `read -q -P 9 ${0x3e0000} ${cs}`, 'fb.qcow2'], w.dir);
    expect(io.out).not.toMatch(/Pattern verification failed/);
    expect(io.status).toBe(0);
  });

  test('unknown header extensions survive a header rewrite', async () => {
    w.create('ux.qcow2', '8M');
    const b = w.read('ux.qcow2');
    const v = dataView(b);
    // Feature table at 0x70 (8 + 384 bytes), end marker at 0x1f8: put an unknown extension there.
    expect(v.getUint32(0x1f8)).toBe(0);
    v.setUint32(0x1f8, 0x12345678);
    v.setUint32(0x1fc, 5);
    b.set([1, 2, 3, 4, 5], 0x200);
    v.setUint32(92, 0x80); // an unknown autoclear bit forces a rewrite on read-write open
    w.write('ux.qcow2', b);
    const graph = newGraph();
    const { be } = await openQcow2(graph, w.path('ux.qcow2'));
    await be.pwrite(0, new Uint8Array(512).fill(1));
    await graph.close();
    const after = w.read('ux.qcow2');
    const h = parseHeader(after.subarray(0, peekClusterSize(after)));
    expect(h.autoclearFeatures).toBe(0n);
    expect(h.extensions.unknown).toEqual([{ type: 0x12345678, data: new Uint8Array([1, 2, 3, 4, 5]) }]);
    expect(qemuCheck(w.path('ux.qcow2')).status).toBe(0);
  });

  test('persistent bitmaps: a read-write open behaves like a program without bitmap support', async () => {
    w.create('bm.qcow2', '8M');
    w.qemuImg('bitmap', '--add', 'bm.qcow2', 'bitmap0');
    const graph = newGraph();
    const { be } = await openQcow2(graph, w.path('bm.qcow2'));
    await be.pwrite(0, new Uint8Array(4096).fill(1));
    await graph.close();
    const h = parseHeader(w.read('bm.qcow2').subarray(0, peekClusterSize(w.read('bm.qcow2'))));
    expect(h.autoclearFeatures & 1n).toBe(0n);
    expect(h.extensions.bitmapsInconsistent).toBe(true);
    // QEMU sees inconsistent bitmaps, drops them, and the bitmap clusters are leaks (never corruption).
    const info = run('qemu-img', ['info', 'bm.qcow2'], w.dir);
    expect(info.out).toContain('a program lacking bitmap support modified this file');
    const chk = qemuCheck(w.path('bm.qcow2'));
    expect(chk.status === 0 || chk.status === 3).toBe(true);
    expect(chk.out).not.toMatch(/ERROR/);
  });

  test('persistent bitmaps: an open for a repair (checkMode) keeps them until a guest write', async () => {
    w.create('bmc.qcow2', '8M');
    w.qemuImg('bitmap', '--add', 'bmc.qcow2', 'bitmap0');
    const header = () => parseHeader(w.read('bmc.qcow2').subarray(0, peekClusterSize(w.read('bmc.qcow2'))));
    const graph = newGraph();
    try {
      const { node, be } = await openQcow2(graph, w.path('bmc.qcow2'), { options: { checkMode: true } });
      // The repair changes no guest data: the bitmaps are still valid, their clusters still in use.
      expect(header().autoclearFeatures & 1n).toBe(1n);
      const r = await node.impl.check!('leaks');
      expect([r.leaks, r.leaksFixed, r.corruptions]).toEqual([0, 0, 0]);
      expect(header().autoclearFeatures & 1n).toBe(1n);
      // A guest write gives them up, as any read-write open of a program without bitmap support does.
      await be.pwrite(0, new Uint8Array(4096).fill(1));
      expect(header().autoclearFeatures & 1n).toBe(0n);
    } finally {
      await graph.close();
    }
    expect(run('qemu-img', ['info', 'bmc.qcow2'], w.dir).out).toContain('a program lacking bitmap support modified this file');
  });

  test('runtime options: backing null / by node name, cache sizes, overlap-check, pass-discard', async () => {
    w.create('base.qcow2', '4M');
    w.qemuIo('base.qcow2', 'write -q -P 0x44 0 4M');
    w.create('ov.qcow2', '4M', [], ['-b', 'base.qcow2', '-F', 'qcow2']);
    const graph = newGraph();
    const noBacking = await graph.addNode({ driver: 'qcow2', readOnly: true, backing: null, file: { driver: 'file', filename: w.path('ov.qcow2') } });
    const be1 = graph.backend(noBacking);
    expect((await be1.read(0, 4096)).every((x) => x === 0)).toBe(true);
    expect(noBacking.backing).toBeUndefined();
    await graph.addNode({ driver: 'qcow2', nodeName: 'base', readOnly: true, file: { driver: 'file', filename: w.path('base.qcow2') } });
    const byName = await graph.addNode({
      driver: 'qcow2',
      readOnly: true,
      backing: 'base',
      'l2-cache-size': '1M',
      'refcount-cache-size': '512k',
      'overlap-check': 'all',
      file: { driver: 'file', filename: w.path('ov.qcow2') },
    });
    const be2 = graph.backend(byName);
    expect((await be2.read(0, 4096)).every((x) => x === 0x44)).toBe(true);
    const s = (byName.impl as Qcow2Instance).state;
    expect(s.options.l2CacheEntries).toBe(2);
    expect(s.options.refcountCacheEntries).toBe(8);
    const err = await graph
      .addNode({ driver: 'qcow2', readOnly: true, 'cache-size': '1M', 'l2-cache-size': '2M', file: { driver: 'file', filename: w.path('ov.qcow2') } })
      .catch((e: unknown) => e);
    expect((err as Error).message).toBe('l2-cache-size may not exceed cache-size');
    await graph.close();
  });

  test('cache sizes follow QEMU\'s rules', () => {
    const header = (clusterBits: number, extendedL2 = false) =>
      ({ version: 3, clusterBits, refcountOrder: 4, incompatibleFeatures: extendedL2 ? 16n : 0n }) as never;
    // 100 GiB, 64 KiB clusters: enough to map the whole disk (12.5 MiB), one cluster per entry.
    expect(cacheSizes({}, header(16), 100 * 1024 * M)).toEqual({ l2CacheEntries: 200, l2CacheEntrySize: 65536, refcountCacheEntries: 4 });
    // 1 TiB: capped at 32 MiB, so 4 KiB slices.
    expect(cacheSizes({}, header(16), 1024 * 1024 * M)).toEqual({ l2CacheEntries: 8192, l2CacheEntrySize: 4096, refcountCacheEntries: 4 });
    // Extended L2: twice the bytes per entry.
    expect(cacheSizes({}, header(16, true), 100 * 1024 * M).l2CacheEntries).toBe(400);
    // cache-size alone: L2 gets what it needs, the refcount cache the rest.
    expect(cacheSizes({ cacheSize: 16 * M }, header(16), 100 * 1024 * M)).toEqual({ l2CacheEntries: 200, l2CacheEntrySize: 65536, refcountCacheEntries: 56 });
    expect(cacheSizes({ l2CacheEntrySize: 8192 }, header(16), 64 * M)).toEqual({ l2CacheEntries: 8, l2CacheEntrySize: 8192, refcountCacheEntries: 4 });
    expect(() => cacheSizes({ l2CacheEntrySize: 3000 }, header(16), 64 * M)).toThrow('L2 cache entry size must be a power of two between 512 and the cluster size (65536)');
  });

  for (const raw of [false, true]) {
    test(`external data file${raw ? ' (data_file_raw)' : ''}: random writes match qemu-io, check clean`, async () => {
      const size = 4 * M;
      const opts = (n: string) => [`data_file=${w.path(n)}`, ...(raw ? ['data_file_raw=on'] : [])];
      w.create('ours.qcow2', String(size), opts('ours.data'));
      w.create('twin.qcow2', String(size), opts('twin.data'));
      const ops = genOps(raw ? 77 : 78, size, 65536, 40).filter((o) => o.kind !== 'compressed');
      w.qemuIo('twin.qcow2', ...qemuIoCommands(ops));
      const graph = newGraph();
      const { be } = await openQcow2(graph, w.path('ours.qcow2'));
      for (const op of ops) {
        if (op.kind === 'write') await be.pwrite(op.offset, new Uint8Array(op.bytes).fill(op.pattern));
        else if (op.kind === 'zero') await be.pwriteZeroes(op.offset, op.bytes, op.unmap ? 0x4 : 0);
        else if (op.kind === 'discard') await be.pdiscard(op.offset, op.bytes);
      }
      const err = await be.pwritevCompressed(0, 65536, IOVector.of(new Uint8Array(65536))).catch((e: unknown) => e);
      expect(isBlockError(err, 'ENOTSUP')).toBe(true);
      const guest = await readAll(be, size);
      await graph.close();
      expect(run('qemu-img', ['compare', 'ours.qcow2', 'twin.qcow2'], w.dir).out).toContain('Images are identical');
      expect(qemuCheck(w.path('ours.qcow2')).status).toBe(0);
      if (raw) expect(firstDiff(w.read('ours.data'), guest)).toBe(-1);
    });
  }

  test('reopen read-only marks a lazy image clean; reopen read-write works again', async () => {
    w.create('ro.qcow2', '8M', ['lazy_refcounts=on']);
    const graph = newGraph();
    const { node, be } = await openQcow2(graph, w.path('ro.qcow2'));
    await be.pwrite(0, new Uint8Array(4096).fill(9));
    be.remove();
    await graph.reopen(node, { readOnly: true });
    expect(dataView(w.read('ro.qcow2')).getUint32(76) & 1).toBe(0);
    expect(qemuCheck(w.path('ro.qcow2')).status).toBe(0);
    await graph.reopen(node, { readOnly: false });
    const be2 = graph.backend(node, { perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: PERM_ALL });
    await be2.pwrite(8192, new Uint8Array(4096).fill(8));
    expect((await be2.read(0, 4096)).every((x) => x === 9)).toBe(true);
    await graph.close();
    expect(qemuCheck(w.path('ro.qcow2')).status).toBe(0);
  });

  test('memory: random reads keep the L2 cache within its configured size', async () => {
    w.create('big.qcow2', '8G', ['preallocation=metadata']);
    for (const [opts, entries, slice] of [
      [{}, 16, 65536],
      [{ 'l2-cache-size': '256k' }, 64, 4096],
    ] as const) {
      const graph = newGraph();
      const { node, be } = await openQcow2(graph, w.path('big.qcow2'), { readOnly: true, options: opts });
      const s = (node.impl as Qcow2Instance).state;
      let x = 7;
      const rnd = (): number => ((x = (x * 1103515245 + 12345) >>> 0) / 4294967296);
      const buf = new Uint8Array(4096);
      for (let i = 0; i < 3000; i++) await be.pread(Math.floor(rnd() * (node.totalBytes / 4096)) * 4096, buf);
      expect(s.l2Cache.capacity).toBe(entries);
      expect(s.l2SliceBytes).toBe(slice);
      // Every entry got used, none beyond the configured number.
      expect(s.l2Cache.size).toBe(entries);
      await graph.close();
    }
  });

  test('discard reaches the file (pass-discard-request follows discard=unmap)', async () => {
    for (const pass of [true, false]) {
      w.create('pd.qcow2', '16M');
      const graph = newGraph();
      const { node, be } = await openQcow2(graph, w.path('pd.qcow2'), { options: { 'pass-discard-request': pass } });
      await be.pwrite(0, new Uint8Array(8 * M).fill(1));
      await be.flush();
      const before = await node.impl.getAllocatedFileSize!();
      await be.pdiscard(0, 8 * M);
      await be.flush();
      const after = await node.impl.getAllocatedFileSize!();
      if (pass) expect(after).toBeLessThan(before - 4 * M);
      else expect(after).toBeGreaterThanOrEqual(before);
      await graph.close();
      expect(qemuCheck(w.path('pd.qcow2')).status).toBe(0);
      w.write('pd.qcow2', new Uint8Array(0));
    }
  });
});
