import { BlockError, IOVector } from '@blockgraph/block-core';
import {
  INCOMPAT_CORRUPT,
  L1E_SIZE,
  QCOW_MAX_SNAPSHOTS_SIZE,
  hex,
  parseHeader,
  parseSnapshotTable,
  peekClusterSize,
  reftableBlockOffset,
  snapshotTableLength,
  type Qcow2Header,
} from '../format/index.js';
import type { CacheIO } from './cache.js';
import { preWriteOverlapCheck, signalCorruption } from './overlap.js';
import { Overlap, type Qcow2State } from './state.js';

/**
 * Loading the metadata every open needs: header, active L1 table, refcount table, snapshot table (for the
 * overlap checks), and the file I/O of the two metadata caches.
 */

/**
 * Read [offset, +length) of the image file; bytes past its end read as zeroes (wholly past it, without a read:
 * the offset of a damaged table may be beyond anything a request can address).
 */
export async function readAt(s: Pick<Qcow2State, 'file'>, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  if (length && offset < s.file.node.totalBytes) await s.file.preadv(offset, length, IOVector.of(buf));
  return buf;
}

export async function readHeader(
  s: Pick<Qcow2State, 'file'>,
  opts: { readWrite: boolean; check: boolean; noIO?: boolean; deferLateErrors?: boolean },
): Promise<Qcow2Header> {
  const first = await readAt(s, 0, Math.min(512, Math.max(s.file.node.totalBytes, 24)));
  const cs = peekClusterSize(first);
  const cluster0 = await readAt(s, 0, cs);
  return parseHeader(cluster0, {
    readWrite: opts.readWrite,
    check: opts.check,
    noIO: opts.noIO === true,
    deferLateErrors: opts.deferLateErrors === true,
  });
}

/** Read the active L1 table and the refcount table into memory. */
export async function loadTables(s: Qcow2State): Promise<void> {
  const h = s.header;
  const l1 = h.l1Size ? await readAt(s, h.l1TableOffset, h.l1Size * L1E_SIZE) : new Uint8Array(0);
  s.setL1Table(l1, h.l1Size, h.l1TableOffset);
  const rtBytes = h.refcountTableClusters * s.clusterSize;
  const raw = rtBytes ? await readAt(s, h.refcountTableOffset, rtBytes) : new Uint8Array(0);
  const rv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const table = new Float64Array(rtBytes / 8);
  for (let i = 0; i < table.length; i++) {
    // Entries no JS number can hold are kept as -1: only a writer ever needs them, and it reports them.
    try {
      table[i] = reftableBlockOffset(rv, i);
    } catch {
      table[i] = -1;
    }
  }
  s.setReftable(table);
  s.reftableOffset = h.refcountTableOffset;
  s.updateMaxRefcountTableIndex();
}

/** The snapshot table (for overlap checks and snapshot-aware reads of metadata); validated like QEMU. */
export async function loadSnapshots(s: Qcow2State, loadInactiveL2: boolean): Promise<void> {
  const h = s.header;
  s.snapshots = [];
  s.snapshotTableBytes = 0;
  s.inactiveL2 = null;
  // Not in check mode, as qcow2_do_open() with BDRV_O_CHECK: a broken table must reach the check, which reads
  // (and with -r all repairs) it itself. The header keeps the table's place, so nothing drops it.
  if (!h.nbSnapshots || s.checkMode) return;
  let want = Math.min(QCOW_MAX_SNAPSHOTS_SIZE, Math.max(4096, h.nbSnapshots * 128));
  let bytes = await readAt(s, h.snapshotsOffset, want);
  for (;;) {
    const need = snapshotTableLength(bytes, h.nbSnapshots);
    if (need <= bytes.length) break;
    want = Math.min(QCOW_MAX_SNAPSHOTS_SIZE + 4096, Math.max(need, want * 2));
    bytes = await readAt(s, h.snapshotsOffset, want);
  }
  s.snapshots = parseSnapshotTable(bytes, h.nbSnapshots, s.size);
  s.snapshotTableBytes = snapshotTableLength(bytes, h.nbSnapshots);
  if (loadInactiveL2) s.inactiveL2 = await inactiveL2Offsets(s);
}

/** The L2 table offsets of the snapshots' (inactive) L1 tables, for overlap-check=all. */
export async function inactiveL2Offsets(s: Qcow2State): Promise<number[]> {
  const l2s: number[] = [];
  for (const sn of s.snapshots) {
    // A table beyond 2^53 lies past the end of the file: QEMU reads zeroes there, which reference nothing.
    if (!sn.l1Size || sn.wide?.l1TableOffset !== undefined) continue;
    const l1 = await readAt(s, sn.l1TableOffset, sn.l1Size * 8);
    const v = new DataView(l1.buffer);
    for (let i = 0; i < sn.l1Size; i++) {
      const off = (v.getUint32(i * 8) & 0x00ffffff) * 4294967296 + ((v.getUint32(i * 8 + 4) & 0xfffffe00) >>> 0);
      if (off) l2s.push(off);
    }
  }
  return l2s;
}

/** The metadata caches' file I/O: tables beyond the end of the file are corruption, writes are overlap-checked. */
export function cacheIO(s: Qcow2State): CacheIO {
  return {
    async read(cache, offset, buf) {
      if (offset >= s.fileLength) {
        throw await signalCorruption(
          s,
          true,
          offset,
          buf.length,
          `${cache.name === 'L2' ? 'L2 table' : 'Refcount block'} offset ${hex(offset)} lies beyond the end of the image file`,
        );
      }
      await s.file.preadv(offset, buf.length, IOVector.of(buf));
    },
    async write(cache, offset, buf) {
      await preWriteOverlapCheck(s, cache.name === 'L2' ? Overlap.ACTIVE_L2 : Overlap.REFCOUNT_BLOCK, offset, buf.length, false);
      await s.file.pwritev(offset, buf.length, IOVector.of(buf));
    },
    flushFile: () => s.flushFile(),
  };
}

/**
 * Structural sanity a writer needs beyond QEMU's open checks: the header, the active L1 table and the
 * refcount table must not overlap (an allocator trusting such refcounts would overwrite live metadata).
 */
export async function checkStructures(s: Qcow2State): Promise<void> {
  const cs = s.clusterSize;
  const ranges: [string, number, number][] = [
    ['qcow2_header', 0, cs],
    ['active L1 table', s.l1Offset, s.l1Size * 8],
    ['refcount table', s.reftableOffset, s.reftable.length * 8],
  ];
  for (let i = 0; i < ranges.length; i++) {
    for (let j = i + 1; j < ranges.length; j++) {
      const [an, ao, al] = ranges[i]!;
      const [bn, bo, bl] = ranges[j]!;
      if (al > 0 && bl > 0 && ao < bo + bl && bo < ao + al) {
        const message = `The ${bn} overlaps with the ${an}`;
        // The corruption event says it once (the CLI prints it as QEMU's line); the open error says what to do.
        const cause = await signalCorruption(s, true, -1, -1, message);
        throw new BlockError('EIO', `${message}: the image is marked corrupt; 'check -r all' repairs it`, { cause });
      }
    }
  }
}

/** Re-read everything after the image was changed behind the caches (a repair). */
export async function reloadMetadata(s: Qcow2State): Promise<void> {
  s.l2Cache.dropAll();
  s.refCache.dropAll();
  const h = await readHeader(s, { readWrite: false, check: true });
  if (h.clusterBits !== s.clusterBits || h.version !== s.version) {
    throw new BlockError('EIO', 'qcow2: the image changed its geometry during a repair');
  }
  s.header = h;
  s.size = Math.floor(h.size / 512) * 512;
  await loadTables(s);
  await loadSnapshots(s, s.inactiveL2 !== null);
  s.freeClusterIndex = 0;
  s.freeByteOffset = 0;
  s.metadataPreallocation = null;
  if (!(h.incompatibleFeatures & INCOMPAT_CORRUPT)) {
    s.broken = null;
    s.signaledCorruption = false;
  }
}
