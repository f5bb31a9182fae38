import { BlockError } from '@blockgraph/block-core';
import {
  AUTOCLEAR_MASK,
  BME_FLAG_IN_USE,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  headerGeometry,
  l2Mode,
  parseBitmapDirectory,
  parseHeader,
  peekClusterSize,
  serializeHeader,
  bitmapTableEntryIsValid,
  type BitmapDirectoryEntry,
  type Qcow2Geometry,
  type Qcow2Header,
} from '../format/index.js';
import { DiskRefcounts } from './disk-refcounts.js';
import type { CheckSnapshot } from './snapshot-check.js';
import { fileLengthInSectors, readFull, type ImageIO } from './image-io.js';
import { u64, type Offset } from './u64-text.js';

/**
 * Everything one check pass works on: what QEMU's qcow2_do_open() loads in check mode (header, active L1
 * table, refcount table) plus the snapshot list the check reads itself, and the lines it prints.
 */
export interface CheckState {
  io: ImageIO;
  /** The header as QEMU holds it in memory; fields the check changes (reftable, snapshots, features) are updated. */
  header: Qcow2Header;
  g: Qcow2Geometry;
  clusterSize: number;
  /** L2Mode flags for entry classification. */
  l2Mode: number;
  hasDataFile: boolean;
  /** The active L1 table as loaded at open (s->l1_table), and its offset (`header.l1TableOffset` unless >= 2^53). */
  l1: DataView;
  l1Offset: Offset;
  refcounts: DiskRefcounts;
  /** The snapshot list (s->snapshots) once the snapshot table has been read by the check. */
  snapshots: CheckSnapshot[];
  /** Offset and byte length of the snapshot table (s->snapshots_offset / s->snapshots_size). */
  snapshotsOffset: Offset;
  snapshotsSize: number;
  /** Bitmap directory entries (only when the bitmaps extension is valid). */
  bitmaps: BitmapDirectoryEntry[];
  /** Opened read-write (any repair mode). */
  writable: boolean;
  /** File length rounded up to 512 bytes, kept current across our own writes. */
  fileLength: number;
  /** stderr lines in order. */
  messages: string[];
  /** QEMU prints only the first corruption event of an open image. */
  signaledCorruption: boolean;
  /**
   * A fatal corruption event happened on the writable image: QEMU marked it corrupt and made the node
   * unusable (bs->drv = NULL), so the next check of the same open image fails with ENOMEDIUM.
   */
  nodeGone: boolean;
  /** QEMU's free_cluster_index: where the next cluster allocation starts looking (0 after open). */
  freeClusterIndex: number;
}

/**
 * Open the image the way `qemu-img check` does (BDRV_O_CHECK, read-write when repairing): header validation
 * in check mode (a corrupt bit or an empty refcount table do not prevent the check), bitmap directory and
 * bitmap tables (QEMU loads bitmaps at open: a broken directory fails the open), active L1 and refcount
 * table. Open failures are thrown as BlockError with QEMU's message (the caller prints "Could not open").
 *
 * When opened for writing, QEMU first clears unknown autoclear bits and drops an inconsistent bitmaps
 * extension with a full header rewrite; so does this.
 */
export async function openForCheck(io: ImageIO, writable: boolean, refcountCacheBlocks?: number): Promise<CheckState> {
  const first = await readFull(io, 0, 24);
  const clusterSize = peekClusterSize(first);
  const cluster0 = await readFull(io, 0, clusterSize);
  const raw = new DataView(cluster0.buffer, cluster0.byteOffset, cluster0.byteLength);
  const rawOffset = (at: number) => u64(raw.getUint32(at), raw.getUint32(at + 4));
  // parseHeader() refuses table offsets beyond 2^53 that QEMU accepts (and then reads as zeros past EOF).
  // Check-mode open ignores the snapshot table pointer anyway (the check reads it itself); L1 and refcount
  // table offsets that pass QEMU's own validation are hidden from the parser and kept here.
  const forParse = cluster0.slice();
  const nbSnapshots = raw.getUint32(60);
  const snapshotsOffset = rawOffset(64);
  forParse.fill(0, 60, 72);
  const l1Offset = rawOffset(40);
  if (typeof l1Offset === 'bigint' && validBigTable(l1Offset, BigInt(raw.getUint32(36)) * 8n, clusterSize)) {
    forParse.fill(0, 40, 48);
  }
  const reftableOffset = rawOffset(48);
  const reftableBytesLength = BigInt(raw.getUint32(56)) * BigInt(clusterSize);
  if (typeof reftableOffset === 'bigint' && validBigTable(reftableOffset, reftableBytesLength, clusterSize)) {
    forParse.fill(0, 48, 56);
  }
  const header = parseHeader(forParse, { check: true, readWrite: writable });
  header.nbSnapshots = nbSnapshots;
  header.snapshotsOffset = typeof snapshotsOffset === 'number' ? snapshotsOffset : 0;
  const g = headerGeometry(header);
  const hasDataFile = (header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;

  let bitmaps: BitmapDirectoryEntry[] = [];
  const bm = header.extensions.bitmaps;
  if (bm) {
    const dir = await readFull(io, bm.directoryOffset, bm.directorySize);
    bitmaps = parseBitmapDirectory(dir, bm.nbBitmaps, { clusterSize, virtualSize: Math.floor(header.size / 512) * 512 });
    for (const e of bitmaps) {
      if (e.flags & BME_FLAG_IN_USE) continue;
      const table = await readFull(io, e.bitmapTableOffset, e.bitmapTableSize * 8);
      const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
      for (let i = 0; i < e.bitmapTableSize; i++) {
        if (!bitmapTableEntryIsValid(view.getUint32(i * 8), view.getUint32(i * 8 + 4), clusterSize)) {
          throw new BlockError(
            'EINVAL',
            `Could not read bitmap_table table from image for bitmap '${e.name}': Invalid argument`,
          );
        }
      }
    }
  }

  const l1Bytes = await readFull(io, l1Offset, header.l1Size * 8);
  const reftableBytes = await readFull(io, reftableOffset, header.refcountTableClusters * clusterSize);
  const messages: string[] = [];
  const st: CheckState = {
    io,
    header,
    g,
    clusterSize,
    l2Mode: l2Mode(g.extendedL2, hasDataFile),
    hasDataFile,
    l1: new DataView(l1Bytes.buffer, l1Bytes.byteOffset, l1Bytes.byteLength),
    l1Offset,
    refcounts: undefined as unknown as DiskRefcounts,
    snapshots: [],
    snapshotsOffset,
    snapshotsSize: 0,
    bitmaps,
    writable,
    fileLength: await fileLengthInSectors(io),
    messages,
    signaledCorruption: false,
    nodeGone: false,
    freeClusterIndex: 0,
  };
  st.refcounts = new DiskRefcounts(io, g, reftableOffset, reftableBytes, (m) => signalCorruption(st, m), refcountCacheBlocks);

  if (writable && ((header.autoclearFeatures & ~AUTOCLEAR_MASK) !== 0n || header.extensions.bitmapsInconsistent)) {
    header.autoclearFeatures &= AUTOCLEAR_MASK;
    header.extensions.bitmapsInconsistent = false;
    await writeHeader(st);
  }
  return st;
}

/**
 * qcow2_signal_corruption() for the events the check can meet (unaligned refcount blocks). Only the first
 * event is printed. With a writable image QEMU also marks it corrupt; the check then goes on with its own
 * I/O, which is what this does too (see checkImage for the consequences).
 */
export async function signalCorruption(st: CheckState, message: string): Promise<void> {
  const fatal = st.writable;
  if (st.signaledCorruption && (!fatal || st.header.incompatibleFeatures & INCOMPAT_CORRUPT)) return;
  if (fatal) {
    st.messages.push(`qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`);
  } else {
    st.messages.push(`qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`);
  }
  if (fatal) {
    // qcow2_mark_corrupt(): set the bit with a header rewrite; the node is then unusable.
    st.header.incompatibleFeatures |= INCOMPAT_CORRUPT;
    await writeHeader(st);
    st.nodeGone = true;
  }
  st.signaledCorruption = true;
}

/** QEMU's qcow2_validate_table() for a table offset beyond 2^53: aligned and below INT64_MAX - size. */
function validBigTable(offset: bigint, bytes: bigint, clusterSize: number): boolean {
  return offset % BigInt(clusterSize) === 0n && offset <= (1n << 63n) - 1n - bytes;
}

/**
 * qcow2_update_header(): rewrite cluster 0 from the in-memory header, then flush. Table offsets beyond
 * 2^53, which the header model cannot hold, are written back as they were.
 */
export async function writeHeader(st: CheckState): Promise<void> {
  const cluster0 = serializeHeader(st.header);
  const view = new DataView(cluster0.buffer, cluster0.byteOffset, cluster0.byteLength);
  if (typeof st.l1Offset === 'bigint') view.setBigUint64(40, st.l1Offset);
  if (typeof st.refcounts.tableOffset === 'bigint') view.setBigUint64(48, st.refcounts.tableOffset);
  if (typeof st.snapshotsOffset === 'bigint') view.setBigUint64(64, st.snapshotsOffset);
  await st.io.writeAt(0, cluster0);
  await st.io.flush();
  await refreshFileLength(st);
}

/**
 * bdrv_flush() of the qcow2 node: its refcount cache written back, then the file flushed. Once a fatal
 * corruption event has made the node unusable this does nothing (QEMU skips the flush of a node without a
 * driver), so repairs still in the cache never reach the file.
 */
export async function flushNode(st: CheckState): Promise<void> {
  if (st.nodeGone) return;
  await st.refcounts.writeBack();
  await st.io.flush();
}

export async function refreshFileLength(st: CheckState): Promise<void> {
  st.fileLength = await fileLengthInSectors(st.io);
}
