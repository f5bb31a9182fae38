import { BlockError } from '@blockgraph/block-core';
import { MAX_SAFE_HIGH_WORD, TWO_POW_32, tooLargeError } from './u64.js';

/**
 * L1 table entries (u64): bits 9..55 = offset of an L2 table (0: none, the whole range is unallocated),
 * bit 63 = COPIED (the L2 table's refcount is exactly 1, so it may be updated in place), everything else is
 * reserved. Entries are handled as their two big-endian 32-bit halves (`hi`, `lo`) — two getUint32 calls and
 * plain number arithmetic, no BigInt and no object per entry on the request path.
 */

/** Bit 63, in the high word: refcount == 1. Shared with L2 entries. */
export const OFLAG_COPIED_HI = 0x80000000;
/** Bits 9..55 of the entry: the table/cluster offset. */
export const OFFSET_MASK_HI = 0x00ffffff;
export const OFFSET_MASK_LO = 0xfffffe00;
/** L1E_RESERVED_MASK 0x7f000000000001ff split in halves; `qemu-img check` reports set bits as corruption. */
export const L1E_RESERVED_MASK_HI = 0x7f000000;
export const L1E_RESERVED_MASK_LO = 0x000001ff;

/** Bits 9..55 as a number; refuses offsets at or above 2^53 (bits 53..55). */
export function offsetBits9to55(hi: number, lo: number, what: string): number {
  const h = hi & OFFSET_MASK_HI;
  if (h > MAX_SAFE_HIGH_WORD) throw tooLargeError(what, h, lo & OFFSET_MASK_LO);
  return h * TWO_POW_32 + (lo - (lo & 0x1ff));
}

/** Offset of the L2 table an L1 entry points to (0 = no L2 table). */
export function l1EntryL2Offset(hi: number, lo: number): number {
  return offsetBits9to55(hi, lo, 'L2 table offset');
}

export function l1EntryCopied(hi: number): boolean {
  return (hi & OFLAG_COPIED_HI) !== 0;
}

export function l1EntryHasReservedBits(hi: number, lo: number): boolean {
  return (hi & L1E_RESERVED_MASK_HI) !== 0 || (lo & L1E_RESERVED_MASK_LO) !== 0;
}

/** L2 table offset of entry `index` of an L1 table held in `view`. */
export function l1TableL2Offset(view: DataView, index: number): number {
  const at = index * 8;
  return l1EntryL2Offset(view.getUint32(at), view.getUint32(at + 4));
}

/** Table offsets must be sector-aligned exact numbers (cluster alignment is the allocator's business). */
function checkTableOffset(offset: number, what: string): void {
  if (!(offset >= 0 && offset <= Number.MAX_SAFE_INTEGER && offset % 512 === 0)) {
    throw new BlockError('EINVAL', `${what} ${offset} is not a valid qcow2 table offset`);
  }
}

/** Store entry `index`: L2 table at `l2Offset` (0 for none), COPIED as given. */
export function writeL1Entry(view: DataView, index: number, l2Offset: number, copied: boolean): void {
  checkTableOffset(l2Offset, 'L2 table offset');
  const at = index * 8;
  view.setUint32(at, (copied ? OFLAG_COPIED_HI : 0) + Math.floor(l2Offset / TWO_POW_32));
  view.setUint32(at + 4, l2Offset >>> 0);
}
