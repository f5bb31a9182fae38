import { BlockError } from '@blockgraph/block-core';
import { QCOW2_MAX_BITMAP_DIRECTORY_SIZE } from './constants.js';
import { OFFSET_MASK_HI, OFFSET_MASK_LO, offsetBits9to55 } from './l1-entry.js';
import { MAX_SAFE_HIGH_WORD, TWO_POW_32, tooLargeError, viewOf, writeU64 } from './u64.js';

/**
 * Persistent dirty bitmaps: the bitmap directory (pointed to by the bitmaps header extension) and bitmap
 * tables.
 *
 * Directory entry, padded to 8 bytes:
 *   0 u64 bitmap_table_offset   8 u32 bitmap_table_size (entries)   12 u32 flags
 *  16 u8 type (1 = dirty tracking)   17 u8 granularity_bits   18 u16 name_size   20 u32 extra_data_size
 *  24 extra data, then the name (no NUL)
 *
 * Bitmap table entry (u64): bits 9..55 offset of a data cluster; with offset 0, bit 0 says whether the range
 * reads as all ones (1) or all zeros (0); bits 1..8 and 56..63 reserved. Data bits are LSB-first within bytes,
 * bit n covering guest bytes [n * granularity, (n + 1) * granularity).
 *
 * Parsing applies QEMU 7.2's bitmap_list_load()/check_dir_entry() rules and messages; serialization is
 * bitmap_list_store().
 */

export const BITMAP_DIR_ENTRY_HEADER_SIZE = 24;
export const BME_FLAG_IN_USE = 1;
export const BME_FLAG_AUTO = 2;
/** QEMU knows in_use and auto; any other flag (including the spec's extra_data_compatible) fails the check. */
export const BME_RESERVED_FLAGS = 0xfffffffc;
export const BT_DIRTY_TRACKING_BITMAP = 1;
export const BME_MAX_TABLE_SIZE = 0x8000000;
export const BME_MAX_PHYS_SIZE = 0x20000000;
export const BME_MIN_GRANULARITY_BITS = 9;
export const BME_MAX_GRANULARITY_BITS = 31;
export const BME_MAX_NAME_SIZE = 1023;
/** BME_TABLE_ENTRY_RESERVED_MASK 0xff000000000001fe in halves. */
export const BME_TABLE_ENTRY_RESERVED_MASK_HI = 0xff000000;
export const BME_TABLE_ENTRY_RESERVED_MASK_LO = 0x000001fe;
export const BME_TABLE_ENTRY_FLAG_ALL_ONES = 1;

export interface BitmapDirectoryEntry {
  bitmapTableOffset: number;
  /** Number of u64 entries in the bitmap table. */
  bitmapTableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  name: string;
}

export interface BitmapDirectoryContext {
  clusterSize: number;
  /** The disk size (bdrv_getlength): a bitmap not in use must cover it. */
  virtualSize: number;
}

const utf8 = new TextDecoder('utf-8');
const utf8Encoder = new TextEncoder();

function einval(message: string): BlockError {
  return new BlockError('EINVAL', message);
}

function align8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

/** QEMU's check_dir_entry(): whether the entry satisfies the constraints QEMU can load. */
export function bitmapEntrySatisfiesConstraints(e: BitmapDirectoryEntry, ctx: BitmapDirectoryContext): boolean {
  if (
    e.bitmapTableSize === 0 ||
    e.bitmapTableOffset === 0 ||
    e.bitmapTableOffset % ctx.clusterSize !== 0 ||
    e.bitmapTableSize > BME_MAX_TABLE_SIZE ||
    e.granularityBits > BME_MAX_GRANULARITY_BITS ||
    e.granularityBits < BME_MIN_GRANULARITY_BITS ||
    (e.flags & BME_RESERVED_FLAGS) !== 0 ||
    utf8Encoder.encode(e.name).length > BME_MAX_NAME_SIZE ||
    e.type !== BT_DIRTY_TRACKING_BITMAP
  ) {
    return false;
  }
  const physBitmapBytes = e.bitmapTableSize * ctx.clusterSize;
  if (physBitmapBytes > BME_MAX_PHYS_SIZE) return false;
  // A bitmap in use may legitimately be too small (it was not saved after a resize); a valid one must cover
  // the disk.
  if (!(e.flags & BME_FLAG_IN_USE) && ctx.virtualSize > physBitmapBytes * 8 * 2 ** e.granularityBits) return false;
  return true;
}

/**
 * Parse a bitmap directory of `bytes.length` (= the extension's directory size) bytes holding `nbBitmaps`
 * entries, with QEMU's checks and messages.
 */
export function parseBitmapDirectory(
  bytes: Uint8Array,
  nbBitmaps: number,
  ctx: BitmapDirectoryContext,
): BitmapDirectoryEntry[] {
  if (bytes.length === 0) throw einval('Requested bitmap directory size is zero');
  if (bytes.length > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) throw einval('Requested bitmap directory size is too big');
  const view = viewOf(bytes);
  const broken = () => einval('Broken bitmap directory');
  const entries: BitmapDirectoryEntry[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    if (offset + BITMAP_DIR_ENTRY_HEADER_SIZE > bytes.length) throw broken();
    if (entries.length + 1 > nbBitmaps) throw einval('More bitmaps found than specified in header extension');
    const nameSize = view.getUint16(offset + 18);
    const extraDataSize = view.getUint32(offset + 20);
    const next = offset + align8(BITMAP_DIR_ENTRY_HEADER_SIZE + nameSize + extraDataSize);
    if (next > bytes.length) throw broken();
    if (extraDataSize !== 0) throw einval('Bitmap extra data is not supported');
    const rawName = bytes.subarray(offset + BITMAP_DIR_ENTRY_HEADER_SIZE, offset + BITMAP_DIR_ENTRY_HEADER_SIZE + nameSize);
    const nul = rawName.indexOf(0);
    const tableHi = view.getUint32(offset);
    const tableLo = view.getUint32(offset + 4);
    if (tableHi > MAX_SAFE_HIGH_WORD) throw tooLargeError('Bitmap table offset', tableHi, tableLo);
    const entry: BitmapDirectoryEntry = {
      bitmapTableOffset: tableHi * TWO_POW_32 + tableLo,
      bitmapTableSize: view.getUint32(offset + 8),
      flags: view.getUint32(offset + 12),
      type: bytes[offset + 16]!,
      granularityBits: bytes[offset + 17]!,
      name: utf8.decode(nul < 0 ? rawName : rawName.subarray(0, nul)),
    };
    if (!bitmapEntrySatisfiesConstraints(entry, ctx)) {
      throw einval(`Bitmap '${utf8.decode(rawName)}' doesn't satisfy the constraints`);
    }
    entries.push(entry);
    offset = next;
  }
  if (entries.length !== nbBitmaps) throw einval('Less bitmaps found than specified in header extension');
  return entries;
}

/** Size of a directory holding these entries (entries padded to 8, no extra data). */
export function bitmapDirectorySize(entries: readonly BitmapDirectoryEntry[]): number {
  return entries.reduce((n, e) => n + align8(BITMAP_DIR_ENTRY_HEADER_SIZE + utf8Encoder.encode(e.name).length), 0);
}

/** Serialize as bitmap_list_store() does: type 1, no extra data, zero padding. */
export function serializeBitmapDirectory(entries: readonly BitmapDirectoryEntry[]): Uint8Array {
  const size = bitmapDirectorySize(entries);
  if (size === 0 || size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) throw new BlockError('EINVAL');
  const out = new Uint8Array(size);
  const view = viewOf(out);
  let offset = 0;
  for (const e of entries) {
    const name = utf8Encoder.encode(e.name);
    writeU64(view, offset, e.bitmapTableOffset);
    view.setUint32(offset + 8, e.bitmapTableSize);
    view.setUint32(offset + 12, e.flags);
    out[offset + 16] = BT_DIRTY_TRACKING_BITMAP;
    out[offset + 17] = e.granularityBits;
    view.setUint16(offset + 18, name.length);
    out.set(name, offset + BITMAP_DIR_ENTRY_HEADER_SIZE);
    offset += align8(BITMAP_DIR_ENTRY_HEADER_SIZE + name.length);
  }
  return out;
}

/* Bitmap table entries, as 32-bit halves like L1/L2 entries. */

/** Data cluster offset (0: the range is all zeros or all ones, see bitmapTableEntryAllOnes). */
export function bitmapTableEntryOffset(hi: number, lo: number): number {
  return offsetBits9to55(hi, lo, 'Bitmap data cluster offset');
}

export function bitmapTableEntryAllOnes(lo: number): boolean {
  return (lo & BME_TABLE_ENTRY_FLAG_ALL_ONES) !== 0;
}

/** QEMU's check_table_entry(): reserved bits clear; with an offset, bit 0 clear and the offset aligned. */
export function bitmapTableEntryIsValid(hi: number, lo: number, clusterSize: number): boolean {
  if (hi & BME_TABLE_ENTRY_RESERVED_MASK_HI || lo & BME_TABLE_ENTRY_RESERVED_MASK_LO) return false;
  const hasOffset = (hi & OFFSET_MASK_HI) !== 0 || (lo & OFFSET_MASK_LO) !== 0;
  if (!hasOffset) return true;
  if (lo & BME_TABLE_ENTRY_FLAG_ALL_ONES) return false;
  const h = hi & OFFSET_MASK_HI;
  if (h > MAX_SAFE_HIGH_WORD) return false;
  return (h * TWO_POW_32 + (lo - (lo & 0x1ff))) % clusterSize === 0;
}

/** Store entry `index` of a bitmap table: a data cluster, or (offset 0) an all-zeros/all-ones range. */
export function writeBitmapTableEntry(view: DataView, index: number, dataOffset: number, allOnes: boolean): void {
  if (dataOffset !== 0 && allOnes) throw einval('A bitmap table entry with a data cluster cannot be all ones');
  if (!(dataOffset >= 0 && dataOffset <= Number.MAX_SAFE_INTEGER && dataOffset % 512 === 0)) {
    throw einval(`Bitmap data cluster offset ${dataOffset} is invalid`);
  }
  view.setUint32(index * 8, Math.floor(dataOffset / TWO_POW_32));
  view.setUint32(index * 8 + 4, (dataOffset >>> 0) + (allOnes ? BME_TABLE_ENTRY_FLAG_ALL_ONES : 0));
}

/** Bitmap table entries (= data clusters) a bitmap of this granularity needs to cover `virtualSize` bytes. */
export function bitmapTableSizeFor(virtualSize: number, granularityBits: number, clusterSize: number): number {
  const bits = Math.ceil(virtualSize / 2 ** granularityBits);
  return Math.ceil(Math.ceil(bits / 8) / clusterSize);
}

