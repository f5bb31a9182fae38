import { AUTOCLEAR_BITMAPS, Overlap, OVERLAP_CACHED, OVERLAP_NAMES } from '../format/index.js';
import { CheckAbort } from './check-abort.js';
import { signalCorruption, type CheckState } from './check-state.js';

/**
 * QEMU's metadata overlap check before every metadata write (qcow2_pre_write_overlap_check with the default
 * "cached" template: everything but inactive L2 tables). A write that would land on known metadata marks
 * the image corrupt and fails with EIO instead.
 */
export { Overlap };

function overlaps(a: number, alen: number, b: number, blen: number): boolean {
  return !(b + blen - 1 < a || a + alen - 1 < b);
}

function asNumber(v: number | bigint): number {
  return typeof v === 'number' ? v : Number(v);
}

/** qcow2_check_metadata_overlap(): the first overlapping section (an Overlap bit) or 0. */
export function checkMetadataOverlap(st: CheckState, ign: number, offset: number, size: number): number {
  const chk = OVERLAP_CACHED & ~ign;
  const cs = st.clusterSize;
  if (!size) return 0;
  if (chk & Overlap.MAIN_HEADER && offset < cs) return Overlap.MAIN_HEADER;
  size = Math.ceil(((offset % cs) + size) / cs) * cs;
  offset -= offset % cs;
  const h = st.header;
  if (chk & Overlap.ACTIVE_L1 && h.l1Size && overlaps(offset, size, asNumber(st.l1Offset), h.l1Size * 8)) {
    return Overlap.ACTIVE_L1;
  }
  const rt = st.refcounts;
  if (
    chk & Overlap.REFCOUNT_TABLE &&
    rt.tableEntries &&
    overlaps(offset, size, asNumber(rt.tableOffset), rt.tableEntries * 8)
  ) {
    return Overlap.REFCOUNT_TABLE;
  }
  if (
    chk & Overlap.SNAPSHOT_TABLE &&
    st.snapshotsSize &&
    overlaps(offset, size, asNumber(st.snapshotsOffset), st.snapshotsSize)
  ) {
    return Overlap.SNAPSHOT_TABLE;
  }
  if (chk & Overlap.INACTIVE_L1) {
    for (const sn of st.snapshots) {
      if (sn.l1Size && overlaps(offset, size, asNumber(sn.l1TableOffset), sn.l1Size * 8)) return Overlap.INACTIVE_L1;
    }
  }
  if (chk & Overlap.ACTIVE_L2) {
    for (let i = 0; i < h.l1Size; i++) {
      const hi = st.l1.getUint32(i * 8) & 0x00ffffff;
      const lo = st.l1.getUint32(i * 8 + 4) & 0xfffffe00;
      const l2 = hi * 4294967296 + (lo >>> 0);
      if (l2 && overlaps(offset, size, l2, cs)) return Overlap.ACTIVE_L2;
    }
  }
  if (chk & Overlap.REFCOUNT_BLOCK) {
    for (let i = 0; i <= rt.lastUsedIndex && i < rt.tableEntries; i++) {
      const b = asNumber(rt.blockOffset(i));
      if (b && overlaps(offset, size, b, cs)) return Overlap.REFCOUNT_BLOCK;
    }
  }
  const bm = h.extensions.bitmaps;
  if (chk & Overlap.BITMAP_DIRECTORY && h.autoclearFeatures & AUTOCLEAR_BITMAPS && bm) {
    if (overlaps(offset, size, bm.directoryOffset, bm.directorySize)) return Overlap.BITMAP_DIRECTORY;
  }
  return 0;
}

/** qcow2_pre_write_overlap_check(): throws EIO (after marking the image corrupt) on an overlap. */
export async function preWriteOverlapCheck(st: CheckState, ign: number, offset: number, size: number): Promise<void> {
  const hit = checkMetadataOverlap(st, ign, offset, size);
  if (hit) {
    const name = OVERLAP_NAMES[31 - Math.clz32(hit & -hit)]!;
    await signalCorruption(st, `Preventing invalid write on metadata (overlaps with ${name})`);
    throw new CheckAbort('EIO');
  }
}
