/**
 * 64-bit values as the check meets them: table entries are read as two 32-bit halves; offsets derived from
 * them are plain numbers below 2^53 and bigints above (possible only in corrupted entries, and then always
 * beyond the end of any real file). Message texts print them like QEMU's PRIx64 / PRIu64.
 */

export const TWO_32 = 4294967296;

/** An offset or size: exact number below 2^53, bigint above. */
export type Offset = number | bigint;

/** The u64 made of two halves, as a number when exact, else a bigint. */
export function u64(hi: number, lo: number): Offset {
  hi >>>= 0;
  lo >>>= 0;
  if (hi <= 0x1fffff) return hi * TWO_32 + lo;
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** printf("%" PRIx64): lower-case hex without prefix. */
export function hex(value: Offset): string {
  return value.toString(16);
}

/** printf("%#" PRIx64): the driver's formatter, shared. */
export { hexAlt } from '../format/u64.js';

/** Hex of the u64 made of two halves (%PRIx64). */
export function hex64(hi: number, lo: number): string {
  return ((BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0)).toString(16);
}

/** a + b - c >= d in exact arithmetic, for offsets that may be bigints. */
export function exceedsBy(offset: Offset, size: number, fileLength: number, limit: number): boolean {
  if (typeof offset === 'number' && offset + size <= Number.MAX_SAFE_INTEGER) {
    return offset + size - fileLength >= limit;
  }
  return BigInt(offset) + BigInt(size) - BigInt(fileLength) >= BigInt(limit);
}

/** offset_into_cluster(). */
export function offsetIntoCluster(offset: Offset, clusterSize: number): number {
  return typeof offset === 'number' ? offset % clusterSize : Number(offset % BigInt(clusterSize));
}
