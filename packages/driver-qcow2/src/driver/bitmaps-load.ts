/**
 * What qcow2_load_dirty_bitmaps() makes of an image's persistent bitmaps at open: the directory must parse
 * (bitmap_list_load()), and every bitmap not marked in use must have a table whose entries are valid
 * (bitmap_table_load(): check_table_entry()) and whose size is what the disk size and granularity need
 * (load_bitmap_data()). QEMU refuses to open an image where any of this fails, with these messages. The bitmap
 * data itself is not read: this driver reports bitmaps (info) but does not track them.
 */
import { BlockError, isBlockError } from '@blockgraph/block-core';
import {
  BME_FLAG_IN_USE,
  BME_MAX_TABLE_SIZE,
  bitmapTableEntryIsValid,
  bitmapTableSizeFor,
  parseBitmapDirectory,
  type BitmapDirectoryEntry,
  type BitmapsExtension,
} from '../format/index.js';
import { readAt } from './metadata.js';
import type { Qcow2State } from './state.js';

/** readAt(), a failure prefixed with what was being read (error_setg_errno()'s message). */
async function readFor(s: Qcow2State, offset: number, length: number, what: string): Promise<Uint8Array> {
  try {
    return await readAt(s, offset, length);
  } catch (e) {
    throw isBlockError(e) ? e.prepend(what) : e;
  }
}

async function checkBitmapTable(s: Qcow2State, e: BitmapDirectoryEntry): Promise<void> {
  const tableError = `Could not read bitmap_table table from image for bitmap '${e.name}': `;
  const table = await readFor(s, e.bitmapTableOffset, e.bitmapTableSize * 8, tableError);
  const v = new DataView(table.buffer, table.byteOffset, table.byteLength);
  for (let i = 0; i < e.bitmapTableSize; i++) {
    if (!bitmapTableEntryIsValid(v.getUint32(i * 8), v.getUint32(i * 8 + 4), s.clusterSize)) {
      throw new BlockError('EINVAL', `${tableError}Invalid argument`);
    }
  }
  const needed = bitmapTableSizeFor(s.size, e.granularityBits, s.clusterSize);
  if (needed !== e.bitmapTableSize || needed > BME_MAX_TABLE_SIZE) {
    throw new BlockError('EINVAL', `Could not read bitmap '${e.name}' from image: Invalid argument`);
  }
}

/** The bitmaps of the image, checked as QEMU checks them before it opens the image. */
export async function loadBitmapDirectory(s: Qcow2State, ext: BitmapsExtension): Promise<BitmapDirectoryEntry[]> {
  const dir = await readFor(s, ext.directoryOffset, ext.directorySize, 'Failed to read bitmap directory: ');
  const entries = parseBitmapDirectory(dir, ext.nbBitmaps, { clusterSize: s.clusterSize, virtualSize: s.size });
  for (const e of entries) if (!(e.flags & BME_FLAG_IN_USE)) await checkBitmapTable(s, e);
  return entries;
}
