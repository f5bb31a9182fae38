import { BlockError } from '@blockgraph/block-core';
import { MAX_SAFE_HIGH_WORD, TWO_POW_32, tooLargeError } from './u64.js';

/**
 * Refcount table entries (u64): bits 9..63 = offset of a refcount block (0: no block, all its refcounts are 0),
 * bits 0..8 reserved. Unlike L1/L2 entries there are no flags in the high bits (setting COPIED here is a
 * classic bug in other implementations).
 */

export const REFT_RESERVED_MASK_LO = 0x1ff;

export function reftableEntryOffset(hi: number, lo: number): number {
  if (hi > MAX_SAFE_HIGH_WORD) throw tooLargeError('Refcount block offset', hi, lo);
  return hi * TWO_POW_32 + (lo - (lo & REFT_RESERVED_MASK_LO));
}

export function reftableEntryHasReservedBits(lo: number): boolean {
  return (lo & REFT_RESERVED_MASK_LO) !== 0;
}

/** Offset of the refcount block that entry `index` of a refcount table in `view` points to (0: none). */
export function reftableBlockOffset(view: DataView, index: number): number {
  const at = index * 8;
  return reftableEntryOffset(view.getUint32(at), view.getUint32(at + 4));
}

export function writeReftableEntry(view: DataView, index: number, refblockOffset: number): void {
  if (!(refblockOffset >= 0 && refblockOffset <= Number.MAX_SAFE_INTEGER && refblockOffset % 512 === 0)) {
    throw new BlockError('EINVAL', `Refcount block offset ${refblockOffset} is not a valid qcow2 table offset`);
  }
  const at = index * 8;
  view.setUint32(at, Math.floor(refblockOffset / TWO_POW_32));
  view.setUint32(at + 4, refblockOffset >>> 0);
}
