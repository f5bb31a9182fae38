import {
  BlockError,
  ReqFlag,
  type Child,
  type BlockLimits,
  type BlockStatusReply,
  type CheckFix,
  type CheckResult,
  type DriverCapabilities,
  type DriverInfo,
  type IOVector,
  type PreallocMode,
  type ReopenState,
  type ReqFlags,
  type BlockDriverInstance,
  type Options,
  type SnapshotInfo,
  IOVector as IOV,
} from '@blockgraph/block-core';
import { BME_FLAG_AUTO, BME_FLAG_IN_USE, INCOMPAT_CORRUPT } from '../format/index.js';
import { flushCaches, markClean, writeCaches } from './header-io.js';
import { cacheSizes } from './options.js';
import * as rw from './rw.js';
import { copyRangeFrom, copyRangeTo } from './copy-range.js';
import { runCheck, runWriteSetup } from './setup.js';
import type { Qcow2State } from './state.js';
import { truncateImage } from './truncate.js';
import { makeEmpty } from './make-empty.js';
import { amendImage } from './amend.js';
import { changeBackingFile } from './backing-file.js';
import {
  createSnapshot,
  deleteSnapshot,
  gotoResizeFailed,
  gotoSnapshot,
  listSnapshots,
  loadSnapshotTmp,
  prepareGoto,
  type CreateSnapshotInfo,
} from './snapshot.js';
import { drained, locked as lockedOp, prepareForChange, resizeFromDriver } from './snapshot-ops.js';

/** A persistent bitmap as qemu-img info lists it. */
export interface Qcow2BitmapInfo {
  name: string;
  granularity: number;
  flags: string[];
}

/** The per-node implementation the Graph talks to; everything is delegated to the modules over Qcow2State. */
export class Qcow2Instance implements BlockDriverInstance {
  /** Bitmaps found at open (read-only opens; a read-write open makes them inconsistent, see setup.ts). */
  bitmaps: Qcow2BitmapInfo[] | null = null;

  constructor(
    readonly state: Qcow2State,
    private readonly runtimeOptions: Options,
  ) {}

  get capabilities(): Partial<DriverCapabilities> {
    const s = this.state;
    return {
      compressedWrite: !s.hasDataFile,
      discardZeroes: s.version >= 3 || !s.backing,
    };
  }

  /** qcow2_co_truncate() zeroes the grown area (zero clusters where it can) when asked. */
  readonly supportedTruncateFlags = ReqFlag.ZERO_WRITE;

  get supportedZeroFlags(): ReqFlags {
    return this.state.version >= 3 ? ReqFlag.MAY_UNMAP | ReqFlag.NO_FALLBACK : 0;
  }

  getLength(): number {
    return this.state.size;
  }

  /** blockdev-snapshot / blockdev-reopen gave the node another backing file (or none): read and COW from it. */
  backingChanged(): void {
    this.state.backing = this.state.node.backing ?? null;
  }

  refreshLimits(_merged: BlockLimits): Partial<BlockLimits> {
    const s = this.state;
    return { requestAlignment: 1, pwriteZeroesAlignment: s.g.subclusterSize, pdiscardAlignment: s.clusterSize };
  }

  preadv(offset: number, bytes: number, qiov: IOVector): Promise<void> {
    return rw.preadv(this.state, offset, bytes, qiov);
  }

  pwritev(offset: number, bytes: number, qiov: IOVector): Promise<void> {
    return rw.pwritev(this.state, offset, bytes, qiov);
  }

  pwriteZeroes(offset: number, bytes: number, flags: ReqFlags): Promise<void> {
    return rw.pwriteZeroes(this.state, offset, bytes, flags);
  }

  copyRangeFrom(_src: Child, offset: number, dst: Child, dstOffset: number, bytes: number, readFlags: ReqFlags, writeFlags: ReqFlags): Promise<void> {
    return copyRangeFrom(this.state, offset, dst, dstOffset, bytes, readFlags, writeFlags);
  }

  copyRangeTo(src: Child, srcOffset: number, _dst: Child, offset: number, bytes: number, readFlags: ReqFlags, writeFlags: ReqFlags): Promise<void> {
    return copyRangeTo(this.state, src, srcOffset, offset, bytes, readFlags, writeFlags);
  }

  /** qcow2_save_vmstate(): an ordinary write at the VM state area, past the guest disk's last L1 entry. */
  saveVmstate(qiov: IOVector, pos: number): Promise<void> {
    const s = this.state;
    return rw.pwritev(s, s.l1VmStateIndex * s.g.bytesPerL2Table + pos, qiov.size, qiov);
  }

  /** qcow2_load_vmstate(). */
  loadVmstate(qiov: IOVector, pos: number): Promise<void> {
    const s = this.state;
    return rw.preadv(s, s.l1VmStateIndex * s.g.bytesPerL2Table + pos, qiov.size, qiov);
  }

  pdiscard(offset: number, bytes: number): Promise<void> {
    return rw.pdiscard(this.state, offset, bytes);
  }

  pwritevCompressed(offset: number, bytes: number, qiov: IOVector): Promise<void> {
    return rw.pwritevCompressed(this.state, offset, bytes, qiov);
  }

  blockStatus(wantZero: boolean, offset: number, bytes: number): Promise<BlockStatusReply> {
    return rw.blockStatus(this.state, wantZero, offset, bytes);
  }

  /** qcow2_co_flush_to_os(): write dirty L2 tables and refcount blocks; the core then flushes the file. */
  async flushToOs(): Promise<void> {
    const s = this.state;
    if (s.readOnly) return;
    s.checkUsable();
    await this.locked(() => writeCaches(s));
  }

  async truncate(offset: number, exact: boolean, prealloc: PreallocMode, flags: ReqFlags): Promise<void> {
    const s = this.state;
    s.checkUsable();
    if (s.pendingWriteSetup) await runWriteSetup(s);
    await this.locked(async () => {
      await truncateImage(s, offset, exact, prealloc, flags, (off, n) => rw.pwritev(s, off, n, IOV.of(new Uint8Array(n))));
      const sizes = cacheSizes(this.runtimeOptions, s.header, s.size);
      s.options = { ...s.options, ...sizes };
      if (sizes.l2CacheEntrySize === s.l2SliceBytes) {
        await s.l2Cache.resize(sizes.l2CacheEntries);
        await s.refCache.resize(sizes.refcountCacheEntries);
      }
    });
  }

  getInfo(): DriverInfo {
    const s = this.state;
    const info: DriverInfo = { clusterSize: s.clusterSize, subclusterSize: s.g.subclusterSize, isDirty: s.isDirty };
    info.vmStateOffset = s.l1VmStateIndex * s.g.bytesPerL2Table;
    if (s.header.backingFile) info.backingFilename = s.header.backingFile;
    if (s.header.extensions.backingFormat) info.backingFormat = s.header.extensions.backingFormat;
    if (s.header.cryptMethod !== 0) info.encrypted = true;
    return info;
  }

  /** qcow2_get_specific_info(): qemu-img info's "format-specific" data. */
  getSpecificInfo(): { type: string; data: Record<string, unknown> } {
    const s = this.state;
    const h = s.header;
    const compression = h.compressionType === 1 ? 'zstd' : 'zlib';
    if (s.version === 2) {
      const data: Record<string, unknown> = { compat: '0.10', 'compression-type': compression, 'refcount-bits': s.g.refcountBits };
      if (s.encryption) data.encrypt = { ...s.encryption };
      return { type: 'qcow2', data };
    }
    const data: Record<string, unknown> = {
      compat: '1.1',
      'compression-type': compression,
      'lazy-refcounts': (h.compatibleFeatures & 1n) !== 0n,
    };
    if (this.bitmaps && this.bitmaps.length) data.bitmaps = this.bitmaps.map((b) => ({ ...b, flags: [...b.flags] }));
    data['refcount-bits'] = s.g.refcountBits;
    if (s.encryption) data.encrypt = { ...s.encryption };
    if (h.extensions.dataFile !== null) data['data-file'] = h.extensions.dataFile;
    if (s.hasDataFile) data['data-file-raw'] = s.dataFileIsRaw;
    data.corrupt = (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n;
    data['extended-l2'] = s.extendedL2;
    return { type: 'qcow2', data };
  }

  /** Allocated bytes of the image file (and the external data file). */
  async getAllocatedFileSize(): Promise<number> {
    const s = this.state;
    const size = async (n: typeof s.file.node): Promise<number> => {
      const f = n.impl.getAllocatedFileSize;
      if (!f) throw new BlockError('ENOTSUP', 'Allocated file size is not available');
      return f.call(n.impl);
    };
    let total = await size(s.file.node);
    if (s.hasDataFile && s.dataFile.node !== s.file.node) total += await size(s.dataFile.node);
    return total;
  }

  /** qcow2_has_zero_init(): a preallocated image reads as zeroes only if its data file does. */
  hasZeroInit(): boolean {
    const s = this.state;
    const preallocated = s.l1Size > 0 && (s.l1View.getUint32(0) !== 0 || s.l1View.getUint32(4) !== 0);
    if (!preallocated) return true;
    return s.dataFile.node.impl.hasZeroInit?.() ?? false;
  }

  async check(fix: CheckFix): Promise<CheckResult> {
    const s = this.state;
    return this.locked(() => runCheck(s, fix));
  }

  async reopenPrepare(state: ReopenState): Promise<void> {
    const s = this.state;
    if (state.readOnly && !s.readOnly) {
      if (s.broken) return;
      await this.locked(async () => {
        await s.l2Cache.flush();
        await s.refCache.flush();
        await markClean(s);
      });
    } else if (!state.readOnly && s.readOnly) {
      // The L1 table in memory is a snapshot's: writes through it would change the snapshot (QEMU does not check).
      if (s.snapshotLoaded) throw new BlockError('EPERM', 'qcow2: An internal snapshot is loaded; cannot be reopened read/write');
      if (s.header.incompatibleFeatures & INCOMPAT_CORRUPT && !s.checkMode) {
        throw new BlockError('EACCES', 'qcow2: Image is corrupt; cannot be opened read/write');
      }
    }
  }

  reopenCommit(state: ReopenState): void {
    if (!state.readOnly) this.state.pendingWriteSetup = true;
  }

  reopenAbort(_state: ReopenState): void {}

  // --- internal snapshots, amend, backing file (snapshot.ts, amend.ts, backing-file.ts) ---------------------

  async snapshotList(): Promise<SnapshotInfo[]> {
    return listSnapshots(this.state);
  }

  /** qcow2_snapshot_create(); the id is generated as QEMU 7.2 does (a requested one is ignored). */
  async snapshotCreate(info: CreateSnapshotInfo & { id?: string }): Promise<void> {
    const s = this.state;
    await prepareForChange(s);
    await drained(s, () => lockedOp(s, () => createSnapshot(s, info)));
  }

  /** qcow2_snapshot_goto(): by id, else by name; resizes the image to the snapshot's size first. */
  async snapshotGoto(idOrName: string): Promise<void> {
    const s = this.state;
    await prepareForChange(s);
    await drained(s, async () => {
      const { index, resizeTo } = prepareGoto(s, idOrName);
      if (resizeTo !== null) {
        try {
          await resizeFromDriver(s, (o, e, p, f) => this.truncate(o, e, p, f), resizeTo);
        } catch (e) {
          throw gotoResizeFailed(e);
        }
      }
      await lockedOp(s, () => gotoSnapshot(s, index));
    });
  }

  /** qcow2_snapshot_delete(): the entry matching `id` and/or `name` (both when both are given). */
  async snapshotDelete(id: string | undefined, name: string | undefined): Promise<void> {
    const s = this.state;
    await prepareForChange(s);
    await drained(s, () => lockedOp(s, () => deleteSnapshot(s, id, name)));
  }

  /** qcow2_snapshot_load_tmp(); block-core's snapshotLoadTmp() has checked that the node is read-only. */
  async snapshotLoadTmp(id: string | undefined, name: string | undefined): Promise<void> {
    const s = this.state;
    if (!s.readOnly) throw new BlockError('EINVAL', 'Device is not readonly');
    await drained(s, () => lockedOp(s, () => loadSnapshotTmp(s, id, name)));
  }

  /** qcow2_make_empty(): see make-empty.ts. */
  async makeEmpty(): Promise<void> {
    const s = this.state;
    await prepareForChange(s);
    await drained(s, () => lockedOp(s, () => makeEmpty(s)));
  }

  /** qemu-img amend (qcow2_amend_options); options as QCOW2_AMEND_OPTIONS, typed or as strings. */
  async amend(options: Options): Promise<void> {
    const s = this.state;
    await prepareForChange(s);
    try {
      await drained(s, () =>
        amendImage(s, options, { resize: (size) => resizeFromDriver(s, (o, e, p, f) => this.truncate(o, e, p, f), size) }, (fn) =>
          lockedOp(s, fn),
        ),
      );
    } finally {
      s.node.refreshLimits();
    }
  }

  /** bdrv_change_backing_file() for qcow2: the name and format recorded in the header. */
  async changeBackingFile(filename: string | undefined, format: string | undefined): Promise<void> {
    const s = this.state;
    await prepareForChange(s);
    await drained(s, () => lockedOp(s, () => changeBackingFile(s, filename, format)));
  }

  /** qcow2_close() → qcow2_inactivate(): write everything back and clear the dirty bit. */
  async close(): Promise<void> {
    const s = this.state;
    if (s.cleanTimer) {
      clearInterval(s.cleanTimer);
      s.cleanTimer = null;
    }
    if (s.readOnly || s.broken) return;
    await this.locked(async () => {
      await s.l2Cache.flush();
      await s.refCache.flush();
      await markClean(s);
    });
  }

  private async locked<T>(fn: () => Promise<T>): Promise<T> {
    const s = this.state;
    if (!s.lock.tryLock()) await s.lock.lock();
    try {
      return await fn();
    } finally {
      s.lock.unlock();
    }
  }
}

export function bitmapFlags(flags: number): string[] {
  const out: string[] = [];
  if (flags & BME_FLAG_IN_USE) out.push('in-use');
  if (flags & BME_FLAG_AUTO) out.push('auto');
  return out;
}

export { flushCaches };
