import { BlockError } from '@blockgraph/block-core';
import { TWO_POW_32 } from './u64.js';

/**
 * Refcount blocks: one cluster of refcount_bits-wide entries (refcount_bits = 1 << refcount_order, 1..64).
 * Entries of 8 bits and more are big-endian integers; narrower ones are packed LSB-first (entry 0 in the least
 * significant bits of byte 0). 64-bit entries are numbers, exact below 2^53; only a damaged image holds more, and
 * such values read rounded (still 2^53 or more: used, not free), with getRefcount64/setRefcount64 for exact work.
 */

export const MAX_REFCOUNT_ORDER = 6;

/** 2^refcount_bits - 1 by refcount_order; 64-bit entries are capped at Number.MAX_SAFE_INTEGER. */
const REFCOUNT_MAX: readonly number[] = [1, 3, 15, 255, 65535, 4294967295, Number.MAX_SAFE_INTEGER];

/** Largest storable refcount: 2^refcount_bits - 1, capped at Number.MAX_SAFE_INTEGER for 64-bit entries. */
export function refcountMax(refcountOrder: number): number {
  const max = REFCOUNT_MAX[refcountOrder];
  if (max === undefined) throw new BlockError('EINVAL', `Invalid refcount order ${refcountOrder}`);
  return max;
}

/** Entries in one refcount block. */
export function refcountBlockEntries(clusterBits: number, refcountOrder: number): number {
  return 2 ** (clusterBits + 3 - refcountOrder);
}

/** Refcount of entry `index` of `block`. */
export function getRefcount(block: Uint8Array, index: number, refcountOrder: number): number {
  switch (refcountOrder) {
    case 0:
      return (block[index >>> 3]! >>> (index & 7)) & 1;
    case 1:
      return (block[index >>> 2]! >>> ((index & 3) << 1)) & 3;
    case 2:
      return (block[index >>> 1]! >>> ((index & 1) << 2)) & 15;
    case 3:
      return block[index]!;
    case 4: {
      const at = index * 2;
      return (block[at]! << 8) | block[at + 1]!;
    }
    case 5: {
      const at = index * 4;
      return block[at]! * 0x1000000 + ((block[at + 1]! << 16) | (block[at + 2]! << 8) | block[at + 3]!);
    }
    case 6: {
      const at = index * 8;
      const hi = block[at]! * 0x1000000 + ((block[at + 1]! << 16) | (block[at + 2]! << 8) | block[at + 3]!);
      const lo = block[at + 4]! * 0x1000000 + ((block[at + 5]! << 16) | (block[at + 6]! << 8) | block[at + 7]!);
      return hi * TWO_POW_32 + lo;
    }
    default:
      throw new BlockError('EINVAL', `Invalid refcount order ${refcountOrder}`);
  }
}

/** Entry `index` of a block of 64-bit refcounts, exactly (getRefcount rounds values of 2^53 and more). */
export function getRefcount64(block: Uint8Array, index: number): bigint {
  return new DataView(block.buffer, block.byteOffset + index * 8, 8).getBigUint64(0);
}

/** Store a 64-bit refcount exactly. */
export function setRefcount64(block: Uint8Array, index: number, value: bigint): void {
  new DataView(block.buffer, block.byteOffset + index * 8, 8).setBigUint64(0, value);
}

/** Store `value` (an integer in 0..refcountMax(order)) in entry `index` of `block`. */
export function setRefcount(block: Uint8Array, index: number, refcountOrder: number, value: number): void {
  if (!(value >= 0 && value <= refcountMax(refcountOrder)) || value % 1 !== 0) {
    throw new BlockError('EINVAL', `Refcount ${value} does not fit in ${2 ** refcountOrder}-bit entries`);
  }
  switch (refcountOrder) {
    case 0: {
      const shift = index & 7;
      const at = index >>> 3;
      block[at] = (block[at]! & ~(1 << shift)) | (value << shift);
      return;
    }
    case 1: {
      const shift = (index & 3) << 1;
      const at = index >>> 2;
      block[at] = (block[at]! & ~(3 << shift)) | (value << shift);
      return;
    }
    case 2: {
      const shift = (index & 1) << 2;
      const at = index >>> 1;
      block[at] = (block[at]! & ~(15 << shift)) | (value << shift);
      return;
    }
    case 3:
      block[index] = value;
      return;
    case 4: {
      const at = index * 2;
      block[at] = value >>> 8;
      block[at + 1] = value;
      return;
    }
    case 5: {
      const at = index * 4;
      block[at] = value >>> 24;
      block[at + 1] = value >>> 16;
      block[at + 2] = value >>> 8;
      block[at + 3] = value;
      return;
    }
    case 6: {
      const at = index * 8;
      const hi = Math.floor(value / TWO_POW_32);
      const lo = value >>> 0;
      block[at] = hi >>> 24;
      block[at + 1] = hi >>> 16;
      block[at + 2] = hi >>> 8;
      block[at + 3] = hi;
      block[at + 4] = lo >>> 24;
      block[at + 5] = lo >>> 16;
      block[at + 6] = lo >>> 8;
      block[at + 7] = lo;
      return;
    }
    default:
      throw new BlockError('EINVAL', `Invalid refcount order ${refcountOrder}`);
  }
}
