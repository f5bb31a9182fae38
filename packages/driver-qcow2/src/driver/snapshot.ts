import { BlockError, errnoError, isBlockError, STRERROR, type BlockErrorCode, type SnapshotInfo } from '@blockgraph/block-core';
import {
  ICOUNT_NONE,
  QCOW_MAX_L1_SIZE,
  QCOW_MAX_SNAPSHOTS,
  SNAPSHOT_EXTRA_DATA_SIZE,
  SNAPSHOT_HEADER_SIZE,
  serializeSnapshotTable,
  snapshotL1TableOffset,
  snapshotTablePatch,
  tooLargeError,
  type SnapshotEntry,
} from '../format/index.js';
import { flushCaches } from './header-io.js';
import { growL1Table } from './l1.js';
import { inactiveL2Offsets, readAt } from './metadata.js';
import { preWriteOverlapCheck } from './overlap.js';
import { allocClusters, freeClusters } from './refcount.js';
import { updateSnapshotRefcount } from './snapshot-refcount.js';
import { DiscardType, Overlap, type Qcow2State } from './state.js';
import { clusterDiscard } from './cluster.js';

/**
 * Internal snapshots (QEMU 7.2's qcow2-snapshot.c): list, create, goto (apply), delete and the read-only
 * temporary load, with QEMU's ids, lookups, on-disk ordering and error codes.
 *
 * Crash safety is QEMU's: a new snapshot's L1 copy and the refcount increments reach the disk before the new
 * snapshot table, and the table before the 12-byte header switch (nb_snapshots, snapshots_offset); a goto
 * raises the refcounts of the snapshot's clusters before the active L1 table is overwritten and lowers the old
 * ones afterwards; a delete removes the table entry first. A crash can only leak clusters.
 */

/**
 * An error QEMU reports in two parts: lines it prints itself (error_report) before the caller's message.
 * `reported` holds those lines; the CLI prints them first.
 */
export function withReports(e: BlockError, reported: string[]): BlockError {
  return Object.assign(e, { reported });
}

function align8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

const utf8 = new TextEncoder();

/** Where each entry of a serialized table starts and ends (the padding between entries is never written). */
function entryExtents(entries: readonly SnapshotEntry[]): [number, number][] {
  const out: [number, number][] = [];
  let offset = 0;
  for (const e of entries) {
    offset = align8(offset);
    const len =
      SNAPSHOT_HEADER_SIZE +
      Math.max(SNAPSHOT_EXTRA_DATA_SIZE, e.extraDataSize) +
      utf8.encode(e.id).length +
      utf8.encode(e.name).length;
    out.push([offset, offset + len]);
    offset += len;
  }
  return out;
}

/**
 * qcow2_write_snapshots(): the table of `s.snapshots` goes to newly allocated clusters, then the header
 * points at it (12 bytes at 60, synced), then the old table is freed.
 */
export async function writeSnapshots(s: Qcow2State): Promise<void> {
  const entries = s.snapshots;
  const table = serializeSnapshotTable(entries);
  const size = table.length;
  const offset = await allocClusters(s, size);
  try {
    await flushCaches(s);
    // The header does not point here yet: these clusters must really be free.
    await preWriteOverlapCheck(s, 0, offset, size, false);
    // QEMU writes entry by entry; the alignment padding between entries keeps whatever the cluster held.
    for (const [from, to] of entryExtents(entries)) await s.writeFile(offset + from, table.subarray(from, to));
    await flushCaches(s);
    const patch = snapshotTablePatch(entries.length, offset);
    await s.writeFileSync(patch.offset, patch.bytes);
  } catch (e) {
    // After a fatal corruption event (the overlap check) the image takes no more writes, as QEMU's unusable
    // node: the new clusters leak.
    if (offset > 0 && !s.broken) await freeClusters(s, offset, size, DiscardType.ALWAYS);
    throw e;
  }
  const oldOffset = s.header.snapshotsOffset;
  const oldSize = s.snapshotTableBytes;
  s.header.nbSnapshots = entries.length;
  s.header.snapshotsOffset = offset;
  s.snapshotTableBytes = size;
  await freeClusters(s, oldOffset, oldSize, DiscardType.SNAPSHOT);
}

/** Re-read the L2 offsets of the inactive L1 tables when overlap-check=all keeps them. */
async function refreshInactiveL2(s: Qcow2State): Promise<void> {
  if (s.inactiveL2 === null) return;
  s.inactiveL2 = await inactiveL2Offsets(s);
}

/** find_new_snapshot_id(): one more than the largest id read with strtoul(). */
export function newSnapshotId(entries: readonly SnapshotEntry[]): string {
  const ULONG_MAX = (1n << 64n) - 1n;
  let max = 0n;
  for (const e of entries) {
    const m = /^[ \t\n\v\f\r]*([+-]?)([0-9]+)/.exec(e.id);
    let v = 0n;
    if (m) {
      v = BigInt(m[2]!);
      if (v > ULONG_MAX) v = ULONG_MAX;
      else if (m[1] === '-') v = (ULONG_MAX + 1n - v) & ULONG_MAX;
    }
    if (v > max) max = v;
  }
  return ((max + 1n) & ULONG_MAX).toString();
}

/** find_snapshot_by_id_and_name(): both given must match; -1 when none does. */
export function findSnapshotByIdAndName(entries: readonly SnapshotEntry[], id: string | undefined, name: string | undefined): number {
  if (id !== undefined && name !== undefined) return entries.findIndex((e) => e.id === id && e.name === name);
  if (id !== undefined) return entries.findIndex((e) => e.id === id);
  if (name !== undefined) return entries.findIndex((e) => e.name === name);
  return -1;
}

/** find_snapshot_by_id_or_name(): by id first, then by name. */
export function findSnapshotByIdOrName(entries: readonly SnapshotEntry[], idOrName: string): number {
  const i = findSnapshotByIdAndName(entries, idOrName, undefined);
  return i >= 0 ? i : findSnapshotByIdAndName(entries, undefined, idOrName);
}

/**
 * qcow2_validate_table() for a snapshot's L1 table; the message QEMU reports, or null. A table QEMU accepts at
 * or beyond 2^53 (past the end of any file) is refused here, when the snapshot is used: our documented limit.
 */
export function validateSnapshotL1(s: Pick<Qcow2State, 'clusterSize'>, sn: SnapshotEntry): BlockError | null {
  if (sn.l1Size > QCOW_MAX_L1_SIZE / 8) return new BlockError('EFBIG', 'Snapshot L1 table too large');
  const INT64_MAX = (1n << 63n) - 1n;
  const offset = snapshotL1TableOffset(sn);
  if (INT64_MAX - BigInt(sn.l1Size) * 8n < offset || offset % BigInt(s.clusterSize)) {
    return new BlockError('EINVAL', 'Snapshot L1 table offset invalid');
  }
  if (sn.wide?.l1TableOffset !== undefined) {
    return tooLargeError('Snapshot L1 table offset', Number(offset >> 32n), Number(offset & 0xffffffffn));
  }
  return null;
}

function notSupportedWithDataFile(s: Qcow2State): void {
  if (s.hasDataFile) throw new BlockError('ENOTSUP', 'Internal snapshots are not supported with an external data file');
}

/** qcow2_snapshot_list(). */
export function listSnapshots(s: Qcow2State): SnapshotInfo[] {
  notSupportedWithDataFile(s);
  return s.snapshots.map((sn) => {
    const info: SnapshotInfo = {
      id: sn.id,
      name: sn.name,
      vmStateSize: sn.vmStateSize,
      dateSec: sn.dateSec,
      dateNsec: sn.dateNsec,
      vmClockNsec: sn.vmClockNsec,
    };
    if (sn.icount !== ICOUNT_NONE) info.icount = BigInt.asIntN(64, sn.icount);
    return info;
  });
}

export interface CreateSnapshotInfo {
  name: string;
  dateSec?: number;
  dateNsec?: number;
  vmClockNsec?: number | bigint;
  vmStateSize?: number;
  icount?: number | bigint;
}

/** qcow2_snapshot_create(): the id is always generated (QEMU 7.2 ignores a requested one). */
export async function createSnapshot(s: Qcow2State, info: CreateSnapshotInfo): Promise<void> {
  if (s.snapshots.length >= QCOW_MAX_SNAPSHOTS) throw new BlockError('EFBIG', 'Too many snapshots');
  notSupportedWithDataFile(s);
  const now = Date.now();
  const sn: SnapshotEntry = {
    l1TableOffset: 0,
    l1Size: s.l1Size,
    id: newSnapshotId(s.snapshots),
    name: info.name,
    dateSec: info.dateSec ?? Math.floor(now / 1000),
    dateNsec: info.dateNsec ?? (now % 1000) * 1e6,
    vmClockNsec: BigInt(info.vmClockNsec ?? 0),
    vmStateSize: info.vmStateSize ?? 0,
    diskSize: s.size,
    icount: info.icount === undefined ? 0n : BigInt.asUintN(64, BigInt(info.icount)),
    extraDataSize: SNAPSHOT_EXTRA_DATA_SIZE,
    unknownExtraData: new Uint8Array(0),
  };
  // The snapshot's L1 table: a copy of the active one (COPIED flags as they are; they mean nothing there).
  const l1Bytes = s.l1Size * 8;
  sn.l1TableOffset = await allocClusters(s, l1Bytes);
  // From here on QEMU leaks the new clusters on failure (harmless); so does this.
  await preWriteOverlapCheck(s, 0, sn.l1TableOffset, l1Bytes, false);
  await s.writeFile(sn.l1TableOffset, s.l1.slice(0, l1Bytes));
  // Every cluster the active table reaches gets one more reference, stable on disk before the table names it.
  await updateSnapshotRefcount(s, s.l1Offset, s.l1Size, 1);

  const old = s.snapshots;
  s.snapshots = [...old, sn];
  try {
    await writeSnapshots(s);
  } catch (e) {
    s.snapshots = old;
    throw e;
  }
  await refreshInactiveL2(s);
  s.metadataPreallocation = null;
  s.trace('snapshot_create', { id: sn.id, name: sn.name, l1Offset: sn.l1TableOffset });

  // The VM state is not needed in the active L1 table any more (it would only cost COW at the next snapshot).
  if (sn.vmStateSize > 0) {
    const bytes = Math.ceil(sn.vmStateSize / s.clusterSize) * s.clusterSize;
    await clusterDiscard(s, s.l1VmStateIndex * s.g.bytesPerL2Table, bytes, DiscardType.NEVER, false);
  }
}

function failedToLoad(code: BlockErrorCode, reported: string[] = []): BlockError {
  return withReports(new BlockError(code, `Failed to load snapshot: ${STRERROR[code]}`), reported);
}

/**
 * qcow2_snapshot_goto(), first half: find and validate the snapshot. Returns its index, and the disk size
 * the image must be resized to first (or null).
 */
export function prepareGoto(s: Qcow2State, idOrName: string): { index: number; resizeTo: number | null } {
  if (s.hasDataFile) throw failedToLoad('ENOTSUP');
  const index = findSnapshotByIdOrName(s.snapshots, idOrName);
  if (index < 0) throw failedToLoad('ENOENT');
  const sn = s.snapshots[index]!;
  const bad = validateSnapshotL1(s, sn);
  if (bad) throw failedToLoad(bad.code, [bad.message]);
  return { index, resizeTo: sn.diskSize !== s.size ? sn.diskSize : null };
}

/** Wrap an error of the resize step as bdrv_snapshot_goto() reports it. */
export function gotoResizeFailed(e: unknown): BlockError {
  if (!isBlockError(e)) return failedToLoad('EIO', [String((e as Error)?.message ?? e)]);
  return failedToLoad(e.code, [e.message]);
}

/** qcow2_snapshot_goto(), second half (the image has the snapshot's size). */
export async function gotoSnapshot(s: Qcow2State, index: number): Promise<void> {
  const sn = s.snapshots[index]!;
  try {
    // The active L1 table must be able to hold the snapshot's; a smaller snapshot table is padded with zeros.
    await growL1Table(s, sn.l1Size, true);
    const curBytes = s.l1Size * 8;
    const snL1 = new Uint8Array(curBytes);
    snL1.set(await readAt(s, sn.l1TableOffset, sn.l1Size * 8));

    // Raise the refcounts of everything the snapshot references before its table overwrites the active one.
    await updateSnapshotRefcount(s, sn.l1TableOffset, sn.l1Size, 1);
    await preWriteOverlapCheck(s, Overlap.ACTIVE_L1, s.l1Offset, curBytes, false);
    await s.writeFileSync(s.l1Offset, snL1);

    // Drop the references of the old active table, still in memory (QEMU relies on the same trick).
    let err: unknown = null;
    try {
      await updateSnapshotRefcount(s, s.l1Offset, s.l1Size, -1);
    } catch (e) {
      err = e;
    }
    s.l1.set(snL1);
    s.l1Changed();
    if (err !== null) throw err;

    // COPIED flags of the new active table (refcounts may have dropped to 1 above).
    await updateSnapshotRefcount(s, s.l1Offset, s.l1Size, 0);
  } catch (e) {
    // QEMU prints nothing of its own here (corruption events are reported as events): only the errno.
    throw isBlockError(e) ? failedToLoad(e.code) : e;
  } finally {
    s.metadataPreallocation = null;
  }
  s.trace('snapshot_goto', { id: sn.id, name: sn.name });
}

/**
 * qcow2_snapshot_load_tmp(): a read-only image reads through the snapshot's L1 table from now on. Only the L1
 * table changes: the L2 cache is keyed by host offset, so slices it holds stay valid, and the guest size stays
 * the active one (past the snapshot's table everything is unallocated), as in QEMU.
 */
export async function loadSnapshotTmp(s: Qcow2State, id: string | undefined, name: string | undefined): Promise<void> {
  const index = findSnapshotByIdAndName(s.snapshots, id, name);
  if (index < 0) throw new BlockError('ENOENT', "Can't find snapshot");
  const sn = s.snapshots[index]!;
  const bad = validateSnapshotL1(s, sn);
  if (bad) throw bad;
  let table: Uint8Array;
  try {
    table = await readAt(s, sn.l1TableOffset, sn.l1Size * 8);
  } catch (e) {
    throw new BlockError(isBlockError(e) ? e.code : 'EIO', 'Failed to read l1 table for snapshot', { cause: e });
  }
  s.setL1Table(table, sn.l1Size, sn.l1TableOffset);
  s.metadataPreallocation = null;
  s.snapshotLoaded = true;
  s.trace('snapshot_load_tmp', { id: sn.id, name: sn.name });
}

/** qcow2_snapshot_delete(): by id and/or name, both matching when both are given. */
export async function deleteSnapshot(s: Qcow2State, id: string | undefined, name: string | undefined): Promise<void> {
  notSupportedWithDataFile(s);
  const index = findSnapshotByIdAndName(s.snapshots, id, name);
  if (index < 0) throw new BlockError('ENOENT', "Can't find the snapshot");
  const sn = s.snapshots[index]!;
  const bad = validateSnapshotL1(s, sn);
  if (bad) throw bad;

  const old = s.snapshots;
  s.snapshots = old.filter((_, i) => i !== index);
  try {
    await writeSnapshots(s);
  } catch (e) {
    s.snapshots = old;
    throw errnoError(e, 'Failed to remove snapshot from snapshot list');
  }
  await refreshInactiveL2(s);
  s.metadataPreallocation = null;

  // The snapshot is gone from the table; failures from here on only leak clusters.
  try {
    await updateSnapshotRefcount(s, sn.l1TableOffset, sn.l1Size, -1);
  } catch (e) {
    throw errnoError(e, 'Failed to free the cluster and L1 table');
  }
  await freeClusters(s, sn.l1TableOffset, sn.l1Size * 8, DiscardType.SNAPSHOT);
  try {
    await updateSnapshotRefcount(s, s.l1Offset, s.l1Size, 0);
  } catch (e) {
    throw errnoError(e, 'Failed to update snapshot status in disk');
  }
  s.trace('snapshot_delete', { id: sn.id, name: sn.name });
}
