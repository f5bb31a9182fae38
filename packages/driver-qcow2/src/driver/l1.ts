import { BlockError } from '@blockgraph/block-core';
import { QCOW_MAX_L1_SIZE, l1TablePatch } from '../format/index.js';
import { preWriteOverlapCheck } from './overlap.js';
import { allocClusters, freeClusters } from './refcount.js';
import { DiscardType, Overlap, type Qcow2State } from './state.js';

/** L1 entries are written in 512-byte groups (QEMU's L1_ENTRIES_PER_SECTOR). */
const L1_ENTRIES_PER_SECTOR = 64;

/** qcow2_write_l1_entry(): write the 512-byte group holding entry `index`, synced. */
export async function writeL1Entry(s: Qcow2State, index: number): Promise<void> {
  const first = index - (index % L1_ENTRIES_PER_SECTOR);
  const count = Math.min(s.l1Size - first, L1_ENTRIES_PER_SECTOR);
  const buf = s.l1.slice(first * 8, (first + count) * 8);
  const at = s.l1Offset + first * 8;
  await preWriteOverlapCheck(s, Overlap.ACTIVE_L1, at, buf.length, false);
  await s.writeFileSync(at, buf);
}

/**
 * qcow2_grow_l1_table(): a bigger L1 table in new clusters (1.5x steps unless `exact`), written synced, then
 * one synced 12-byte header switch; the old table is freed afterwards.
 */
export async function growL1Table(s: Qcow2State, minSize: number, exact: boolean): Promise<void> {
  if (minSize <= s.l1Size) return;
  if (minSize > Math.floor(0x7fffffff / 8)) throw new BlockError('EFBIG', 'qcow2: L1 table would be too large');
  let newSize: number;
  if (exact) {
    newSize = minSize;
  } else {
    newSize = s.l1Size || 1;
    while (minSize > newSize) newSize = Math.ceil((newSize * 3) / 2);
  }
  if (newSize > QCOW_MAX_L1_SIZE / 8) throw new BlockError('EFBIG', 'qcow2: L1 table would be too large');

  const bytes = newSize * 8;
  const table = new Uint8Array(bytes);
  table.set(s.l1.subarray(0, s.l1Size * 8));
  const newOffset = await allocClusters(s, bytes);
  try {
    await s.refCache.flush();
    // The new L1 position is not in the header yet, so these clusters must really be free.
    await preWriteOverlapCheck(s, 0, newOffset, bytes, false);
    await s.writeFileSync(newOffset, table);
    const patch = l1TablePatch(newSize, newOffset);
    await s.writeFileSync(patch.offset, patch.bytes);
  } catch (e) {
    await freeClusters(s, newOffset, bytes, DiscardType.OTHER);
    throw e;
  }
  const oldOffset = s.l1Offset;
  const oldBytes = s.l1Size * 8;
  s.setL1Table(table, newSize, newOffset);
  s.trace('l1_grow', { size: newSize, offset: newOffset });
  await freeClusters(s, oldOffset, oldBytes, DiscardType.OTHER);
}

/**
 * qcow2_shrink_l1_table(): zero the entries beyond `exactSize` on disk, then free their L2 tables. The L1 size
 * in the header stays (as in QEMU).
 */
export async function shrinkL1Table(s: Qcow2State, exactSize: number): Promise<void> {
  if (exactSize >= s.l1Size) return;
  const from = exactSize * 8;
  const zeros = new Uint8Array((s.l1Size - exactSize) * 8);
  try {
    await s.writeFile(s.l1Offset + from, zeros);
    await s.flushFile();
  } catch (e) {
    s.l1.fill(0, from);
    s.l1Changed();
    throw e;
  }
  for (let i = s.l1Size - 1; i >= exactSize; i--) {
    const l2 = s.l1L2Offset(i);
    if (l2 === 0) continue;
    await freeClusters(s, l2, s.clusterSize, DiscardType.ALWAYS);
    s.setL1(i, 0, false);
  }
}
