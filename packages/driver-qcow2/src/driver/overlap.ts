import { BlockError } from '@blockgraph/block-core';
import { INCOMPAT_CORRUPT, hex } from '../format/index.js';
import { updateHeader } from './header-io.js';
import { OVERLAP_NAMES, Overlap, type Qcow2State } from './state.js';

/**
 * Metadata overlap checks (qcow2_check_metadata_overlap) and corruption signalling (qcow2_signal_corruption):
 * before any write QEMU makes sure the target does not hit metadata it knows about; a hit means an allocator
 * bug or a corrupt image, so the image is marked corrupt and no longer written.
 */

/** The first overlap bit hit by [offset, offset + size), 0 if none. */
export function checkMetadataOverlap(s: Qcow2State, ign: number, offset: number, size: number): number {
  const chk = s.options.overlapCheck & ~ign;
  if (!chk || size <= 0) return 0;
  const cs = s.clusterSize;
  const start = offset - (offset % cs);
  const endRaw = offset + size;
  const end = endRaw % cs ? endRaw + cs - (endRaw % cs) : endRaw;
  const hit = (o: number, n: number): boolean => n > 0 && o < end && start < o + n;

  if (chk & Overlap.MAIN_HEADER && start < cs) return Overlap.MAIN_HEADER;
  if (chk & Overlap.ACTIVE_L1 && s.l1Size && hit(s.l1Offset, s.l1Size * 8)) return Overlap.ACTIVE_L1;
  if (chk & Overlap.ACTIVE_L2 && s.activeL2Tables().overlaps(start, end)) return Overlap.ACTIVE_L2;
  if (chk & Overlap.REFCOUNT_TABLE && hit(s.reftableOffset, s.reftable.length * 8)) return Overlap.REFCOUNT_TABLE;
  if (chk & Overlap.REFCOUNT_BLOCK && s.refcountBlocks().overlaps(start, end)) return Overlap.REFCOUNT_BLOCK;
  if (chk & Overlap.SNAPSHOT_TABLE && s.header.nbSnapshots && hit(s.header.snapshotsOffset, s.snapshotTableBytes)) {
    return Overlap.SNAPSHOT_TABLE;
  }
  if (chk & Overlap.INACTIVE_L1) {
    for (const sn of s.snapshots) if (hit(sn.l1TableOffset, sn.l1Size * 8)) return Overlap.INACTIVE_L1;
  }
  if (chk & Overlap.INACTIVE_L2 && s.inactiveL2) {
    for (const l2 of s.inactiveL2) if (hit(l2, cs)) return Overlap.INACTIVE_L2;
  }
  const bm = s.header.extensions.bitmaps;
  if (chk & Overlap.BITMAP_DIRECTORY && bm && hit(bm.directoryOffset, bm.directorySize)) return Overlap.BITMAP_DIRECTORY;
  return 0;
}

/**
 * qcow2_signal_corruption(): returns the EIO to throw. A fatal event on a writable image marks it corrupt
 * (header bit 1) and makes this node unusable; a non-fatal one (or any on a read-only image) only fails the
 * request. The node's graph gets a BLOCK_IMAGE_CORRUPTED event; libraries never print.
 */
export async function signalCorruption(
  s: Qcow2State,
  fatal: boolean,
  offset: number,
  size: number,
  message: string,
): Promise<BlockError> {
  fatal = fatal && !s.readOnly;
  const text = fatal
    ? `qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`
    : `qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`;
  const err = new BlockError('EIO', text);
  const suppressed = s.signaledCorruption && (!fatal || (s.header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n);
  if (suppressed) return s.broken ?? new BlockError('EIO', `qcow2: Image is corrupt: ${message}`);
  s.signaledCorruption = true;
  const data: Record<string, unknown> = { 'node-name': s.node.nodeName, msg: message, fatal };
  if (offset >= 0) data.offset = offset;
  if (size >= 0) data.size = size;
  s.graph.emit('BLOCK_IMAGE_CORRUPTED', data);
  s.trace('corruption', { message, fatal, offset, size });
  if (fatal) {
    s.broken = err;
    s.header.incompatibleFeatures |= INCOMPAT_CORRUPT;
    try {
      await updateHeader(s);
      await s.flushFile();
    } catch {
      // the image is already unusable; the corrupt bit is best effort
    }
  }
  return err;
}

/** qcow2_pre_write_overlap_check(): throws (and marks the image corrupt) on a hit. */
export async function preWriteOverlapCheck(
  s: Qcow2State,
  ign: number,
  offset: number,
  size: number,
  dataFile: boolean,
): Promise<void> {
  if (dataFile && s.hasDataFile) return;
  const ret = checkMetadataOverlap(s, ign, offset, size);
  if (ret === 0) return;
  const bit = 31 - Math.clz32(ret & -ret);
  throw await signalCorruption(
    s,
    true,
    offset,
    size,
    `Preventing invalid write on metadata (overlaps with ${OVERLAP_NAMES[bit]})`,
  );
}

/** Same check for callers that are not async-friendly: returns the message or null. */
export function overlapMessage(s: Qcow2State, ign: number, offset: number, size: number): string | null {
  const ret = checkMetadataOverlap(s, ign, offset, size);
  if (ret === 0) return null;
  const bit = 31 - Math.clz32(ret & -ret);
  return `Preventing invalid write on metadata (overlaps with ${OVERLAP_NAMES[bit]}) at ${hex(offset)}`;
}
