import { BlockError } from '@blockgraph/block-core';
import {
  ClusterType,
  OFFSET_MASK_HI,
  OFFSET_MASK_LO,
  OFLAG_COPIED_HI,
  compressedHostOffset,
  compressedReadLength,
  hexAlt,
  l2ClusterType,
} from '../format/index.js';
import { flushCaches } from './header-io.js';
import { readAt } from './metadata.js';
import { signalCorruption } from './overlap.js';
import { getRefcount, processDiscards, updateRefcount } from './refcount.js';
import { DiscardType, type Qcow2State } from './state.js';

/**
 * qcow2_update_snapshot_refcount(): walk an L1 table (the active one, from memory, when `l1Offset` is the
 * active table's offset; any other from the file) and add `addend` (-1, 0 or +1) to the refcount of every L2
 * table and data cluster it reaches, then set COPIED on exactly the entries whose cluster now has refcount 1.
 * L2 entries are changed in the L2 cache (shared tables included, as in QEMU); a changed L1 table is written
 * back synced unless the walk dropped references (addend -1: the table is about to be freed or replaced).
 *
 * Runs under the metadata lock. Refcount changes go through update_refcount(), so their ordering against L2
 * writes (increments before, decrements after) comes from the cache dependencies.
 */

const TWO32 = 4294967296;

/** Raise or lower one cluster's refcount by one, retrying when a refcount block had to be allocated. */
async function bump(s: Qcow2State, offset: number, addend: number): Promise<void> {
  for (;;) {
    const r = await updateRefcount(s, offset, 1, Math.abs(addend), addend < 0, DiscardType.SNAPSHOT);
    if (r === 'ok') return;
  }
}

async function bumpRange(s: Qcow2State, offset: number, length: number, addend: number): Promise<void> {
  for (;;) {
    const r = await updateRefcount(s, offset, length, Math.abs(addend), addend < 0, DiscardType.SNAPSHOT);
    if (r === 'ok') return;
  }
}

export async function updateSnapshotRefcount(s: Qcow2State, l1Offset: number, l1Size: number, addend: -1 | 0 | 1): Promise<void> {
  const cs = s.clusterSize;
  const active = l1Offset === s.l1Offset;
  let l1: DataView;
  let l1Bytes: Uint8Array;
  if (active) {
    if (l1Size !== s.l1Size) throw new BlockError('EINVAL', 'qcow2: active L1 table size mismatch');
    l1Bytes = s.l1;
    l1 = s.l1View;
  } else {
    l1Bytes = await readAt(s, l1Offset, l1Size * 8);
    l1 = new DataView(l1Bytes.buffer, l1Bytes.byteOffset, l1Bytes.byteLength);
  }
  const esz = s.g.l2EntrySize;
  const nSlices = cs / s.l2SliceBytes;
  let l1Modified = false;
  let ok = false;
  s.cacheDiscards = true;
  try {
    for (let i = 0; i < l1Size; i++) {
      const oldHi = l1.getUint32(i * 8);
      const oldLo = l1.getUint32(i * 8 + 4);
      const offHi = oldHi & OFFSET_MASK_HI;
      const offLo = (oldLo & OFFSET_MASK_LO) >>> 0;
      if (oldHi === 0 && oldLo === 0) continue;
      const l2Offset = offHi * TWO32 + offLo;
      if (l2Offset === 0) continue;
      if (l2Offset % cs) {
        throw await signalCorruption(s, true, -1, -1, `L2 table offset ${hexAlt(l2Offset)} unaligned (L1 index: ${hexAlt(i)})`);
      }
      for (let slice = 0; slice < nSlices; slice++) {
        const e = await s.l2Cache.get(l2Offset + slice * s.l2SliceBytes);
        try {
          const v = e.view;
          for (let j = 0; j < s.l2SliceEntries; j++) {
            const hi = v.getUint32(j * esz);
            const lo = v.getUint32(j * esz + 4);
            let refcount: number;
            switch (l2ClusterType(hi, lo, s.mode)) {
              case ClusterType.COMPRESSED:
                if (addend !== 0) {
                  await bumpRange(s, compressedHostOffset(hi, lo, s.g), compressedReadLength(hi, lo, s.g), addend);
                }
                // compressed clusters are never modified in place
                refcount = 2;
                break;
              case ClusterType.NORMAL:
              case ClusterType.ZERO_ALLOC: {
                const off = (hi & OFFSET_MASK_HI) * TWO32 + ((lo & OFFSET_MASK_LO) >>> 0);
                if (off % cs) {
                  throw await signalCorruption(
                    s,
                    true,
                    -1,
                    -1,
                    `Cluster allocation offset ${hexAlt(off)} unaligned (L2 offset: ${hexAlt(l2Offset)}, L2 index: ${hexAlt(slice * s.l2SliceEntries + j)})`,
                  );
                }
                if (addend !== 0) await bump(s, off, addend);
                refcount = await getRefcount(s, off / cs);
                break;
              }
              default:
                refcount = 0;
            }
            let nhi = (hi & ~OFLAG_COPIED_HI) >>> 0;
            if (refcount === 1) nhi = (nhi | OFLAG_COPIED_HI) >>> 0;
            if (nhi !== hi) {
              if (addend > 0) await s.l2Cache.setDependency(s.refCache);
              v.setUint32(j * esz, nhi);
              s.l2Cache.markDirty(e);
            }
          }
        } finally {
          s.l2Cache.put(e);
        }
      }
      if (addend !== 0) await bump(s, l2Offset, addend);
      const rc = await getRefcount(s, l2Offset / cs);
      // QEMU keeps the raw entry apart from the offset and COPIED: reserved bits are dropped, as it does.
      const nhi = rc === 1 ? (offHi | OFLAG_COPIED_HI) >>> 0 : offHi;
      if (nhi !== oldHi || offLo !== oldLo) {
        l1.setUint32(i * 8, nhi);
        l1.setUint32(i * 8 + 4, offLo);
        l1Modified = true;
      }
    }
    await flushCaches(s);
    ok = true;
  } finally {
    s.cacheDiscards = false;
    await processDiscards(s, ok);
  }
  if (l1Modified && l1Bytes === s.l1) s.l1Changed();
  if (addend >= 0 && l1Modified) {
    await s.writeFileSync(l1Offset, l1Bytes.subarray(0, l1Size * 8));
  }
}
