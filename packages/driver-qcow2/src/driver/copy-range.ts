import { BlockError, type Child, type ReqFlags } from '@blockgraph/block-core';
import { SubclusterType } from '../format/index.js';
import { Mapping, map, mapSync } from './cluster.js';
import { dataOverlap, performCow, writeAllocation } from './rw.js';
import { runWriteSetup } from './setup.js';
import type { Qcow2State } from './state.js';

/**
 * Copy offloading through a qcow2 node (qcow2_co_copy_range_from / _to). As the source, each guest extent goes on
 * to where its bytes are: data clusters to the data file at their host offset, unallocated ones to the backing
 * file, and what reads as zeroes becomes a zero write at the destination; compressed clusters cannot be copied
 * without a buffer (ENOTSUP). As the destination, clusters are allocated as for a write, the source copies into
 * them, and the allocation is linked once the copy is done, after the copy-on-write of partial clusters.
 */

/** qcow2_co_copy_range_from(). */
export async function copyRangeFrom(
  s: Qcow2State,
  offset: number,
  dst: Child,
  dstOffset: number,
  bytes: number,
  readFlags: ReqFlags,
  writeFlags: ReqFlags,
): Promise<void> {
  s.checkUsable();
  const m = new Mapping();
  for (let done = 0; done < bytes; ) {
    const off = offset + done;
    const to = dstOffset + done;
    // Holds the host clusters: a discard that frees them waits for the copy out of them to end.
    const ticket = s.tickets.enter();
    let n: number;
    try {
      if (!mapSync(s, off, bytes - done, m)) await map(s, off, bytes - done, m);
      n = m.bytes;
      switch (m.type) {
        case SubclusterType.NORMAL:
          await s.dataFile.copyRangeFrom(m.host, dst, to, n, readFlags, writeFlags);
          break;
        case SubclusterType.UNALLOCATED_PLAIN:
        case SubclusterType.UNALLOCATED_ALLOC: {
          const backing = s.backing;
          if (backing && off < backing.node.totalBytes) {
            n = Math.min(n, backing.node.totalBytes - off);
            await backing.copyRangeFrom(off, dst, to, n, readFlags, writeFlags);
          } else {
            await dst.pwriteZeroes(to, n, writeFlags);
          }
          break;
        }
        case SubclusterType.COMPRESSED:
          throw new BlockError('ENOTSUP', 'Copy offloading of compressed clusters is not supported');
        default:
          await dst.pwriteZeroes(to, n, writeFlags);
      }
    } finally {
      s.tickets.leave(ticket);
    }
    done += n;
  }
}

/** qcow2_co_copy_range_to(). */
export async function copyRangeTo(
  s: Qcow2State,
  src: Child,
  srcOffset: number,
  offset: number,
  bytes: number,
  readFlags: ReqFlags,
  writeFlags: ReqFlags,
): Promise<void> {
  s.checkUsable();
  if (s.pendingWriteSetup) await runWriteSetup(s);
  for (let done = 0; done < bytes; ) {
    const from = srcOffset + done;
    done += await writeAllocation(s, offset + done, bytes - done, async (res) => {
      const chk = dataOverlap(s, res.hostOffset, res.bytes);
      if (chk) await chk;
      await s.dataFile.copyRangeTo(src, from, res.hostOffset, res.bytes, readFlags, writeFlags);
      for (const m of res.metas) if (m.hasCow) await performCow(s, m);
    });
  }
}
