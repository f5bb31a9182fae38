import { BlockError } from '@blockgraph/block-core';
import { QCOW_MAX_SNAPSHOTS_SIZE, QCOW_MAX_SNAPSHOT_EXTRA_DATA } from './constants.js';
import { MAX_SAFE_HIGH_WORD, TWO_POW_32, viewOf, writeU64 } from './u64.js';

/**
 * The internal snapshot table: nb_snapshots variable-length entries starting at snapshots_offset, each aligned
 * to 8 bytes:
 *
 *   0  u64 l1_table_offset     8 u32 l1_size        12 u16 id_str_size   14 u16 name_size
 *  16  u32 date_sec           20 u32 date_nsec      24 u64 vm_clock_nsec
 *  32  u32 vm_state_size      36 u32 extra_data_size
 *  40  extra data: u64 vm_state_size_large, u64 disk_size, u64 icount (QEMU >= 5.2 writes these 24 bytes),
 *      then anything a newer writer added
 *  ..  id string, name string (no NULs), padding to 8
 *
 * Parsing follows QEMU 7.2's qcow2_do_read_snapshots() (limits and messages), serialization
 * qcow2_write_snapshots() (so a table QEMU wrote comes back byte for byte).
 */

export const SNAPSHOT_HEADER_SIZE = 40;
/** sizeof(QCowSnapshotExtraData) in QEMU 7.2. */
export const SNAPSHOT_EXTRA_DATA_SIZE = 24;
/** QEMU's "no icount recorded" value (-1 as u64), used when the extra data is too short to hold one. */
export const ICOUNT_NONE = 0xffffffffffffffffn;

/**
 * The exact values of an entry's 64-bit fields that are at or above 2^53, which only a damaged table holds (QEMU
 * opens such images: it validates a snapshot's L1 table only when the snapshot is used). The number fields then
 * hold approximations, still at or above 2^53, so comparisons with real offsets and sizes stay right.
 */
export interface WideSnapshotFields {
  l1TableOffset?: bigint;
  vmStateSize?: bigint;
  diskSize?: bigint;
}

export interface SnapshotEntry {
  /** At or above 2^53 only approximately: see `wide`. */
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  /** Guest clock in ns: a 64-bit count that can pass 2^53 (about 104 days), hence bigint. */
  vmClockNsec: bigint;
  /** VM state size: the 64-bit extra-data field when present, else the 32-bit header field. */
  vmStateSize: number;
  /** Disk size at snapshot time: from the extra data when present, else the image's size. */
  diskSize: number;
  /** Instruction count, or ICOUNT_NONE. */
  icount: bigint;
  /** extra_data_size as stored. */
  extraDataSize: number;
  /** Extra data beyond the 24 bytes QEMU knows, kept for rewrites. */
  unknownExtraData: Uint8Array;
  /** Present when a 64-bit field does not fit a number exactly. */
  wide?: WideSnapshotFields;
}

/** A u64 field as a number, and its exact value when that number cannot hold it. */
function readWideU64(view: DataView, at: number): { value: number; wide?: bigint } {
  const hi = view.getUint32(at);
  const lo = view.getUint32(at + 4);
  if (hi <= MAX_SAFE_HIGH_WORD) return { value: hi * TWO_POW_32 + lo };
  return { value: hi * TWO_POW_32 + lo, wide: view.getBigUint64(at) };
}

/** Write a u64 field: its exact value when it has one, else the number. */
function writeWideU64(view: DataView, at: number, value: number, wide: bigint | undefined): void {
  if (wide === undefined) writeU64(view, at, value);
  else view.setBigUint64(at, wide);
}

/** The exact L1 table offset of an entry. */
export function snapshotL1TableOffset(e: SnapshotEntry): bigint {
  return e.wide?.l1TableOffset ?? BigInt(e.l1TableOffset);
}

const utf8 = new TextDecoder('utf-8');
const utf8Encoder = new TextEncoder();

function cString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return utf8.decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

function align8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

function tooMuchExtraData(index: number): BlockError {
  return new BlockError('EFBIG', `Too much extra metadata in snapshot table entry ${index}`);
}

function tableTooBig(): BlockError {
  return new BlockError('EFBIG', 'Snapshot table is too big');
}

/**
 * How many bytes from snapshots_offset the table needs. When `bytes` (read from snapshots_offset) is too short
 * to tell, the result is larger than bytes.length: read at least that much (a driver should read generously,
 * e.g. double, to avoid one round trip per entry) and ask again. A file that ends early reads as zeros, as in
 * QEMU. Throws QEMU's errors for oversized entries or tables, so a hostile nb_snapshots cannot make a reader
 * read more than 64 MiB.
 */
export function snapshotTableLength(bytes: Uint8Array, nbSnapshots: number): number {
  const view = viewOf(bytes);
  let offset = 0;
  for (let i = 0; i < nbSnapshots; i++) {
    offset = align8(offset);
    if (offset + SNAPSHOT_HEADER_SIZE > bytes.length) return offset + SNAPSHOT_HEADER_SIZE;
    const idSize = view.getUint16(offset + 12);
    const nameSize = view.getUint16(offset + 14);
    const extraDataSize = view.getUint32(offset + 36);
    if (extraDataSize > QCOW_MAX_SNAPSHOT_EXTRA_DATA) throw tooMuchExtraData(i);
    offset += SNAPSHOT_HEADER_SIZE + extraDataSize + idSize + nameSize;
    if (offset > QCOW_MAX_SNAPSHOTS_SIZE) throw tableTooBig();
  }
  return offset;
}

/**
 * Parse the table. `bytes` must hold snapshotTableLength() bytes; `imageSize` is the disk size recorded for
 * entries written before QEMU stored one.
 */
export function parseSnapshotTable(bytes: Uint8Array, nbSnapshots: number, imageSize: number): SnapshotEntry[] {
  const length = snapshotTableLength(bytes, nbSnapshots);
  if (length > bytes.length) throw new BlockError('EIO', 'Failed to read snapshot table');
  const view = viewOf(bytes);
  const entries: SnapshotEntry[] = [];
  let offset = 0;
  for (let i = 0; i < nbSnapshots; i++) {
    offset = align8(offset);
    const idSize = view.getUint16(offset + 12);
    const nameSize = view.getUint16(offset + 14);
    const extraDataSize = view.getUint32(offset + 36);
    const extra = offset + SNAPSHOT_HEADER_SIZE;
    const known = Math.min(extraDataSize, SNAPSHOT_EXTRA_DATA_SIZE);
    const idAt = extra + extraDataSize;
    const l1TableOffset = readWideU64(view, offset);
    const vmStateSize = known >= 8 ? readWideU64(view, extra) : { value: view.getUint32(offset + 32) };
    const diskSize = known >= 16 ? readWideU64(view, extra + 8) : { value: imageSize };
    const wide: WideSnapshotFields = {};
    if (l1TableOffset.wide !== undefined) wide.l1TableOffset = l1TableOffset.wide;
    if (vmStateSize.wide !== undefined) wide.vmStateSize = vmStateSize.wide;
    if (diskSize.wide !== undefined) wide.diskSize = diskSize.wide;
    entries.push({
      l1TableOffset: l1TableOffset.value,
      l1Size: view.getUint32(offset + 8),
      id: cString(bytes.subarray(idAt, idAt + idSize)),
      name: cString(bytes.subarray(idAt + idSize, idAt + idSize + nameSize)),
      dateSec: view.getUint32(offset + 16),
      dateNsec: view.getUint32(offset + 20),
      vmClockNsec: view.getBigUint64(offset + 24),
      vmStateSize: vmStateSize.value,
      diskSize: diskSize.value,
      icount: known >= 24 ? view.getBigUint64(extra + 16) : ICOUNT_NONE,
      extraDataSize,
      unknownExtraData: bytes.slice(extra + known, idAt),
      ...(Object.keys(wide).length ? { wide } : {}),
    });
    offset = idAt + idSize + nameSize;
  }
  return entries;
}

/** Bytes one entry takes when QEMU writes it (without the alignment padding that may follow). */
function serializedEntryLength(e: SnapshotEntry, id: Uint8Array, name: Uint8Array): number {
  return SNAPSHOT_HEADER_SIZE + Math.max(SNAPSHOT_EXTRA_DATA_SIZE, e.extraDataSize) + id.length + name.length;
}

/**
 * Serialize the table as qcow2_write_snapshots() does: extra data of at least 24 bytes (vm_state_size_large,
 * disk_size, icount) followed by any preserved unknown extra data, the 32-bit vm_state_size zero when the size
 * does not fit, entries aligned to 8 with zero padding. The result is exactly the table length (no padding
 * after the last entry); the caller allocates clusters for it.
 */
export function serializeSnapshotTable(entries: readonly SnapshotEntry[]): Uint8Array {
  const names = entries.map((e) => {
    const id = utf8Encoder.encode(e.id);
    const name = utf8Encoder.encode(e.name);
    if (id.length > 0xffff || name.length > 0xffff) {
      throw new BlockError('EINVAL', 'Snapshot ID and name must be at most 65535 bytes');
    }
    if (e.extraDataSize > SNAPSHOT_EXTRA_DATA_SIZE + e.unknownExtraData.length) {
      throw new BlockError('EINVAL', 'Snapshot extra data size exceeds the extra data present');
    }
    return { id, name };
  });
  let total = 0;
  entries.forEach((e, i) => {
    total = align8(total) + serializedEntryLength(e, names[i]!.id, names[i]!.name);
    if (total > QCOW_MAX_SNAPSHOTS_SIZE) throw tableTooBig();
  });

  const out = new Uint8Array(total);
  const view = viewOf(out);
  let offset = 0;
  entries.forEach((e, i) => {
    const { id, name } = names[i]!;
    offset = align8(offset);
    const extraDataSize = Math.max(SNAPSHOT_EXTRA_DATA_SIZE, e.extraDataSize);
    writeWideU64(view, offset, e.l1TableOffset, e.wide?.l1TableOffset);
    view.setUint32(offset + 8, e.l1Size);
    view.setUint16(offset + 12, id.length);
    view.setUint16(offset + 14, name.length);
    view.setUint32(offset + 16, e.dateSec);
    view.setUint32(offset + 20, e.dateNsec);
    view.setBigUint64(offset + 24, e.vmClockNsec);
    // Older readers only see this field: a state too large for it is better read as "no VM state".
    view.setUint32(offset + 32, e.vmStateSize <= 0xffffffff ? e.vmStateSize : 0);
    view.setUint32(offset + 36, extraDataSize);
    const extra = offset + SNAPSHOT_HEADER_SIZE;
    writeWideU64(view, extra, e.vmStateSize, e.wide?.vmStateSize);
    writeWideU64(view, extra + 8, e.diskSize, e.wide?.diskSize);
    view.setBigUint64(extra + 16, e.icount);
    const unknownLength = extraDataSize - SNAPSHOT_EXTRA_DATA_SIZE;
    out.set(e.unknownExtraData.subarray(0, unknownLength), extra + SNAPSHOT_EXTRA_DATA_SIZE);
    const idAt = extra + extraDataSize;
    out.set(id, idAt);
    out.set(name, idAt + id.length);
    offset = idAt + id.length + name.length;
  });
  return out;
}
