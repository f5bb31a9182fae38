/**
 * The `file` protocol driver (QEMU's block/file-posix.c for regular files), Node only.
 *
 * Data path: positional reads and writes with the callback fs API straight from the request's buffers
 * (see fs-io.ts). Flush is fdatasync. With the optional native helper (native.ts) the driver also knows
 * holes (SEEK_DATA/SEEK_HOLE block status), punches them (discard, zero writes with MAY_UNMAP), zeroes
 * ranges with FALLOC_FL_ZERO_RANGE, preallocates with fallocate and takes QEMU's image locks, so that
 * QEMU tools and blockgraph refuse to corrupt each other's images. Without the helper every range is
 * data, zero writes become zero-buffer writes (the core's fallback), discards are dropped and there are no
 * locks; the node's capabilities say so.
 *
 * cache.direct=on opens the file with O_DIRECT: the request alignment becomes what the file system needs
 * (probed like QEMU's raw_probe_alignment(), 512 or 4096), and buffers not aligned in memory go through
 * aligned bounce buffers (direct-io.ts; aligned memory comes from WebAssembly.Memory, see aligned.ts).
 */
import * as fs from 'node:fs';
import {
  type DriverInfo,
  BlockError,
  BlockStatus,
  defineBlockDriver,
  isBlockError,
  ReqFlag,
  type BlockDriver,
  type BlockDriverInstance,
  type BlockLimits,
  type BlockNode,
  type Child,
  type Graph,
  type BlockStatusReply,
  type DriverCapabilities,
  type IOVector,
  type Options,
  type PreallocMode,
  type ReopenState,
  type ReqFlags,
} from '@blockgraph/block-core';
import { CREATE_PERM, CREATE_SHARED, ImageLock, resolveLocking, type LockingMode } from './file-lock.js';
import {
  fdatasync,
  fstat,
  fsync,
  ftruncate,
  ioError,
  openFd,
  preadFull,
  preadvFull,
  pwriteFull,
  pwritevFull,
  strerror,
  errnoName,
} from './fs-io.js';
import { loadNative, type NativeHelper } from './native.js';
import { WritebackAhead } from './writeback-ahead.js';
import {
  BouncePool,
  bouncedPreadv,
  bufferedBounceNeeded,
  DIRECT_MAX_TRANSFER,
  directPreadv,
  directPwritev,
  probeDirectAlignment,
} from './direct-io.js';
import { rawDrivers } from '../index.js';

export * from '../index.js';
export { loadNative, nativeLoadError, setNativeDisabled, NATIVE_DISABLE_ENV, type NativeHelper } from './native.js';
export { ImageLock, ImageLockError, resolveLocking, type LockingMode } from './file-lock.js';
export { DIRECT_MAX_TRANSFER } from './direct-io.js';
/** glibc's strerror() text for a Node fs (or native helper) error: what QEMU prints for the same failure. */
export { strerror as hostStrerror } from './fs-io.js';

/**
 * Largest single read or write: Linux moves at most 0x7ffff000 bytes per read/write system call
 * (MAX_RW_COUNT) and Node's fs.read takes at most 2^31-1; the core splits bigger requests.
 */
export const FILE_MAX_TRANSFER = 0x7ffff000;

/** QEMU's MAX_BLOCKSIZE: allocate_first_block() writes up to this many zero bytes at offset 0. */
const MAX_BLOCKSIZE = 4096;
/** Zero buffer size for preallocation=full and the no-helper falloc emulation. */
const ZERO_CHUNK = 1 << 20;

const O_RDONLY = fs.constants.O_RDONLY;
const O_RDWR = fs.constants.O_RDWR;
const O_CREAT = fs.constants.O_CREAT;
const O_DIRECT = fs.constants.O_DIRECT ?? 0;

/** cache.direct=on: the alignment O_DIRECT needs and the bounce buffers for unaligned memory. */
interface DirectIo {
  align: number;
  pool: BouncePool;
}

/** Capabilities with the native helper; `noHelperCapabilities` is what a node has without it. */
const FILE_CAPABILITIES: DriverCapabilities = {
  write: true,
  storesData: true,
  zeroWrite: true,
  discard: true,
  discardZeroes: true,
  blockStatus: true,
  flush: true,
  resize: true,
  shrink: true,
  growOnWrite: true,
  backing: false,
  reopen: true,
  create: true,
  check: false,
  snapshots: false,
  compressedWrite: false,
};

const NO_HELPER_CAPABILITIES: Partial<DriverCapabilities> = {
  zeroWrite: false,
  discard: false,
  discardZeroes: false,
  blockStatus: false,
};

const WITH_HELPER_CAPABILITIES: Partial<DriverCapabilities> = {
  zeroWrite: true,
  discard: true,
  discardZeroes: true,
  blockStatus: true,
};

interface PendingReopen {
  fd: number;
  readOnly: boolean;
  /** setPerm() switched the node to `fd`; `oldFd` is left for reopenCommit() to close. */
  adopted: boolean;
  oldFd: number;
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // a close error after a failed open or an abort has nothing left to report to
  }
}

/** Reads up to this size try preadv2(RWF_NOWAIT) on the event loop's thread first. */
const NOWAIT_MAX_BYTES = 128 * 1024;

/** An open regular file, without the native helper: plain reads, writes, fdatasync, truncate. */
class FileInstance implements BlockDriverInstance {
  fd: number;
  readonly filename: string;
  readOnly: boolean;
  readonly capabilities: Partial<DriverCapabilities> = NO_HELPER_CAPABILITIES;
  /** A regular file grows by zeroes (file-posix declares this for S_ISREG; nothing else opens here). */
  readonly supportedTruncateFlags = ReqFlag.ZERO_WRITE;
  lock: ImageLock | null = null;
  /** errno text of a failed fdatasync: the page cache may now be inconsistent, every later flush fails. */
  pageCacheInconsistent: unknown = null;
  pendingReopen: PendingReopen | null = null;
  /** Set with cache.direct=on (the fd has O_DIRECT). */
  direct: DirectIo | null = null;
  /** Small reads try the page cache on this thread first (preadv2 RWF_NOWAIT) before the thread pool. */
  private noWait: boolean;
  /**
   * Buffered writes go through the helper's queue for this file (1.6+) rather than libuv's pool: the kernel copies
   * writes to one file into the page cache one at a time anyway (see pwritevQueued in the helper).
   */
  private readonly writeQueue: NativeHelper['pwritevQueued'] | null;
  /** The writeback-ahead option at work (buffered I/O with the helper only), else null. */
  writebackAhead: WritebackAhead | null = null;

  constructor(
    fd: number,
    filename: string,
    readOnly: boolean,
    readonly node: BlockNode,
    readonly native: NativeHelper | null,
  ) {
    this.fd = fd;
    this.filename = filename;
    this.readOnly = readOnly;
    this.noWait = typeof native?.preadNoWait === 'function';
    this.writeQueue = native?.pwritevQueued?.bind(native) ?? null;
  }

  getLength(): number {
    return fs.fstatSync(this.fd).size;
  }

  refreshLimits(): Partial<BlockLimits> {
    if (this.direct) return { requestAlignment: this.direct.align, maxTransfer: DIRECT_MAX_TRANSFER };
    return { requestAlignment: 1, maxTransfer: FILE_MAX_TRANSFER };
  }

  preadv(offset: number, bytes: number, qiov: IOVector): Promise<void> {
    if (this.direct) return directPreadv(this.fd, offset, bytes, qiov, this.direct.align, this.direct.pool);
    const iov = qiov.iov;
    // A page-cache hit costs microseconds here against tens for a thread-pool round trip. Larger reads stay
    // in the pool, where copies run in parallel without holding up the event loop.
    if (this.noWait && iov.length === 1 && bytes <= NOWAIT_MAX_BYTES) {
      const n = this.native!.preadNoWait!(this.fd, iov[0]!, offset);
      if (n === bytes) return Promise.resolve();
      if (n === -2) this.noWait = false;
    }
    // Big reads into memory we do not know to be aligned (a plain `new Uint8Array()` of this size sits 16 bytes
    // past a page boundary) go through an aligned bounce buffer: see bufferedBounceNeeded().
    if (bytes > NOWAIT_MAX_BYTES && bufferedBounceNeeded(iov)) return bouncedPreadv(this.fd, iov, bytes, offset);
    return iov.length === 1 ? preadFull(this.fd, iov[0]!, offset) : preadvFull(this.fd, iov, bytes, offset);
  }

  pwritev(offset: number, bytes: number, qiov: IOVector): Promise<void> {
    if (this.direct) return directPwritev(this.fd, offset, bytes, qiov, this.direct.align, this.direct.pool);
    const iov = qiov.iov;
    const written = this.writeQueue
      ? this.writeQueue(this.fd, iov, offset).catch((e: unknown) => {
          throw ioError(e);
        })
      : iov.length === 1
        ? pwriteFull(this.fd, iov[0]!, offset)
        : pwritevFull(this.fd, iov, bytes, offset);
    const ahead = this.writebackAhead;
    return ahead ? written.then(() => ahead.written(offset, bytes)) : written;
  }

  /** raw_co_copy_range_from(): the bytes are in this file; the destination side takes the range from here. */
  copyRangeFrom(src: Child, offset: number, dst: Child, dstOffset: number, bytes: number, readFlags: ReqFlags, writeFlags: ReqFlags): Promise<void> {
    return dst.copyRangeTo(src, offset, dstOffset, bytes, readFlags, writeFlags);
  }

  /** raw_co_copy_range_to(): from one file to another in the kernel (copy_file_range), with the helper (1.7+). */
  async copyRangeTo(src: Child, srcOffset: number, _dst: Child, offset: number, bytes: number): Promise<void> {
    const from = src.node.impl;
    if (!(from instanceof FileInstance)) {
      throw new BlockError('ENOTSUP', `Copy offloading into file '${this.filename}' needs a file as its source`);
    }
    if (!this.native?.copyFileRangeAsync) {
      throw new BlockError('ENOTSUP', 'Copy offloading needs the native helper (version 1.7 or later)');
    }
    try {
      await this.native.copyFileRangeAsync(from.fd, srcOffset, this.fd, offset, bytes);
    } catch (e) {
      throw ioError(e);
    }
    this.writebackAhead?.written(offset, bytes);
  }

  /** Access mode and cache flags for (re)opening this file. */
  openFlags(readOnly: boolean): number {
    return (readOnly ? O_RDONLY : O_RDWR) | (this.direct ? O_DIRECT : 0);
  }

  /** handle_aiocb_flush(): fdatasync; after a failure every later flush fails too. */
  async flushToDisk(): Promise<void> {
    if (this.pageCacheInconsistent) throw ioError(this.pageCacheInconsistent);
    try {
      // With the helper (1.3+) the flush waits on a thread of its own, leaving the pool's threads to data I/O.
      await (this.native?.fdatasyncAsync ? this.native.fdatasyncAsync(this.fd) : fdatasync(this.fd));
    } catch (e) {
      this.pageCacheInconsistent = e;
      throw ioError(e);
    }
  }

  async truncate(offset: number, _exact: boolean, prealloc: PreallocMode, _flags: ReqFlags): Promise<void> {
    if (!this.direct) return regularTruncate(this.fd, offset, prealloc, this.native);
    // Preallocation writes zeroes from unaligned buffers at unaligned offsets: use a buffered fd for it.
    let fd: number;
    try {
      fd = await openFd(this.filename, O_RDWR);
    } catch (e) {
      throw ioError(e, `Could not open '${this.filename}'`);
    }
    try {
      await regularTruncate(fd, offset, prealloc, this.native);
    } finally {
      closeQuietly(fd);
    }
  }

  /** A plain file has no cluster size and is never dirty (QEMU answers with a zeroed BlockDriverInfo). */
  getInfo(): DriverInfo {
    return {};
  }

  async getAllocatedFileSize(): Promise<number> {
    try {
      return (await fstat(this.fd)).blocks * 512;
    } catch (e) {
      throw ioError(e);
    }
  }

  /** raw_co_delete_file(): unlink the file (only regular files, as QEMU checks). */
  async deleteFile(): Promise<void> {
    try {
      if (!(await fstat(this.fd)).isFile()) throw new BlockError('ENOTSUP', 'Only regular files can be deleted');
      await fs.promises.unlink(this.filename);
    } catch (e) {
      throw isBlockError(e) ? e : ioError(e, `Could not delete '${this.filename}'`);
    }
  }

  /** A new regular file reads as zeroes. */
  hasZeroInit(): boolean {
    return true;
  }

  getSpecificInfo(): { type: string; data: Record<string, unknown> } | undefined {
    return undefined;
  }

  // --- permissions: QEMU's raw_check_perm / raw_set_perm / raw_abort_perm_update --------------------------

  checkPerm(perm: number, shared: number): void {
    const lock = this.lock;
    if (!lock) return;
    if (lock.preparing) lock.abort();
    const reopen = this.pendingReopen;
    lock.prepare(perm, shared, reopen && !reopen.adopted ? reopen.fd : undefined);
  }

  setPerm(perm: number, shared: number): void {
    const lock = this.lock;
    if (lock) {
      try {
        if (lock.preparing) lock.commit();
        else lock.apply(perm, shared);
      } catch (e) {
        this.warn(e);
      }
    }
    const reopen = this.pendingReopen;
    if (reopen && !reopen.adopted) this.adoptReopenFd(reopen);
  }

  abortPermUpdate(): void {
    this.lock?.abort();
  }

  /**
   * QEMU's warn_report_err() for what "cannot fail" and failed anyway (moving the lock bytes in a commit or an
   * abort): the node stays usable, the graph's WARNING event tells the user.
   */
  private warn(e: unknown): void {
    this.node.graph.warn(this.node, e instanceof Error ? e.message : String(e));
  }

  private adoptReopenFd(reopen: PendingReopen): void {
    reopen.oldFd = this.fd;
    reopen.adopted = true;
    this.fd = reopen.fd;
    this.readOnly = reopen.readOnly;
  }

  // --- reopen: a new fd with the new access mode; the locks move to it --------------------------------------

  async reopenPrepare(state: ReopenState): Promise<void> {
    if (this.pendingReopen) throw new BlockError('EBUSY', `Reopen of '${this.filename}' already in progress`);
    if (state.readOnly === this.readOnly) return;
    let fd: number;
    try {
      fd = await openFd(this.filename, this.openFlags(state.readOnly));
    } catch (e) {
      throw ioError(e, `Could not reopen file`);
    }
    this.pendingReopen = { fd, readOnly: state.readOnly, adopted: false, oldFd: -1 };
  }

  reopenCommit(_state: ReopenState): void {
    const reopen = this.pendingReopen;
    if (!reopen) return;
    this.pendingReopen = null;
    if (!reopen.adopted) {
      // No permission update ran for this node: move the committed locks over ourselves.
      const lock = this.lock;
      if (lock) {
        try {
          lock.prepare(lock.perm, lock.shared, reopen.fd);
          lock.commit();
        } catch (e) {
          this.warn(e);
        }
      }
      this.adoptReopenFd(reopen);
    }
    // A writeback kick may still be using the old descriptor: close it when the kick is done.
    const oldFd = reopen.oldFd;
    if (this.writebackAhead) void this.writebackAhead.settled().then(() => closeQuietly(oldFd));
    else closeQuietly(oldFd);
  }

  reopenAbort(_state: ReopenState): void {
    const reopen = this.pendingReopen;
    if (!reopen) return;
    this.pendingReopen = null;
    if (reopen.adopted) {
      // Cannot happen with block-core's order (set_perm only after every prepare succeeded), but be safe.
      this.fd = reopen.oldFd;
      this.readOnly = !reopen.readOnly;
      if (this.lock) {
        const lock = this.lock;
        try {
          lock.prepare(lock.perm, lock.shared, reopen.oldFd);
          lock.commit();
        } catch (e) {
          this.warn(e);
        }
      }
    }
    closeQuietly(reopen.fd);
  }

  async close(): Promise<void> {
    if (this.pendingReopen) {
      closeQuietly(this.pendingReopen.adopted ? this.pendingReopen.oldFd : this.pendingReopen.fd);
      this.pendingReopen = null;
    }
    this.lock = null;
    await this.writebackAhead?.settled();
    if (this.fd >= 0) {
      const fd = this.fd;
      this.fd = -1;
      await new Promise<void>((resolve, reject) => fs.close(fd, (err) => (err ? reject(ioError(err)) : resolve())));
    }
  }
}

/** With the native helper: holes, hole punching, zero ranges. */
class NativeFileInstance extends FileInstance {
  override readonly capabilities: Partial<DriverCapabilities> = WITH_HELPER_CAPABILITIES;
  readonly supportedZeroFlags = ReqFlag.MAY_UNMAP | ReqFlag.NO_FALLBACK;
  /** QEMU's has_discard / has_write_zeroes / has_fallocate: cleared when the file system says ENOTSUP. */
  hasDiscard = true;
  hasWriteZeroes = true;
  hasFallocate = true;

  /** fallocate(2) on the thread pool when the helper has it (it may wait for the file system). */
  private async fallocate(mode: number, offset: number, bytes: number): Promise<void> {
    const native = this.native!;
    if (native.fallocateAsync) await native.fallocateAsync(this.fd, mode, offset, bytes);
    else native.fallocate(this.fd, mode, offset, bytes);
  }

  /** raw_co_block_status() with find_allocation(). */
  blockStatus(wantZero: boolean, offset: number, bytes: number): BlockStatusReply {
    const node = this.node;
    if (!wantZero) return { status: BlockStatus.DATA | BlockStatus.OFFSET_VALID, pnum: bytes, map: offset, file: node };
    const native = this.native!;
    let status: number;
    let pnum = bytes;
    let data: number;
    try {
      data = native.seekData(this.fd, offset);
    } catch {
      // No information: pretend there are no holes.
      return { status: BlockStatus.DATA | BlockStatus.OFFSET_VALID, pnum: bytes, map: offset, file: node };
    }
    if (data < 0) {
      // ENXIO: a trailing hole, or beyond EOF (the file shrank behind our back).
      status = BlockStatus.ZERO;
    } else if (data > offset) {
      status = BlockStatus.ZERO;
      pnum = data - offset;
    } else {
      let hole: number;
      try {
        hole = native.seekHole(this.fd, offset);
      } catch {
        hole = -2;
      }
      if (hole === -1) {
        status = BlockStatus.ZERO;
      } else if (hole > offset) {
        status = BlockStatus.DATA;
        pnum = hole - offset;
      } else {
        // A hole dug between the two seeks, or no information.
        status = BlockStatus.DATA;
      }
    }
    return { status: status | BlockStatus.OFFSET_VALID, pnum, map: offset, file: node };
  }

  /** raw_co_pdiscard(): punch a hole, keep the size. */
  async pdiscard(offset: number, bytes: number): Promise<void> {
    if (!this.hasDiscard) throw new BlockError('ENOTSUP', 'Discard is not supported by the file system');
    const native = this.native!;
    try {
      await this.fallocate(native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, offset, bytes);
    } catch (e) {
      const err = ioError(e);
      if (err.code === 'ENOTSUP') this.hasDiscard = false;
      throw err;
    }
  }

  /**
   * raw_co_pwrite_zeroes(): MAY_UNMAP punches a hole (handle_aiocb_write_zeroes_unmap), otherwise
   * FALLOC_FL_ZERO_RANGE, then punch + allocate, then allocation past EOF (handle_aiocb_write_zeroes);
   * ENOTSUP lets the core write zero buffers. Unlike QEMU, a zero write that ends past EOF always leaves
   * the file that long (a punched hole keeps the size, so the file is extended afterwards).
   */
  async pwriteZeroes(offset: number, bytes: number, flags: ReqFlags): Promise<void> {
    const native = this.native!;
    const end = offset + bytes;
    if (flags & ReqFlag.MAY_UNMAP) {
      let punched = false;
      try {
        await this.fallocate(native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, offset, bytes);
        punched = true;
      } catch (e) {
        const code = errnoName(e);
        if (code !== 'EOPNOTSUPP' && code !== 'ENOTSUP' && code !== 'EINVAL' && code !== 'EBUSY' && code !== 'ENOSYS') {
          throw ioError(e);
        }
      }
      if (punched) {
        if (end > this.node.totalBytes) await this.extendTo(end, true);
        return;
      }
    }
    if (this.hasWriteZeroes) {
      try {
        // Without KEEP_SIZE: a range past EOF extends the file.
        await this.fallocate(native.FALLOC_FL_ZERO_RANGE, offset, bytes);
        return;
      } catch (e) {
        const err = ioError(e);
        if (err.code === 'ENOTSUP') this.hasWriteZeroes = false;
        else if (err.code !== 'EINVAL') throw err;
      }
    }
    if (this.hasDiscard && this.hasFallocate) {
      let punched = false;
      try {
        await this.fallocate(native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, offset, bytes);
        punched = true;
      } catch (e) {
        const err = ioError(e);
        if (err.code === 'ENOTSUP') this.hasDiscard = false;
        else if (err.code !== 'EINVAL') throw err;
      }
      if (punched) {
        try {
          await this.fallocate(0, offset, bytes);
          return;
        } catch (e) {
          const err = ioError(e);
          if (err.code !== 'ENOTSUP') throw err;
          this.hasFallocate = false;
          // The range reads as zeroes already; only the size may be missing.
          if (end > this.node.totalBytes) await this.extendTo(end, false);
          return;
        }
      }
    }
    if (this.hasFallocate && offset >= this.node.totalBytes) {
      try {
        await this.fallocate(0, offset, bytes);
        return;
      } catch (e) {
        const err = ioError(e);
        if (err.code !== 'ENOTSUP') throw err;
        this.hasFallocate = false;
      }
    }
    throw new BlockError('ENOTSUP', 'Efficient zero writes are not supported by the file system');
  }

  /**
   * Make the file at least `end` bytes long without ever shrinking it (writes past EOF may be in flight,
   * so no ftruncate): allocate the last byte, and with `sparse` punch that block out again.
   */
  private async extendTo(end: number, sparse: boolean): Promise<void> {
    const native = this.native!;
    try {
      await this.fallocate(0, end - 1, 1);
    } catch (e) {
      throw ioError(e, 'Could not extend the file');
    }
    if (sparse) {
      const start = Math.max(0, end - 1 - ((end - 1) % MAX_BLOCKSIZE));
      try {
        await this.fallocate(native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, start, end - start);
      } catch {
        // the block stays allocated, reading as zeroes: still correct
      }
    }
  }
}

/** Write zeroes over [from, to) with plain writes (preallocation=full, falloc without fallocate). */
async function writeZeroes(fd: number, from: number, to: number): Promise<void> {
  const zeroes = new Uint8Array(Math.min(ZERO_CHUNK, Math.max(0, to - from)));
  for (let pos = from; pos < to; ) {
    const n = Math.min(zeroes.byteLength, to - pos);
    await pwriteFull(fd, n === zeroes.byteLength ? zeroes : zeroes.subarray(0, n), pos);
    pos += n;
  }
}

/** allocate_first_block(): helps O_DIRECT alignment probing; qemu-img map shows it as data. */
async function allocateFirstBlock(fd: number, size: number): Promise<void> {
  const n = Math.min(size < MAX_BLOCKSIZE ? 512 : MAX_BLOCKSIZE, size);
  try {
    await pwriteFull(fd, new Uint8Array(n), 0);
  } catch {
    // an optimisation only
  }
}

/** handle_aiocb_truncate(): resize a regular file to exactly `offset`, filling growth as `prealloc` says. */
export async function regularTruncate(fd: number, offset: number, prealloc: PreallocMode, native: NativeHelper | null): Promise<void> {
  let current: number;
  try {
    current = (await fstat(fd)).size;
  } catch (e) {
    throw ioError(e, 'Could not stat file');
  }
  if (current > offset && prealloc !== 'off') {
    throw new BlockError('ENOTSUP', 'Cannot use preallocation for shrinking files');
  }
  const restore = async (e: BlockError): Promise<never> => {
    try {
      await ftruncate(fd, current);
    } catch (e2) {
      process.emitWarning(`Failed to restore old file length: ${strerror(e2)}`);
    }
    throw e;
  };
  switch (prealloc) {
    case 'falloc':
      if (offset === current) return;
      try {
        if (native?.fallocateAsync) await native.fallocateAsync(fd, 0, current, offset - current);
        else if (native) native.fallocate(fd, 0, current, offset - current);
        else {
          // posix_fallocate()'s own fallback when the file system can't: write zeroes.
          await ftruncate(fd, offset);
          await writeZeroes(fd, current, offset);
        }
      } catch (e) {
        return restore(ioError(e, 'Could not preallocate new data'));
      }
      if (current === 0) await allocateFirstBlock(fd, offset);
      return;
    case 'full':
      try {
        await ftruncate(fd, offset);
      } catch (e) {
        return restore(ioError(e, 'Could not resize file'));
      }
      try {
        await writeZeroes(fd, current, offset);
      } catch (e) {
        return restore(ioError((e as { cause?: unknown }).cause ?? e, 'Could not write zeros for preallocation'));
      }
      try {
        await fsync(fd);
      } catch (e) {
        return restore(ioError(e, 'Could not flush file to disk'));
      }
      return;
    case 'off':
      try {
        await ftruncate(fd, offset);
      } catch (e) {
        throw ioError(e, 'Could not resize file');
      }
      if (current === 0 && offset > 0) await allocateFirstBlock(fd, offset);
      return;
    default:
      throw new BlockError('ENOTSUP', `Unsupported preallocation mode: ${String(prealloc)}`);
  }
}

async function openFile(ctx: { graph: Graph; node: BlockNode; readOnly: boolean }, o: Options): Promise<BlockDriverInstance> {
  const filename = o.filename as string;
  const node = ctx.node;
  // bdrv_open_common(): checked before anything else, as for every driver that needs a file name.
  if (filename === '') throw new BlockError('EINVAL', `The '${node.driver.name}' block driver requires a file name`);
  const direct = node.common.cacheDirect;
  if (direct && !O_DIRECT) {
    throw new BlockError('ENOTSUP', 'cache.direct=on is not supported by this build: this platform has no O_DIRECT');
  }
  const aio = o.aio as string;
  if (aio === 'native') {
    throw new BlockError(
      'EINVAL',
      direct
        ? 'aio=native was specified, but is not supported in this build.'
        : 'aio=native was specified, but it requires cache.direct=on, which was not specified.',
    );
  }
  if (aio === 'io_uring') {
    throw new BlockError('EINVAL', 'aio=io_uring was specified, but is not supported in this build.');
  }
  const native = loadNative();
  const locking = resolveLocking(o.locking as LockingMode, native);
  if (locking.warning) ctx.graph.warn(node, locking.warning.message, locking.warning.hint);

  let fd: number;
  try {
    fd = await openFd(filename, (ctx.readOnly ? O_RDONLY : O_RDWR) | (direct ? O_DIRECT : 0));
  } catch (e) {
    throw ioError(e, `Could not open '${filename}'`);
  }
  let align = 1;
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) {
      throw new BlockError('EINVAL', `'file' driver requires '${filename}' to be a regular file`);
    }
    if (direct) align = probeDirectAlignment(fd);
  } catch (e) {
    closeQuietly(fd);
    throw isBlockError(e) ? e : ioError(e, 'Could not stat file');
  }
  const inst = native ? new NativeFileInstance(fd, filename, ctx.readOnly, node, native) : new FileInstance(fd, filename, ctx.readOnly, node, null);
  if (direct) inst.direct = { align, pool: new BouncePool(Math.max(align, 4096)) };
  if (locking.useLock && native) inst.lock = new ImageLock(fd, filename, native, { warn: (message) => ctx.graph.warn(node, message) });
  // O_DIRECT leaves nothing dirty in the page cache; without the helper (before 1.4) there is no way to start writeback.
  const ahead = (o.writebackAhead as number | undefined) ?? 0;
  const startWriteback = native?.startWritebackAsync;
  if (ahead > 0 && !direct && startWriteback) {
    inst.writebackAhead = new WritebackAhead(ahead, (offset, length) => startWriteback(inst.fd, offset, length));
  }
  return inst;
}

/** raw_co_create(): create (or reuse) the file, lock it against resizers, size it, preallocate. */
async function createFile(o: Options): Promise<void> {
  const filename = o.filename as string;
  // qemu-img create rounds the size up to whole sectors (raw_co_create_opts).
  const size = Math.ceil((o.size as number) / 512) * 512;
  const prealloc = o.preallocation as PreallocMode;
  let fd: number;
  try {
    fd = await openFd(filename, O_RDWR | O_CREAT, 0o644);
  } catch (e) {
    throw ioError(e, `Could not create '${filename}'`);
  }
  let result: unknown = null;
  const native = loadNative();
  const lock = native ? new ImageLock(fd, filename, native) : null;
  try {
    lock?.apply(CREATE_PERM, CREATE_SHARED);
    await regularTruncate(fd, 0, 'off', native);
    await regularTruncate(fd, size, prealloc, native);
  } catch (e) {
    result = e;
  } finally {
    if (lock) lock.release();
  }
  try {
    fs.closeSync(fd);
  } catch (e) {
    result ??= ioError(e, 'Could not close the new file');
  }
  if (result) throw result;
}

export const fileDriver: BlockDriver = defineBlockDriver({
  name: 'file',
  kind: 'protocol',
  description: 'A regular file, read and written with Node fs (QEMU: file-posix)',
  capabilities: FILE_CAPABILITIES,
  options: {
    filename: { type: 'string', required: true, description: 'File name of the image' },
    locking: { type: 'enum', values: ['auto', 'on', 'off'], default: 'auto', description: 'file locking mode (on/off/auto, default: auto)' },
    aio: { type: 'enum', values: ['threads', 'native', 'io_uring'], default: 'threads', description: 'host AIO implementation (only threads)' },
    aioMaxBatch: { type: 'integer', min: 0, description: 'accepted for compatibility, ignored' },
    dropCache: { type: 'boolean', description: 'accepted for compatibility, ignored' },
    writebackAhead: {
      type: 'size',
      min: 0,
      default: 0,
      description:
        'start writeback of buffered writes after every this many bytes, so that a later flush has less to wait for (0: off; needs the native helper)',
    },
  },
  createOptions: {
    filename: { type: 'string', required: true },
    size: { type: 'size', default: 0, min: 0, description: 'Virtual disk size' },
    preallocation: { type: 'enum', values: ['off', 'falloc', 'full'], default: 'off', description: 'Preallocation mode (allowed values: off, falloc, full)' },
    nocow: { type: 'boolean', default: false, description: 'Turn off copy-on-write (valid only on btrfs); ignored' },
    extentSizeHint: { type: 'size', description: 'Extent size hint for the image file; ignored' },
  },
  open: openFile,
  async create(_graph, options) {
    await createFile(options);
  },
});

/** Node-only drivers of this package. */
export const nodeDrivers: readonly BlockDriver[] = [fileDriver];

/** Every driver of this package: raw, null-co, memory and file. */
export const allRawDrivers: readonly BlockDriver[] = [...rawDrivers, fileDriver];
