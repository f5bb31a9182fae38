import { BlockError } from '@blockgraph/block-core';
import { OFFSET_MASK_HI, OFFSET_MASK_LO, OFLAG_COPIED_HI, offsetBits9to55 } from './l1-entry.js';
import { TWO_POW_32 } from './u64.js';

/**
 * L2 table entries: standard (u64) and extended (u64 entry + u64 subcluster bitmap), their classification and
 * encoding. Like L1 entries, an entry is handled as its two big-endian 32-bit halves `hi` (bits 32..63) and
 * `lo` (bits 0..31); an extended entry's bitmap as `alloc` (bits 0..31: subcluster allocated, the bitmap's
 * low word at entry bytes 12..15) and `zero` (bits 32..63: subcluster reads as zero, bytes 8..11).
 *
 * Standard entry: bit 63 COPIED, bit 62 compressed, bits 9..55 host cluster offset, bit 0 "reads as zero"
 * (v3 without extended L2 only); compressed entries hold a descriptor instead (compressed.ts).
 */

/** QEMU's QCow2ClusterType, same numbering. */
export const ClusterType = {
  UNALLOCATED: 0,
  ZERO_PLAIN: 1,
  ZERO_ALLOC: 2,
  NORMAL: 3,
  COMPRESSED: 4,
} as const;
export type ClusterType = (typeof ClusterType)[keyof typeof ClusterType];

/** QEMU's QCow2SubclusterType, same numbering. Without extended L2 entries a cluster is one subcluster. */
export const SubclusterType = {
  UNALLOCATED_PLAIN: 0,
  /** Inside an allocated cluster (extended L2 only): reads from the backing file / as zeros. */
  UNALLOCATED_ALLOC: 1,
  ZERO_PLAIN: 2,
  ZERO_ALLOC: 3,
  NORMAL: 4,
  COMPRESSED: 5,
  /** A contradictory entry (QEMU marks the image corrupt when it meets one). */
  INVALID: 6,
} as const;
export type SubclusterType = (typeof SubclusterType)[keyof typeof SubclusterType];

/**
 * Per-image facts classification depends on, as bit flags (a small integer keeps the hot functions monomorphic).
 */
export const L2Mode = {
  STANDARD: 0,
  /** Incompatible bit 4: 16-byte entries with subcluster bitmaps; bit 0 is not a zero flag. */
  EXTENDED: 1,
  /** Incompatible bit 2: offset 0 with COPIED is a real cluster at host offset 0 of the data file. */
  EXTERNAL_DATA_FILE: 2,
} as const;

export function l2Mode(extendedL2: boolean, externalDataFile: boolean): number {
  return (extendedL2 ? L2Mode.EXTENDED : 0) | (externalDataFile ? L2Mode.EXTERNAL_DATA_FILE : 0);
}

export const OFLAG_COMPRESSED_HI = 0x40000000;
export const OFLAG_ZERO_LO = 0x1;
/** L2E_STD_RESERVED_MASK 0x3f000000000001fe: reserved bits of a non-compressed entry. */
export const L2E_STD_RESERVED_MASK_HI = 0x3f000000;
export const L2E_STD_RESERVED_MASK_LO = 0x000001fe;

/** Bytes per entry in a table of this mode. */
export function l2EntrySize(mode: number): number {
  return mode & L2Mode.EXTENDED ? 16 : 8;
}

/** QEMU's qcow2_get_cluster_type(). */
export function l2ClusterType(hi: number, lo: number, mode: number): ClusterType {
  if (hi & OFLAG_COMPRESSED_HI) return ClusterType.COMPRESSED;
  if (lo & OFLAG_ZERO_LO && !(mode & L2Mode.EXTENDED)) {
    return (hi & OFFSET_MASK_HI) !== 0 || (lo & OFFSET_MASK_LO) !== 0 ? ClusterType.ZERO_ALLOC : ClusterType.ZERO_PLAIN;
  }
  if ((hi & OFFSET_MASK_HI) === 0 && (lo & OFFSET_MASK_LO) === 0) {
    // Offset 0 is ambiguous with an external data file, where every cluster has refcount 1: COPIED decides.
    return mode & L2Mode.EXTERNAL_DATA_FILE && hi & OFLAG_COPIED_HI ? ClusterType.NORMAL : ClusterType.UNALLOCATED;
  }
  return ClusterType.NORMAL;
}

/**
 * QEMU's qcow2_get_subcluster_type(): the state of subcluster `scIndex` (0 without extended L2 entries).
 * INVALID flags the whole entry: a subcluster both allocated and zero, or allocation bits in an unallocated
 * cluster.
 */
export function l2SubclusterType(
  hi: number,
  lo: number,
  alloc: number,
  zero: number,
  scIndex: number,
  mode: number,
): SubclusterType {
  const type = l2ClusterType(hi, lo, mode);
  if (!(mode & L2Mode.EXTENDED)) {
    switch (type) {
      case ClusterType.COMPRESSED:
        return SubclusterType.COMPRESSED;
      case ClusterType.ZERO_PLAIN:
        return SubclusterType.ZERO_PLAIN;
      case ClusterType.ZERO_ALLOC:
        return SubclusterType.ZERO_ALLOC;
      case ClusterType.NORMAL:
        return SubclusterType.NORMAL;
      default:
        return SubclusterType.UNALLOCATED_PLAIN;
    }
  }
  const bit = 1 << scIndex;
  switch (type) {
    case ClusterType.COMPRESSED:
      return SubclusterType.COMPRESSED;
    case ClusterType.NORMAL:
      if (alloc & zero) return SubclusterType.INVALID;
      if (zero & bit) return SubclusterType.ZERO_ALLOC;
      if (alloc & bit) return SubclusterType.NORMAL;
      return SubclusterType.UNALLOCATED_ALLOC;
    default: // UNALLOCATED (no zero flag with extended entries)
      if (alloc) return SubclusterType.INVALID;
      if (zero & bit) return SubclusterType.ZERO_PLAIN;
      return SubclusterType.UNALLOCATED_PLAIN;
  }
}

/** Count trailing zero bits of a 32-bit value (32 for 0). */
function ctz32(x: number): number {
  return x === 0 ? 32 : 31 - Math.clz32(x & -x);
}

/** Bits [0, n) set, for n in 0..32. */
function lowBits(n: number): number {
  return n === 0 ? 0 : 0xffffffff >>> (32 - n);
}

/**
 * QEMU's qcow2_get_subcluster_range_type(): how many subclusters from `scFrom` on share the type `type` (which
 * the caller got from l2SubclusterType for `scFrom`). Whole remaining cluster without extended entries and for
 * compressed clusters; 0 for INVALID.
 */
export function subclusterRunLength(
  type: SubclusterType,
  alloc: number,
  zero: number,
  scFrom: number,
  subclustersPerCluster: number,
): number {
  if (type === SubclusterType.INVALID) return 0;
  if (subclustersPerCluster === 1 || type === SubclusterType.COMPRESSED) return subclustersPerCluster - scFrom;
  const below = lowBits(scFrom);
  switch (type) {
    case SubclusterType.NORMAL:
      return ctz32(~(alloc | below)) - scFrom;
    case SubclusterType.ZERO_PLAIN:
    case SubclusterType.ZERO_ALLOC:
      return ctz32(~(zero | below)) - scFrom;
    default: // UNALLOCATED_PLAIN / UNALLOCATED_ALLOC
      return ctz32((zero | alloc) & ~below) - scFrom;
  }
}

/** Host cluster offset of a NORMAL or ZERO_ALLOC entry (bits 9..55); refuses offsets >= 2^53. */
export function l2EntryHostOffset(hi: number, lo: number): number {
  return offsetBits9to55(hi, lo, 'Cluster offset');
}

export function l2EntryCopied(hi: number): boolean {
  return (hi & OFLAG_COPIED_HI) !== 0;
}

/** Reserved bits of a non-compressed standard descriptor are set (`qemu-img check`: corruption). */
export function l2EntryHasReservedBits(hi: number, lo: number): boolean {
  return (hi & L2E_STD_RESERVED_MASK_HI) !== 0 || (lo & L2E_STD_RESERVED_MASK_LO) !== 0;
}

/**
 * Whether an extended entry's bitmap contradicts its cluster type, as `qemu-img check` judges it: a compressed
 * cluster must have an all-zero bitmap, an unallocated one no allocation bits, a normal one no subcluster that
 * is both allocated and zero.
 */
export function l2BitmapIsInvalid(clusterType: ClusterType, alloc: number, zero: number): boolean {
  switch (clusterType) {
    case ClusterType.COMPRESSED:
      return (alloc | zero) !== 0;
    case ClusterType.NORMAL:
      return (alloc & zero) !== 0;
    case ClusterType.UNALLOCATED:
      return alloc !== 0;
    default:
      return false;
  }
}

/* Table access: `index` counts entries; the byte position depends on the mode. */

export function l2EntryHiAt(view: DataView, index: number, mode: number): number {
  return view.getUint32(index * l2EntrySize(mode));
}

export function l2EntryLoAt(view: DataView, index: number, mode: number): number {
  return view.getUint32(index * l2EntrySize(mode) + 4);
}

/** Allocation bits of an extended entry (bitmap bits 0..31). */
export function l2AllocBitsAt(view: DataView, index: number): number {
  return view.getUint32(index * 16 + 12);
}

/** Reads-as-zero bits of an extended entry (bitmap bits 32..63). */
export function l2ZeroBitsAt(view: DataView, index: number): number {
  return view.getUint32(index * 16 + 8);
}

export function l2ClusterTypeAt(view: DataView, index: number, mode: number): ClusterType {
  const at = index * l2EntrySize(mode);
  return l2ClusterType(view.getUint32(at), view.getUint32(at + 4), mode);
}

export function l2SubclusterTypeAt(view: DataView, index: number, scIndex: number, mode: number): SubclusterType {
  const at = index * l2EntrySize(mode);
  const extended = mode & L2Mode.EXTENDED;
  return l2SubclusterType(
    view.getUint32(at),
    view.getUint32(at + 4),
    extended ? view.getUint32(at + 12) : 0,
    extended ? view.getUint32(at + 8) : 0,
    scIndex,
    mode,
  );
}

/** Host offset of entry `index` (meaningful for NORMAL and ZERO_ALLOC entries). */
export function l2HostOffsetAt(view: DataView, index: number, mode: number): number {
  const at = index * l2EntrySize(mode);
  return l2EntryHostOffset(view.getUint32(at), view.getUint32(at + 4));
}

/* Encoding */

/** Flags for writeL2Entry. */
export const L2EntryFlag = {
  COPIED: 1,
  /** Bit 0 "reads as zero": standard entries of v3 images only. */
  ZERO: 2,
} as const;

/**
 * Store a standard descriptor in entry `index`: host cluster `hostOffset` (0 with no flags = unallocated,
 * 0 with ZERO = ZERO_PLAIN) plus flags. The bitmap of an extended entry is left untouched (writeL2Bitmap).
 */
export function writeL2Entry(view: DataView, index: number, mode: number, hostOffset: number, flags: number): void {
  if (!(hostOffset >= 0 && hostOffset <= Number.MAX_SAFE_INTEGER && hostOffset % 512 === 0)) {
    throw new BlockError('EINVAL', `Cluster offset ${hostOffset} is not a valid qcow2 host offset`);
  }
  if (flags & L2EntryFlag.ZERO && mode & L2Mode.EXTENDED) {
    throw new BlockError('EINVAL', 'Extended L2 entries express zeros in the subcluster bitmap, not with bit 0');
  }
  const at = index * l2EntrySize(mode);
  view.setUint32(at, (flags & L2EntryFlag.COPIED ? OFLAG_COPIED_HI : 0) + Math.floor(hostOffset / TWO_POW_32));
  view.setUint32(at + 4, (hostOffset >>> 0) + (flags & L2EntryFlag.ZERO ? OFLAG_ZERO_LO : 0));
}

/** Store the raw halves of entry `index` (e.g. a compressed descriptor from compressed.ts). */
export function writeL2EntryRaw(view: DataView, index: number, mode: number, hi: number, lo: number): void {
  const at = index * l2EntrySize(mode);
  view.setUint32(at, hi >>> 0);
  view.setUint32(at + 4, lo >>> 0);
}

/** Store the subcluster bitmap of extended entry `index`. */
export function writeL2Bitmap(view: DataView, index: number, alloc: number, zero: number): void {
  view.setUint32(index * 16 + 8, zero >>> 0);
  view.setUint32(index * 16 + 12, alloc >>> 0);
}

/** Allocation/zero bits for subclusters [from, to) (QCOW_OFLAG_SUB_ALLOC_RANGE), 0 <= from <= to <= 32. */
export function subclusterRange(from: number, to: number): number {
  return (lowBits(to) & ~lowBits(from)) >>> 0;
}
