import { STRERROR, toBlockError, type BlockErrorCode } from '@blockgraph/block-core';
import {
  ICOUNT_NONE,
  QCOW_MAX_SNAPSHOTS,
  QCOW_MAX_SNAPSHOTS_SIZE,
  QCOW_MAX_SNAPSHOT_EXTRA_DATA,
  SNAPSHOT_EXTRA_DATA_SIZE,
  SNAPSHOT_HEADER_SIZE,
  snapshotTablePatch,
} from '../format/index.js';
import { CheckAbort, FIX_ERRORS } from './check-abort.js';
import type { CheckCounters } from './check-counters.js';
import { flushNode, refreshFileLength, type CheckState } from './check-state.js';
import { allocClusters, freeClusters } from './cluster-allocation.js';
import { readFull } from './image-io.js';
import { preWriteOverlapCheck } from './metadata-overlap.js';
import { u64, type Offset } from './u64-text.js';

/**
 * Snapshot table sanity: QEMU's qcow2_check_read_snapshot_table() (read the table that check-mode open
 * skipped, dropping what cannot be read when repairing) and qcow2_check_fix_snapshot_table() (rewrite the
 * table after the refcount check when it had to be changed, as qcow2_write_snapshots() does).
 *
 * Entries are kept exactly as read — raw id/name bytes, 64-bit fields beyond 2^53 — because a rewrite must
 * reproduce them even when the table is garbage.
 */

const INT64_MAX = (1n << 63n) - 1n;
const INT_MAX = 0x7fffffff;

const utf8 = new TextDecoder('utf-8');

/** A snapshot table entry as the check holds it (QCowSnapshot). */
export interface CheckSnapshot {
  l1TableOffset: Offset;
  l1Size: number;
  /** id and name as C strings (cut at the first NUL), raw for rewriting, decoded for messages. */
  idBytes: Uint8Array;
  nameBytes: Uint8Array;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  vmStateSize: bigint;
  diskSize: bigint;
  icount: bigint;
  /** extra_data_size as read (truncated to 1024 when too much extra data was dropped). */
  extraDataSize: number;
  unknownExtraData: Uint8Array;
}

function cBytes(bytes: Uint8Array): Uint8Array {
  const nul = bytes.indexOf(0);
  return nul < 0 ? bytes : bytes.subarray(0, nul);
}

function align8(n: bigint): bigint {
  return (n + 7n) & ~7n;
}

class SnapshotReadError extends Error {
  constructor(
    readonly code: BlockErrorCode,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

interface ReadOutcome {
  snapshots: CheckSnapshot[];
  size: number;
  nbClustersReduced: number;
  extraDataDropped: number;
}

/** qcow2_do_read_snapshots() with `repair` as in check mode. */
async function readSnapshots(st: CheckState, nb: number, tableOffset: bigint, repair: boolean): Promise<ReadOutcome> {
  const io = st.io;
  const out: ReadOutcome = { snapshots: [], size: 0, nbClustersReduced: 0, extraDataDropped: 0 };
  if (!nb) return out;
  const diskSizeDefault = BigInt(Math.floor(st.header.size / 512) * 512);
  const read = async (at: bigint, length: number) => {
    try {
      return await readFull(io, at <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(at) : at, length);
    } catch {
      throw new SnapshotReadError('EIO', 'Failed to read snapshot table: Input/output error');
    }
  };
  let offset = tableOffset;
  let tableLength = 0;
  for (let i = 0; i < nb; i++) {
    const preOffset = offset;
    tableLength = Number(align8(BigInt(tableLength)));
    offset = align8(offset);
    const h = await read(offset, SNAPSHOT_HEADER_SIZE);
    const hv = new DataView(h.buffer, h.byteOffset, h.byteLength);
    offset += BigInt(SNAPSHOT_HEADER_SIZE);
    const idSize = hv.getUint16(12);
    const nameSize = hv.getUint16(14);
    let extraDataSize = hv.getUint32(36);
    let truncateUnknown = false;
    if (extraDataSize > QCOW_MAX_SNAPSHOT_EXTRA_DATA) {
      if (!repair) {
        throw new SnapshotReadError(
          'EFBIG',
          `Too much extra metadata in snapshot table entry ${i}`,
          'You can force-remove this extra metadata with qemu-img check -r all',
        );
      }
      st.messages.push(
        `Discarding too much extra metadata in snapshot table entry ${i} ` +
          `(${extraDataSize} > ${QCOW_MAX_SNAPSHOT_EXTRA_DATA})`,
      );
      out.extraDataDropped++;
      truncateUnknown = true;
    }
    const known = Math.min(SNAPSHOT_EXTRA_DATA_SIZE, extraDataSize);
    const extra = await read(offset, SNAPSHOT_EXTRA_DATA_SIZE);
    extra.fill(0, known);
    const ev = new DataView(extra.buffer, extra.byteOffset, extra.byteLength);
    offset += BigInt(known);
    let unknownExtraData: Uint8Array = new Uint8Array(0);
    if (extraDataSize > SNAPSHOT_EXTRA_DATA_SIZE) {
      const extraDataEnd = offset + BigInt(extraDataSize - SNAPSHOT_EXTRA_DATA_SIZE);
      if (truncateUnknown) extraDataSize = QCOW_MAX_SNAPSHOT_EXTRA_DATA;
      unknownExtraData = await read(offset, extraDataSize - SNAPSHOT_EXTRA_DATA_SIZE);
      offset = extraDataEnd;
    }
    const idBytes = cBytes(await read(offset, idSize));
    offset += BigInt(idSize);
    const nameBytes = cBytes(await read(offset, nameSize));
    offset += BigInt(nameSize);

    tableLength += SNAPSHOT_HEADER_SIZE + extraDataSize + idSize + nameSize;
    if (tableLength > QCOW_MAX_SNAPSHOTS_SIZE || offset - tableOffset > BigInt(INT_MAX)) {
      if (!repair) {
        throw new SnapshotReadError(
          'EFBIG',
          'Snapshot table is too big',
          `You can force-remove all ${nb - i} overhanging snapshots with qemu-img check -r all`,
        );
      }
      st.messages.push(`Discarding ${nb - i} overhanging snapshots (snapshot table is too big)`);
      out.nbClustersReduced += nb - i;
      offset = preOffset;
      break;
    }
    out.snapshots.push({
      l1TableOffset: u64(hv.getUint32(0), hv.getUint32(4)),
      l1Size: hv.getUint32(8),
      idBytes,
      nameBytes,
      id: utf8.decode(idBytes),
      name: utf8.decode(nameBytes),
      dateSec: hv.getUint32(16),
      dateNsec: hv.getUint32(20),
      vmClockNsec: hv.getBigUint64(24),
      vmStateSize: extraDataSize >= 8 ? ev.getBigUint64(0) : BigInt(hv.getUint32(32)),
      diskSize: extraDataSize >= 16 ? ev.getBigUint64(8) : diskSizeDefault,
      icount: extraDataSize >= 24 ? ev.getBigUint64(16) : ICOUNT_NONE,
      extraDataSize,
      unknownExtraData,
    });
  }
  out.size = Number(offset - tableOffset);
  return out;
}

/** qcow2_check_read_snapshot_table(). Throws CheckAbort when the table cannot be read at all. */
export async function checkReadSnapshotTable(st: CheckState, res: CheckCounters, fix: number): Promise<void> {
  const ptr = await readFull(st.io, 60, 12);
  const pv = new DataView(ptr.buffer, ptr.byteOffset, ptr.byteLength);
  let nb = pv.getUint32(0);
  const offset = u64(pv.getUint32(4), pv.getUint32(8));
  st.snapshotsOffset = offset;
  let nbClustersReduced = 0;

  if (nb > QCOW_MAX_SNAPSHOTS && fix & FIX_ERRORS) {
    st.messages.push(`Discarding ${nb - QCOW_MAX_SNAPSHOTS} overhanging snapshots`);
    nbClustersReduced += nb - QCOW_MAX_SNAPSHOTS;
    nb = QCOW_MAX_SNAPSHOTS;
  }

  // qcow2_validate_table(offset, nb, sizeof(QCowSnapshotHeader), ..., "snapshot table")
  let invalid: [BlockErrorCode, string] | null = null;
  if (nb > QCOW_MAX_SNAPSHOTS) {
    invalid = ['EFBIG', 'snapshot table too large'];
  } else if (
    INT64_MAX - BigInt(nb * SNAPSHOT_HEADER_SIZE) < BigInt(offset) ||
    BigInt(offset) % BigInt(st.clusterSize) !== 0n
  ) {
    invalid = ['EINVAL', 'snapshot table offset invalid'];
  }
  if (invalid) {
    res.checkErrors++;
    st.messages.push(`qemu-img: ERROR ${invalid[1]}`);
    if (nb > QCOW_MAX_SNAPSHOTS) {
      st.messages.push(
        `You can force-remove all ${nb - QCOW_MAX_SNAPSHOTS} overhanging snapshots with qemu-img check -r all`,
      );
    }
    st.snapshotsOffset = 0;
    throw new CheckAbort(invalid[0]);
  }

  let read: ReadOutcome;
  try {
    read = await readSnapshots(st, nb, BigInt(offset), (fix & FIX_ERRORS) !== 0);
  } catch (e) {
    if (!(e instanceof SnapshotReadError)) throw e;
    res.checkErrors++;
    st.messages.push(`qemu-img: ERROR failed to read the snapshot table: ${e.message}`);
    if (e.hint) st.messages.push(e.hint);
    st.snapshotsOffset = 0;
    throw new CheckAbort(e.code);
  }
  nbClustersReduced += read.nbClustersReduced;
  st.snapshots = read.snapshots;
  st.snapshotsSize = read.size;
  res.corruptions += nbClustersReduced + read.extraDataDropped;

  if (nbClustersReduced) {
    // Update the count in the header now (the refcount check relies on it); this leaks clusters, which
    // the refcount check then repairs.
    const count = new Uint8Array(4);
    new DataView(count.buffer).setUint32(0, st.snapshots.length);
    await st.io.writeAt(60, count);
    await st.io.flush();
    st.header.nbSnapshots = st.snapshots.length;
    res.corruptionsFixed += nbClustersReduced;
    res.corruptions -= nbClustersReduced;
  }

  // All of a v3 image's snapshot entries need at least 16 bytes of extra data.
  if (st.header.version >= 3) {
    st.snapshots.forEach((sn, i) => {
      if (sn.extraDataSize < 16) {
        res.corruptions++;
        st.messages.push(`${fix & FIX_ERRORS ? 'Repairing' : 'ERROR'} snapshot table entry ${i} is incomplete`);
      }
    });
  }
}

/**
 * The table qcow2_write_snapshots() writes for the in-memory list: entries aligned to 8, at least 24 bytes
 * of extra data (vm_state_size_large, disk_size, icount) plus the preserved unknown extra data, the 32-bit
 * VM state size zeroed when it does not fit.
 */
function serializeSnapshots(snapshots: readonly CheckSnapshot[]): Uint8Array {
  let total = 0;
  for (const sn of snapshots) {
    total = Math.ceil(total / 8) * 8;
    total += SNAPSHOT_HEADER_SIZE + Math.max(SNAPSHOT_EXTRA_DATA_SIZE, sn.extraDataSize);
    total += sn.idBytes.length + sn.nameBytes.length;
    if (total > QCOW_MAX_SNAPSHOTS_SIZE) throw new CheckAbort('EFBIG');
  }
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const sn of snapshots) {
    at = Math.ceil(at / 8) * 8;
    const extraDataSize = Math.max(SNAPSHOT_EXTRA_DATA_SIZE, sn.extraDataSize);
    view.setBigUint64(at, BigInt(sn.l1TableOffset));
    view.setUint32(at + 8, sn.l1Size);
    view.setUint16(at + 12, sn.idBytes.length);
    view.setUint16(at + 14, sn.nameBytes.length);
    view.setUint32(at + 16, sn.dateSec);
    view.setUint32(at + 20, sn.dateNsec);
    view.setBigUint64(at + 24, sn.vmClockNsec);
    view.setUint32(at + 32, sn.vmStateSize <= 0xffffffffn ? Number(sn.vmStateSize) : 0);
    view.setUint32(at + 36, extraDataSize);
    at += SNAPSHOT_HEADER_SIZE;
    view.setBigUint64(at, sn.vmStateSize);
    view.setBigUint64(at + 8, sn.diskSize);
    view.setBigUint64(at + 16, sn.icount);
    at += SNAPSHOT_EXTRA_DATA_SIZE;
    if (sn.extraDataSize > SNAPSHOT_EXTRA_DATA_SIZE) {
      out.set(sn.unknownExtraData.subarray(0, sn.extraDataSize - SNAPSHOT_EXTRA_DATA_SIZE), at);
      at += sn.extraDataSize - SNAPSHOT_EXTRA_DATA_SIZE;
    }
    out.set(sn.idBytes, at);
    at += sn.idBytes.length;
    out.set(sn.nameBytes, at);
    at += sn.nameBytes.length;
  }
  return out;
}

/** qcow2_write_snapshots(): write the in-memory list to newly allocated clusters and switch to it. */
async function writeSnapshots(st: CheckState): Promise<void> {
  const bytes = serializeSnapshots(st.snapshots);
  const newOffset = await allocClusters(st, bytes.length);
  await flushNode(st);
  await preWriteOverlapCheck(st, 0, newOffset, bytes.length);
  if (bytes.length) await st.io.writeAt(newOffset, bytes);
  // The new table and its refcounts must be stable before the header points at it.
  await flushNode(st);
  const patch = snapshotTablePatch(st.snapshots.length, newOffset);
  await st.io.writeAt(patch.offset, patch.bytes);
  await st.io.flush();
  const oldOffset = st.snapshotsOffset;
  const oldSize = st.snapshotsSize;
  st.header.nbSnapshots = st.snapshots.length;
  st.header.snapshotsOffset = newOffset;
  st.snapshotsOffset = newOffset;
  st.snapshotsSize = bytes.length;
  await freeClusters(st, oldOffset, oldSize);
  await refreshFileLength(st);
}

/** qcow2_check_fix_snapshot_table(): with -r all, rewrite a table that had to be changed. */
export async function checkFixSnapshotTable(st: CheckState, res: CheckCounters, fix: number): Promise<void> {
  if (res.corruptions && fix & FIX_ERRORS) {
    try {
      await writeSnapshots(st);
    } catch (e) {
      res.checkErrors++;
      st.messages.push(`ERROR failed to update snapshot table: ${STRERROR[toBlockError(e).code]}`);
      throw e instanceof CheckAbort ? e : new CheckAbort('EIO');
    }
    res.corruptionsFixed += res.corruptions;
    res.corruptions = 0;
  }
}
