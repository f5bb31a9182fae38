import { BlockError } from '@blockgraph/block-core';

/**
 * 64-bit big-endian integers as plain numbers. qcow2 offsets are 56-bit at most, JS numbers are exact below
 * 2^53, and BigInt is too slow for the per-request path; so we read the two 32-bit halves and refuse values at
 * or above 2^53 instead of silently losing precision (an 8 PiB image file is not a realistic input).
 */

export const TWO_POW_32 = 4294967296;
/** A high word above this makes hi * 2^32 + lo >= 2^53. */
export const MAX_SAFE_HIGH_WORD = 0x1fffff;

export function hex(value: number | bigint): string {
  return '0x' + value.toString(16);
}

/** printf("%#x") / ("%#" PRIx64), as QEMU's corruption messages print: "0x..." except that zero is "0". */
export function hexAlt(value: number | bigint): string {
  return value === 0 || value === 0n ? '0' : '0x' + value.toString(16);
}

export function tooLargeError(what: string, hi: number, lo: number): BlockError {
  const value = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
  return new BlockError('EFBIG', `${what} ${hex(value)} is too large: offsets must stay below 2^53`);
}

/** Read a u64 that must be an exact number (offsets, sizes). */
export function readU64(view: DataView, offset: number, what: string): number {
  const hi = view.getUint32(offset);
  const lo = view.getUint32(offset + 4);
  if (hi > MAX_SAFE_HIGH_WORD) throw tooLargeError(what, hi, lo);
  return hi * TWO_POW_32 + lo;
}

/** Write a non-negative integer below 2^53 as a u64. */
export function writeU64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, Math.floor(value / TWO_POW_32));
  // ToUint32 is an exact modulo-2^32 for any integral double.
  view.setUint32(offset + 4, value >>> 0);
}

/** A DataView over exactly the bytes of `bytes` (which may be a window into a larger buffer). */
export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
