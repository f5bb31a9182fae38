/**
 * Loader for the optional native helper (native/src/blockgraph_native.c), built at install time by
 * scripts/build-native.mjs. Node's fs has no lseek(SEEK_DATA/SEEK_HOLE), no fallocate and no byte-range
 * locks; the helper adds exactly those. Everything that uses it must also work without it, because the
 * build is allowed to fail (no compiler, not Linux) and users can switch it off.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** `BLOCKGRAPH_NO_NATIVE=1` in the environment makes {@link loadNative} return null. */
export const NATIVE_DISABLE_ENV = 'BLOCKGRAPH_NO_NATIVE';

/** The helper's interface major version this loader speaks; a stale build with another one is ignored. */
const SUPPORTED_MAJOR = '1';

const ADDON_FILE = 'blockgraph_native.node';

/**
 * Where the built addon may sit relative to this module: the source tree (src/node/native.ts under
 * vitest or tsx), a bundle entry (dist/node/file.js) and a shared tsup chunk at dist/ top level.
 */
const CANDIDATE_PATHS = [
  `../../native/build/Release/${ADDON_FILE}`,
  `../native/build/Release/${ADDON_FILE}`,
];

/** 'r' read (shared) lock, 'w' write (exclusive) lock, 'u' unlock. */
export type LockType = 'r' | 'w' | 'u';

/** Which fcntl commands the lock functions use: open-file-description locks or classic POSIX locks. */
export type LockKind = 'ofd' | 'posix';

/** What the helper throws on a failed system call: Node's fs error shape plus the bare strerror text. */
export interface NativeError extends Error {
  /** errno name, e.g. 'EAGAIN', 'EBADF', 'EOPNOTSUPP' */
  code: string;
  /** negative errno, as in Node's fs errors */
  errno: number;
  /** the call that failed, e.g. 'fcntl(F_OFD_SETLK)' */
  syscall: string;
  /** strerror(errno), e.g. 'Resource temporarily unavailable' */
  description: string;
}

/** cachestat(2)'s counts, in pages. */
export interface PageCacheStat {
  cached: number;
  dirty: number;
  writeback: number;
  evicted: number;
  recentlyEvicted: number;
}

export interface NativeHelper {
  readonly version: string;
  /** fallocate mode bits from linux/falloc.h; mode 0 preallocates (and may extend the file). */
  readonly FALLOC_FL_KEEP_SIZE: number;
  readonly FALLOC_FL_PUNCH_HOLE: number;
  readonly FALLOC_FL_ZERO_RANGE: number;

  /** lseek(fd, offset, SEEK_DATA): the next data offset at or after `offset`, or -1 when there is none (ENXIO). */
  seekData(fd: number, offset: number): number;
  /** lseek(fd, offset, SEEK_HOLE): the next hole at or after `offset` (EOF counts as one), or -1 past EOF (ENXIO). */
  seekHole(fd: number, offset: number): number;
  /** fallocate(2), retried on EINTR. */
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /** fallocate(2) on the thread pool (helpers since 1.2): it can wait for the file system. */
  fallocateAsync?(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /**
   * fdatasync(2) on a side thread, not on libuv's pool (helpers since 1.3): a flush can wait for the disk for long,
   * and would hold a pool thread that data requests need meanwhile. Since 1.5 the side threads are a pool of their
   * own that grows on demand and shrinks when idle (1.3 and 1.4 started a thread per call).
   */
  fdatasyncAsync?(fd: number): Promise<void>;
  /**
   * sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) on a side thread (helpers since 1.4): starts
   * writeback of the dirty pages in the range without waiting for it. length 0 means to the end of the file.
   */
  startWritebackAsync?(fd: number, offset: number, length: number): Promise<void>;
  /**
   * Write all of `buffers` at `position` (pwritev, continued after a short write) through the file's write queue
   * (helpers since 1.6): one side thread per file writes the queued writes one after the other, in the order they
   * were queued. For buffered writes, which the kernel serialises per file anyway. The buffers must stay unchanged
   * until the promise settles; it rejects with the errno error of the failed pwritev (EIO for no progress).
   */
  pwritevQueued?(fd: number, buffers: readonly Uint8Array[], position: number): Promise<void>;
  /**
   * copy_file_range(2) of `length` bytes from `fdIn` at `offsetIn` to `fdOut` at `offsetOut`, on a side thread
   * (helpers since 1.7), continued after short copies. Rejects with ENOTSUP where the kernel has no such call and
   * with ENOSPC when the source ends before the range does: both mean "copy through a buffer instead".
   */
  copyFileRangeAsync?(fdIn: number, offsetIn: number, fdOut: number, offsetOut: number, length: number): Promise<void>;
  /**
   * cachestat(2) (Linux 6.5+; helpers since 1.4): pages of the range that are in the page cache, dirty and under
   * writeback. length 0 means to the end of the file. Throws ENOSYS on older kernels.
   */
  pageCacheStat?(fd: number, offset: number, length: number): PageCacheStat;
  /**
   * Non-blocking byte-range lock (F_OFD_SETLK, or F_SETLK when the kernel lacks OFD locks). A conflict
   * throws with code 'EAGAIN' or 'EACCES'.
   */
  ofdLock(fd: number, start: number, len: number, type: LockType): void;
  /**
   * F_OFD_GETLK (or F_GETLK): true if this fd could take a lock of `type` on the range, false if another
   * open file description (another process, for POSIX locks) holds a conflicting one.
   */
  ofdTest(fd: number, start: number, len: number, type: 'r' | 'w'): boolean;
  /** Which lock commands are in use; 'posix' only on kernels without OFD locks unless forced. */
  lockKind(): LockKind;
  /** Force a lock kind for this JS environment (tests of the POSIX fallback); 'ofd' fails without kernel support. */
  setLockKind(kind: LockKind): void;
  /**
   * preadv2(RWF_NOWAIT) into `buf` at `position`, on the calling thread: the bytes read when the data is in
   * the page cache, -1 when reading would block, -2 when RWF_NOWAIT is not supported. (Absent in helpers built
   * before version 1.1.)
   */
  preadNoWait?(fd: number, buf: Uint8Array, position: number): number;
  /** pwritev2(RWF_NOWAIT): as preadNoWait; most file systems refuse it for buffered writes (-2). */
  pwriteNoWait?(fd: number, buf: Uint8Array, position: number): number;
}

let cachedHelper: NativeHelper | null | undefined;
let cachedLoadError: Error | null = null;
let forcedDisabled = false;

function isDisabled(): boolean {
  return forcedDisabled || process.env[NATIVE_DISABLE_ENV] === '1';
}

function loadFromDisk(): NativeHelper | null {
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  for (const candidate of CANDIDATE_PATHS) {
    const path = fileURLToPath(new URL(candidate, import.meta.url));
    tried.push(path);
    if (!existsSync(path)) continue;
    try {
      const helper = require(path) as NativeHelper;
      if (helper.version.split('.')[0] !== SUPPORTED_MAJOR) {
        cachedLoadError = new Error(`${path}: helper version ${helper.version}, expected ${SUPPORTED_MAJOR}.x`);
        continue;
      }
      cachedLoadError = null;
      return helper;
    } catch (error) {
      // A build for another Node ABI or a broken file: remember why and keep looking.
      cachedLoadError = error instanceof Error ? error : new Error(String(error));
    }
  }
  cachedLoadError ??= new Error(`${ADDON_FILE} not found (looked at ${tried.join(', ')})`);
  return null;
}

/** The native helper, or null when it is not built, cannot load, or is disabled. Loads once per process. */
export function loadNative(): NativeHelper | null {
  if (isDisabled()) return null;
  if (cachedHelper === undefined) cachedHelper = loadFromDisk();
  return cachedHelper;
}

/** Force the no-helper fallback (true) or go back to the default, where only the environment can disable it. */
export function setNativeDisabled(disabled: boolean): void {
  forcedDisabled = disabled;
}

/** Why {@link loadNative} returned null after it tried to load the helper; null if it loaded or never tried. */
export function nativeLoadError(): Error | null {
  return cachedHelper === undefined || cachedHelper !== null ? null : cachedLoadError;
}

export function isNativeError(error: unknown): error is NativeError {
  return error instanceof Error && typeof (error as { code?: unknown }).code === 'string' &&
    typeof (error as { syscall?: unknown }).syscall === 'string';
}
