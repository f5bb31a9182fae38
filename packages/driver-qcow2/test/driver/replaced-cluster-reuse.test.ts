/**
 * A host cluster whose last reference an L2 update dropped (a compressed cluster rewritten in part, so copied
 * to a new cluster) must not be reused before that L2 update is on disk. Otherwise a crash leaves the old L2
 * entry on disk pointing at somebody else's data, and the untouched, flushed part of the cluster is lost.
 * The "crash" here is a copy of the image file taken while a blkdebug breakpoint parks the allocating write
 * whose data has just reached the file: everything written with pwrite is in it, nothing still in the metadata
 * caches is, as after a SIGKILL at that moment.
 */
import { copyFileSync, statSync } from 'node:fs';
import { Graph, IOVector } from '@blockgraph/block-core';
import { allRawDrivers } from '@blockgraph/driver-raw/file';
import { blkdebugDriver, findBlkdebug } from '@blockgraph/iotests';
import { describe, expect, test } from 'vitest';
import { qcow2Driver } from '../../src/node/index.js';
import { Workdir, hasQemu, newGraph, openQcow2, qemuCheck } from './helpers.js';

const K = 1024;
const M = 1024 * K;

describe.skipIf(!hasQemu)('a cluster freed by an L2 update is not reused before the update is on disk', () => {
  test.each([
    ['lazy refcounts (the L2 table is written only by a flush)', ['lazy_refcounts=on']],
    ['accurate refcounts', []],
  ])('%s', async (_name, createOpts) => {
    const w = new Workdir();
    try {
      w.create('live.qcow2', '4M', createOpts);
      const graph = new Graph({ drivers: [...allRawDrivers, blkdebugDriver, qcow2Driver] });
      try {
        const node = await graph.addNode({
          driver: 'qcow2',
          discard: 'unmap',
          file: { driver: 'blkdebug', image: { driver: 'file', filename: w.path('live.qcow2') } },
        });
        const be = graph.backend(node);
        const dbg = findBlkdebug(be);
        await be.pwritevCompressed(0, 64 * K, IOVector.of(new Uint8Array(64 * K).fill(7)));
        await be.flush();
        // Copies the compressed cluster to a new one and drops the last reference to its host cluster.
        await be.pwrite(0, new Uint8Array(4 * K).fill(8));
        // An allocating write that would take the lowest free host cluster, parked once its data is written.
        dbg.break('pwritev_done', 'data');
        const parked = be.pwrite(1 * M, new Uint8Array(64 * K).fill(9));
        await dbg.waitBreak('data');
        copyFileSync(w.path('live.qcow2'), w.path('crashed.qcow2'));
        dbg.resume('data');
        await parked;
        // The parked write had to take a new cluster at the end of the file. Once the L2 update is flushed, the
        // freed cluster is used again: the next allocating write does not grow the file.
        await be.flush();
        const sizeBefore = statSync(w.path('live.qcow2')).size;
        await be.pwrite(2 * M, new Uint8Array(64 * K).fill(10));
        await be.flush();
        expect(statSync(w.path('live.qcow2')).size).toBe(sizeBefore);
      } finally {
        await graph.close();
      }
      const after = new Uint8Array(await readOnce(w.path('live.qcow2'), 0, 4 * M));
      expect(after.subarray(0, 4 * K).every((b) => b === 8)).toBe(true);
      expect(after.subarray(4 * K, 64 * K).every((b) => b === 7)).toBe(true);
      expect(after.subarray(2 * M, 2 * M + 64 * K).every((b) => b === 10)).toBe(true);
      expect(qemuCheck(w.path('live.qcow2')).status).toBe(0);

      // The crashed copy: the flushed content of the first cluster reads back (its first 4 KiB may be either).
      expect([0, 3]).toContain(qemuCheck(w.path('crashed.qcow2')).status);
      const crashed = await readOnce(w.path('crashed.qcow2'), 0, 64 * K);
      expect(crashed.subarray(4 * K).every((b) => b === 7)).toBe(true);
      expect(crashed.subarray(0, 4 * K).every((b) => b === 7) || crashed.subarray(0, 4 * K).every((b) => b === 8)).toBe(true);
    } finally {
      w.cleanup();
    }
  });
});

async function readOnce(filename: string, offset: number, bytes: number): Promise<Uint8Array> {
  const graph = newGraph();
  try {
    const { be } = await openQcow2(graph, filename, { readOnly: true });
    return await be.read(offset, bytes);
  } finally {
    await graph.close();
  }
}
