import { BlockError } from '@blockgraph/block-core';
import { COMPRESSED_SECTOR_SIZE } from './constants.js';
import { OFLAG_COMPRESSED_HI } from './l2-entry.js';
import { MAX_SAFE_HIGH_WORD, TWO_POW_32, tooLargeError } from './u64.js';

/**
 * Compressed cluster descriptors (L2 entries with bit 62 set). With x = csize_shift = 62 - (cluster_bits - 8):
 * bits 0..x-1 hold the host byte offset of the compressed data (not aligned to anything), bits x..61 the number
 * of 512-byte sectors the data occupies beyond the first one. A reader takes
 * (n + 1) * 512 - (offset & 511) bytes from the offset — possibly more than the payload and possibly past EOF —
 * and decompresses until one cluster is produced.
 *
 * csize_shift is 49..61, so the sector field lies entirely in the high word; the offset's high part is the
 * low (csize_shift - 32) bits of the high word. All functions take the entry as its 32-bit halves.
 */

/** Per-image constants (see computeGeometry): csizeShift and csizeMask. */
export interface CompressedLayout {
  csizeShift: number;
  csizeMask: number;
}

/** The host offset's high word: the low (csize_shift - 32) bits of the descriptor's high word. */
function offsetHighWord(hi: number, layout: CompressedLayout): number {
  return hi & ((1 << (layout.csizeShift - 32)) - 1);
}

/** Host byte offset of the compressed data. */
export function compressedHostOffset(hi: number, lo: number, layout: CompressedLayout): number {
  const offsetHi = offsetHighWord(hi, layout);
  if (offsetHi > MAX_SAFE_HIGH_WORD) throw tooLargeError('Compressed cluster offset', offsetHi, lo);
  return offsetHi * TWO_POW_32 + lo;
}

/**
 * {@link compressedHostOffset}, or Infinity at or beyond 2^53 (a damaged descriptor): such an offset lies past
 * the end of any file this implementation opens.
 */
export function compressedHostOffsetOrBeyond(hi: number, lo: number, layout: CompressedLayout): number {
  const offsetHi = offsetHighWord(hi, layout);
  return offsetHi > MAX_SAFE_HIGH_WORD ? Number.POSITIVE_INFINITY : offsetHi * TWO_POW_32 + lo;
}

/** {@link compressedHostOffset} exactly, also at or beyond 2^53 (for messages about a damaged descriptor). */
export function compressedHostOffsetExact(hi: number, lo: number, layout: CompressedLayout): bigint {
  return (BigInt(offsetHighWord(hi, layout)) << 32n) | BigInt(lo >>> 0);
}

/** Number of 512-byte sectors beyond the first one (the descriptor's sector field). */
export function compressedAdditionalSectors(hi: number, layout: CompressedLayout): number {
  return (hi >>> (layout.csizeShift - 32)) & layout.csizeMask;
}

/** Bytes to read from the host offset: (n + 1) * 512 - (offset & 511). */
export function compressedReadLength(hi: number, lo: number, layout: CompressedLayout): number {
  return (compressedAdditionalSectors(hi, layout) + 1) * COMPRESSED_SECTOR_SIZE - (lo & (COMPRESSED_SECTOR_SIZE - 1));
}

/**
 * Build the descriptor for `compressedLength` bytes stored at `hostOffset`, the way QEMU does
 * (qcow2_alloc_compressed_cluster_offset): the sectors cover exactly the compressed bytes. Returns the high
 * word (with the compressed flag) and writes nothing; the low word is `hostOffset >>> 0`.
 */
export function compressedDescriptorHi(hostOffset: number, compressedLength: number, layout: CompressedLayout): number {
  if (!(compressedLength >= 1)) {
    throw new BlockError('EINVAL', `Invalid compressed length ${compressedLength}`);
  }
  const shiftHi = layout.csizeShift - 32;
  if (!(hostOffset >= 0 && hostOffset < 2 ** layout.csizeShift && hostOffset <= Number.MAX_SAFE_INTEGER)) {
    throw new BlockError('EFBIG', `Compressed cluster offset ${hostOffset} does not fit in the descriptor`);
  }
  const sectors =
    Math.floor((hostOffset + compressedLength - 1) / COMPRESSED_SECTOR_SIZE) -
    Math.floor(hostOffset / COMPRESSED_SECTOR_SIZE);
  if (sectors > layout.csizeMask) {
    throw new BlockError('EINVAL', `Compressed length ${compressedLength} does not fit in the descriptor`);
  }
  // sectors * 2^shiftHi stays below 2^30, so the sum is an exact uint32.
  return OFLAG_COMPRESSED_HI + sectors * 2 ** shiftHi + Math.floor(hostOffset / TWO_POW_32);
}

/** Store a compressed descriptor in a DataView at `byteOffset` (the start of an L2 entry). */
export function writeCompressedDescriptor(
  view: DataView,
  byteOffset: number,
  hostOffset: number,
  compressedLength: number,
  layout: CompressedLayout,
): void {
  view.setUint32(byteOffset, compressedDescriptorHi(hostOffset, compressedLength, layout));
  view.setUint32(byteOffset + 4, hostOffset >>> 0);
}

/**
 * Host clusters [first, last] covered by [offset, offset + length): each gets one reference per compressed
 * guest cluster (QEMU refcounts the whole read window; it never crosses into a cluster the data does not touch).
 */
export interface HostClusterRange {
  first: number;
  last: number;
}

export function compressedHostClusters(hostOffset: number, readLength: number, clusterBits: number): HostClusterRange {
  const clusterSize = 2 ** clusterBits;
  return {
    first: Math.floor(hostOffset / clusterSize),
    last: Math.floor((hostOffset + readLength - 1) / clusterSize),
  };
}
