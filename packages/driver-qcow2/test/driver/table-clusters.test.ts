/**
 * The overlap check's index of L2 tables and refcount blocks (table-clusters.ts) must answer exactly as QEMU's walk
 * over the L1 and refcount tables does, whatever changed the tables: allocations, snapshots, shrinking.
 */
import { describe, expect, test } from 'vitest';
import { TableClusters } from '../../src/driver/table-clusters.js';
import { checkMetadataOverlap } from '../../src/driver/overlap.js';
import { Overlap, type Qcow2State } from '../../src/driver/state.js';
import type { Qcow2Instance } from '../../src/node/index.js';
import { Workdir, hasQemu, newGraph, openQcow2, prng, qemuCheck } from './helpers.js';

const K = 1024;
const M = 1024 * K;

describe('TableClusters', () => {
  test('answers for the clusters a range covers, whichever way it looks (range or tables)', () => {
    const t = new TableClusters(512);
    t.add(1024);
    t.add(4096);
    expect(t.size).toBe(2);
    expect(t.overlaps(0, 1024)).toBe(false);
    expect(t.overlaps(1024, 1536)).toBe(true);
    expect(t.overlaps(1536, 4096)).toBe(false);
    // A range of more clusters than there are tables walks the tables instead: same answers.
    expect(t.overlaps(0, 1 << 30)).toBe(true);
    expect(t.overlaps(8192, 1 << 30)).toBe(false);
    expect(t.overlaps(4608, 1 << 20)).toBe(false);
    // 0 and -1 (an unreadable refcount table entry) are no tables.
    t.add(0);
    t.add(-1);
    expect(t.size).toBe(2);
  });

  test('counts a cluster named twice until both names are gone; an unaligned table covers two clusters', () => {
    const t = new TableClusters(65536);
    t.add(65536);
    t.add(65536);
    t.remove(65536);
    expect(t.overlaps(65536, 131072)).toBe(true);
    t.remove(65536);
    expect(t.overlaps(65536, 131072)).toBe(false);
    t.add(65536 + 512);
    expect(t.overlaps(65536, 131072)).toBe(true);
    expect(t.overlaps(131072, 196608)).toBe(true);
    expect(t.overlaps(196608, 262144)).toBe(false);
    t.remove(65536 + 512);
    expect(t.size).toBe(0);
  });
});

/** QEMU's way: walk the whole L1 table and the whole refcount table. */
function walkedOverlap(s: Qcow2State, start: number, end: number): number {
  const cs = s.clusterSize;
  for (let i = 0; i < s.l1Size; i++) {
    const l2 = (s.l1View.getUint32(i * 8) & 0x00ffffff) * 2 ** 32 + ((s.l1View.getUint32(i * 8 + 4) & 0xfffffe00) >>> 0);
    if (l2 && l2 < end && start < l2 + cs) return Overlap.ACTIVE_L2;
  }
  for (const rb of s.reftable) if (rb > 0 && rb < end && start < rb + cs) return Overlap.REFCOUNT_BLOCK;
  return 0;
}

describe.skipIf(!hasQemu)('overlap check over changing tables', () => {
  test('agrees with a walk of the L1 and refcount tables after writes, snapshots, a revert and a shrink', async () => {
    const w = new Workdir();
    try {
      const cs = 512;
      w.create('t.qcow2', '8M', ['cluster_size=512', 'refcount_bits=16']);
      const graph = newGraph();
      const { node, be } = await openQcow2(graph, w.path('t.qcow2'), { options: { 'overlap-check': 'cached' } });
      const inst = node.impl as Qcow2Instance;
      const s = inst.state;
      const rnd = prng(1234);
      const only = Overlap.ACTIVE_L2 | Overlap.REFCOUNT_BLOCK;
      const agree = (when: string): void => {
        const fileEnd = Math.ceil((s.freeClusterIndex + 64) * cs);
        for (let i = 0; i < 400; i++) {
          const start = Math.floor(rnd() * (fileEnd / cs)) * cs;
          const end = start + (1 + Math.floor(rnd() * (i % 10 === 0 ? 4096 : 8))) * cs;
          const ours = checkMetadataOverlap(s, ~only, start, end - start) & only;
          expect(ours ? 1 : 0, `${when}: [${start}, ${end})`).toBe(walkedOverlap(s, start, end) ? 1 : 0);
        }
      };
      agree('empty');
      // One L2 table per 32 KiB of guest data with 512-byte clusters: spread writes allocate many.
      for (let i = 0; i < 64; i++) await be.pwrite(Math.floor(rnd() * 255) * 32 * K, new Uint8Array(4 * K).fill(i + 1));
      agree('after writes');
      await inst.snapshotCreate({ name: 'one' });
      for (let i = 0; i < 32; i++) await be.pwrite(Math.floor(rnd() * 255) * 32 * K, new Uint8Array(2 * K).fill(0x80 + i));
      agree('after copy-on-write of shared L2 tables');
      await inst.snapshotGoto('one');
      agree('after the revert');
      await inst.snapshotDelete(undefined, 'one');
      await be.truncate(2 * M, true, 'off', 0);
      agree('after the shrink');
      await graph.close();
      expect(qemuCheck(w.path('t.qcow2')).status).toBe(0);
    } finally {
      w.cleanup();
    }
  });
});
