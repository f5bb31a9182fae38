import { BlockError, errnoError } from '@blockgraph/block-core';
import {
  QCOW_MAX_REFTABLE_SIZE,
  getRefcount as getRefcountEntry,
  getRefcount64,
  headerGeometry,
  hex,
  hexAlt,
  setRefcount as setRefcountEntry,
} from '../format/index.js';
import { updateHeader } from './header-io.js';
import { preWriteOverlapCheck, signalCorruption } from './overlap.js';
import { allocClusters, freeClusters } from './refcount.js';
import { DiscardType, type Qcow2State } from './state.js';

/**
 * qcow2_change_refcount_order() (qemu-img amend -o refcount_bits=N): new refcount blocks of the new width
 * are allocated through the old structures (walking the old refcount table until one walk allocates
 * nothing, since every allocation changes refcounts), filled with the same refcounts and written, then a new
 * refcount table; the header switches to it in one rewrite, and the old blocks and table are freed through
 * the new structures. A failure before the switch leaves the old structures in charge (new clusters leak).
 */

type FinishOp = (reftableIndex: number, block: Uint8Array | null, empty: boolean) => Promise<void>;

export async function changeRefcountOrder(s: Qcow2State, newOrder: number, progress?: (done: number, total: number) => void): Promise<void> {
  const cs = s.clusterSize;
  const newBits = 2 ** newOrder;
  const newBlockEntries = (cs * 8) / newBits;
  const perTableCluster = cs / 8;
  let newTable: number[] = [];
  let newTableOffset = 0;
  let allocatedTableSize = 0;
  let walkIndex = 0;

  /**
   * walk_over_reftable(): build new refblocks from the old ones, in order, calling `op` for each complete
   * one. `block` is null when only the allocation pass runs (no refcounts copied).
   */
  const walk = async (op: FinishOp, fill: Uint8Array | null, index: number, total: number): Promise<void> => {
    const order = s.g.refcountOrder;
    let newIndex = 0;
    let newTableIndex = 0;
    let empty = true;
    // `fill` starts zeroed and is zeroed again after each block that got a refcount, so zero refcounts are never
    // written into it (the unallocated tail of the table is most of a large image: billions of entries otherwise),
    // and an empty block costs no memset of a cluster (2 MiB clusters: a million of them per walk).
    const next = (): void => {
      if (!empty) fill?.fill(0);
      newTableIndex++;
      newIndex = 0;
      empty = true;
    };
    const opThenNext = async (): Promise<void> => {
      await op(newTableIndex, fill, empty);
      next();
    };
    // An empty block without a cluster in the new table is nothing to either operation: no call, no await.
    const finish = (): Promise<void> | undefined => {
      if (!empty || newTable[newTableIndex]) return opThenNext();
      next();
      return undefined;
    };
    for (let ti = 0; ti < s.reftable.length; ti++) {
      const entries = s.g.refcountBlockEntries;
      progress?.(index * s.reftable.length + ti, total * s.reftable.length);
      const rb = s.reftable[ti]!;
      if (rb) {
        if (rb < 0 || rb % cs) {
          await signalCorruption(s, true, -1, -1, `Refblock offset ${hexAlt(rb)} unaligned (reftable index: ${hexAlt(ti)})`);
          throw new BlockError('EIO', 'Image is corrupt (unaligned refblock offset)');
        }
        const e = await s.refCache.get(rb);
        try {
          for (let j = 0; j < entries; j++) {
            if (newIndex >= newBlockEntries) await finish();
            const rc = getRefcountEntry(e.buf, j, order);
            if (newBits < 64 && rc >= 2 ** newBits) {
              const offset = (ti * entries + j) * cs;
              // Exact even for a damaged 64-bit entry of 2^53 or more.
              const value = order === 6 ? getRefcount64(e.buf, j) : rc;
              throw new BlockError(
                'EINVAL',
                `Cannot decrease refcount entry width to ${newBits} bits: Cluster at offset ${offset ? hex(offset) : '0'} has a refcount of ${value}`,
              );
            }
            if (fill && rc !== 0) setRefcountEntry(fill, newIndex, newOrder, rc);
            newIndex++;
            if (rc !== 0) empty = false;
          }
        } finally {
          s.refCache.put(e);
        }
      } else {
        for (let j = 0; j < entries; ) {
          if (newIndex >= newBlockEntries) {
            const p = finish();
            if (p) await p;
          }
          // A run of zero refcounts up to the end of this old block or of the new one.
          const n = Math.min(entries - j, newBlockEntries - newIndex);
          newIndex += n;
          j += n;
        }
      }
    }
    if (newIndex > 0) await finish();
    progress?.((index + 1) * s.reftable.length, total * s.reftable.length);
  };

  let allocated = false;
  /** alloc_refblock(): a cluster for every non-empty new refblock, the new table grown as needed. */
  const allocRefblock: FinishOp = async (ti, _block, empty) => {
    if (!empty && ti >= newTable.length) {
      const size = Math.ceil((ti + 1) / perTableCluster) * perTableCluster;
      if (size > QCOW_MAX_REFTABLE_SIZE / 8) {
        throw new BlockError(
          'ENOTSUP',
          'This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting',
        );
      }
      while (newTable.length < size) newTable.push(0);
    }
    if (!empty && !newTable[ti]) {
      try {
        newTable[ti] = await allocClusters(s, cs);
      } catch (e) {
        throw errnoError(e, 'Failed to allocate refblock');
      }
      allocated = true;
    }
  };
  /** flush_refblock(): write a complete new refblock where the new table says. */
  const flushRefblock: FinishOp = async (ti, block, empty) => {
    if (ti < newTable.length && newTable[ti]) {
      const offset = newTable[ti]!;
      try {
        await preWriteOverlapCheck(s, 0, offset, cs, false);
      } catch (e) {
        throw errnoError(e, 'Overlap check failed');
      }
      try {
        await s.writeFile(offset, block!.slice());
      } catch (e) {
        throw errnoError(e, 'Failed to write refblock');
      }
    } else if (!empty) {
      throw new BlockError('EIO', 'qcow2: internal error: a non-empty refcount block has no cluster');
    }
  };

  let switched = false;
  try {
    do {
      allocated = false;
      const totalWalks = Math.max(walkIndex + 2, 3);
      await walk(allocRefblock, null, walkIndex++, totalWalks);
      if (allocated) {
        if (newTableOffset) await freeClusters(s, newTableOffset, allocatedTableSize * 8, DiscardType.NEVER);
        try {
          newTableOffset = await allocClusters(s, newTable.length * 8);
        } catch (e) {
          newTableOffset = 0;
          throw errnoError(e, 'Failed to allocate the new reftable');
        }
        allocatedTableSize = newTable.length;
      }
    } while (allocated);

    await walk(flushRefblock, new Uint8Array(cs), walkIndex, walkIndex + 1);

    const raw = new Uint8Array(newTable.length * 8);
    const rv = new DataView(raw.buffer);
    newTable.forEach((o, i) => {
      rv.setUint32(i * 8, Math.floor(o / 4294967296));
      rv.setUint32(i * 8 + 4, o >>> 0);
    });
    try {
      await preWriteOverlapCheck(s, 0, newTableOffset, raw.length, false);
    } catch (e) {
      throw errnoError(e, 'Overlap check failed');
    }
    try {
      await s.writeFile(newTableOffset, raw);
    } catch (e) {
      throw errnoError(e, 'Failed to write the new reftable');
    }
    try {
      await s.refCache.flush();
    } catch (e) {
      throw errnoError(e, 'Failed to flush the refblock cache');
    }

    // The switch: one header rewrite names the new table and width.
    const h = s.header;
    const oldOrder = h.refcountOrder;
    const oldTable = s.reftable;
    const oldOffset = s.reftableOffset;
    h.refcountOrder = newOrder;
    s.setReftable(Float64Array.from(newTable));
    s.reftableOffset = newTableOffset;
    try {
      await updateHeader(s);
    } catch (e) {
      h.refcountOrder = oldOrder;
      s.setReftable(oldTable);
      s.reftableOffset = oldOffset;
      throw errnoError(e, 'Failed to update the qcow2 header');
    }
    switched = true;
    s.g = headerGeometry(h);
    s.updateMaxRefcountTableIndex();
    // The cache holds old-width blocks (all clean after the flush above).
    s.refCache.dropAll();
    // What is freed below are the old structures, now described by the new ones.
    newTable = Array.from(oldTable);
    newTableOffset = oldOffset;
    s.trace('refcount_order_changed', { order: newOrder, reftable: s.reftableOffset });
  } finally {
    for (const o of newTable) if (o > 0) await freeClusters(s, o, cs, DiscardType.OTHER);
    if (newTableOffset > 0) {
      await freeClusters(s, newTableOffset, (switched ? newTable.length : allocatedTableSize) * 8, DiscardType.OTHER);
    }
  }
}
