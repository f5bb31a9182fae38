import { STRERROR, isBlockError } from '@blockgraph/block-core';
import { refcountTablePatch } from '../format/index.js';
import { CheckAbort } from './check-abort.js';
import type { CheckCounters } from './check-counters.js';
import { refreshFileLength, type CheckState } from './check-state.js';
import { preWriteOverlapCheck } from './metadata-overlap.js';
import type { RefcountArray } from './refcount-array.js';

/**
 * rebuild_refcount_structure() (QEMU >= 7.1): write brand-new refcount blocks and a new refcount table,
 * built from the in-memory refcount array alone, into clusters the array shows as free (first fit, so holes
 * inside the file are reused before the file grows), then switch the header to the new table with a synced
 * 12-byte write at offset 48. The old structures are not freed here: they are now unreferenced, and the
 * recalculation that follows finds them as leaks and repairs them.
 */

/**
 * alloc_clusters_imrt(): `count` contiguous free clusters at or after *firstFree in the array (growing it
 * past its end if needed), marked used with refcount 1. Updates `cursor.firstFree` to the first gap seen.
 */
function allocClustersImrt(imrt: RefcountArray, count: number, cursor: { firstFree: number }): number {
  let cluster = cursor.firstFree;
  let firstGap = true;
  let contiguous = 0;
  for (; cluster < imrt.size && contiguous < count; cluster++) {
    if (!imrt.get(cluster)) {
      contiguous++;
      if (firstGap) {
        cursor.firstFree = cluster;
        firstGap = false;
      }
    } else if (contiguous) {
      contiguous = 0;
    }
  }
  if (contiguous < count) imrt.resize(cluster + count - contiguous);
  cluster -= contiguous;
  for (let i = 0; i < count; i++) imrt.set(cluster + i, 1);
  return cluster;
}

interface OnDiskReftable {
  /** Refcount block offsets by refcount table index (0: none). */
  entries: number[];
}

class RebuildError extends Error {
  constructor(
    readonly code: 'EIO' | 'ENOSPC' | 'EFBIG' | 'EINVAL',
    message: string,
  ) {
    super(message);
  }
}

/**
 * rebuild_refcounts_write_refblocks(): for every cluster in [first, end) with a non-zero refcount, make sure
 * its refcount block is allocated and write it (a slice of the array). Returns whether the table grew.
 */
async function writeRefblocks(
  st: CheckState,
  imrt: RefcountArray,
  first: number,
  end: number,
  table: OnDiskReftable,
): Promise<boolean> {
  const cs = st.clusterSize;
  const perBlock = st.g.refcountBlockEntries;
  const cursor = { firstFree: 0 };
  let grown = false;
  for (let cluster = first; cluster < end; cluster++) {
    if (!imrt.get(cluster)) continue;
    const blockIndex = Math.floor(cluster / perBlock);
    const blockStart = blockIndex * perBlock;
    let blockOffset: number;
    if (table.entries.length > blockIndex && table.entries[blockIndex]) {
      blockOffset = table.entries[blockIndex]!;
    } else {
      // Never allocate inside a refcount block that was already written.
      if (cursor.firstFree < blockStart) cursor.firstFree = blockStart;
      const blockCluster = allocClustersImrt(imrt, 1, cursor);
      blockOffset = blockCluster * cs;
      // The block holding this block's own refcount must be written too.
      if (blockCluster >= end) end = blockCluster + 1;
      if (table.entries.length <= blockIndex) {
        const newEntries = Math.ceil(((blockIndex + 1) * 8) / cs) * (cs / 8);
        while (table.entries.length < newEntries) table.entries.push(0);
        grown = true;
      }
      table.entries[blockIndex] = blockOffset;
    }
    try {
      await preWriteOverlapCheck(st, 0, blockOffset, cs);
      await st.io.writeAt(blockOffset, imrt.refblockSlice(blockIndex));
    } catch (e) {
      throw new RebuildError('EIO', `ERROR writing refblock: ${isBlockError(e) ? STRERROR[e.code] : STRERROR.EIO}`);
    }
    cluster = blockStart + perBlock - 1;
  }
  return grown;
}

/**
 * Rebuild the refcount structures from `imrt`. On failure the error is reported like QEMU
 * (error_report_err: "qemu-img: ERROR ...") and the check stops.
 */
export async function rebuildRefcountStructure(st: CheckState, res: CheckCounters, imrt: RefcountArray): Promise<void> {
  const cs = st.clusterSize;
  const table: OnDiskReftable = { entries: [] };
  let reftableOffset = -1;
  let reftableClusters = 0;
  try {
    await st.refcounts.writeBack();
    st.refcounts.emptyCache();
    let changed = await writeRefblocks(st, imrt, 0, imrt.size, table);
    do {
      const length = table.entries.length * 8;
      reftableClusters = Math.ceil(length / cs);
      const cursor = { firstFree: 0 };
      const start = allocClustersImrt(imrt, reftableClusters, cursor);
      reftableOffset = start * cs;
      // The table's own clusters changed the array: rewrite the refcount blocks covering them.
      changed = await writeRefblocks(st, imrt, start, start + reftableClusters, table);
    } while (changed);

    const bytes = new Uint8Array(table.entries.length * 8);
    const view = new DataView(bytes.buffer);
    table.entries.forEach((off, i) => {
      view.setUint32(i * 8, Math.floor(off / 4294967296));
      view.setUint32(i * 8 + 4, off >>> 0);
    });
    try {
      await preWriteOverlapCheck(st, 0, reftableOffset, bytes.length);
      await st.io.writeAt(reftableOffset, bytes);
    } catch (e) {
      throw new RebuildError('EIO', `ERROR writing reftable: ${isBlockError(e) ? STRERROR[e.code] : STRERROR.EIO}`);
    }
    // Refcount blocks and table must be stable before the header points at them.
    await st.io.flush();
    const patch = refcountTablePatch(reftableOffset, reftableClusters);
    try {
      await st.io.writeAt(patch.offset, patch.bytes);
      await st.io.flush();
    } catch (e) {
      throw new RebuildError('EIO', `ERROR setting reftable: ${isBlockError(e) ? STRERROR[e.code] : STRERROR.EIO}`);
    }
    st.header.refcountTableOffset = reftableOffset;
    st.header.refcountTableClusters = reftableClusters;
    st.refcounts.replaceTable(reftableOffset, bytes);
    await refreshFileLength(st);
  } catch (e) {
    if (e instanceof RebuildError) {
      res.checkErrors++;
      st.messages.push(`qemu-img: ${e.message}`);
      await refreshFileLength(st);
      throw new CheckAbort(e.code);
    }
    throw e;
  }
}
