/**
 * QEMU's image locking (block/file-posix.c, QEMU 7.2), so that blockgraph and QEMU processes refuse to
 * use one image in conflicting ways.
 *
 * The protocol: every permission bit i (0..3) owns two bytes of the image file. A process that *uses*
 * permission i holds a shared (F_RDLCK) lock on byte 100+i; a process that does *not share* permission i
 * holds a shared lock on byte 200+i. Before taking a permission, a process asks whether anyone else holds
 * 200+i ("someone forbids it"); before refusing to share one, whether anyone else holds 100+i ("someone
 * uses it"). Only shared locks are ever taken, so two holders never conflict while locking; conflicts are
 * found only by testing for an exclusive (F_WRLCK) lock with F_OFD_GETLK, which sees other open file
 * descriptions' locks but not the caller's own.
 *
 * QEMU 7.2 iterates bits while (1 << i) <= BLK_PERM_ALL (0x0f), so it uses bytes 100..103 and 200..203.
 * GRAPH_MOD (0x10, bytes 104/204) was dropped in 6.2; 7.2 neither takes nor tests those bytes, nor do we.
 */
import { BlockError, toBlockError } from '@blockgraph/block-core';
import { isNativeError, type NativeHelper } from './native.js';

/** Permission bits, QEMU's BLK_PERM_* values. */
export const PERM_CONSISTENT_READ = 0x01;
export const PERM_WRITE = 0x02;
export const PERM_WRITE_UNCHANGED = 0x04;
export const PERM_RESIZE = 0x08;
export const PERM_ALL = 0x0f;

/** Byte offset of the "uses permission i" lock is RAW_LOCK_PERM_BASE + i; libvirt owns byte 0. */
export const RAW_LOCK_PERM_BASE = 100;
/** Byte offset of the "does not share permission i" lock is RAW_LOCK_SHARED_BASE + i. */
export const RAW_LOCK_SHARED_BASE = 200;

/** What raw_co_create() holds while it creates (truncates) an image file: nobody may resize meanwhile. */
export const CREATE_PERM = PERM_WRITE | PERM_RESIZE;
export const CREATE_SHARED = PERM_ALL & ~PERM_RESIZE;

const PERM_NAMES: ReadonlyArray<readonly [number, string]> = [
  [PERM_CONSISTENT_READ, 'consistent read'],
  [PERM_WRITE, 'write'],
  [PERM_WRITE_UNCHANGED, 'write unchanged'],
  [PERM_RESIZE, 'resize'],
];

/** bdrv_perm_names(): "consistent read, write" for 0x3. */
export function permNames(perm: number): string {
  return PERM_NAMES.filter(([bit]) => (perm & bit) !== 0).map(([, name]) => name).join(', ');
}

/** Bit numbers 0..3 of PERM_ALL, QEMU's PERM_FOREACH. */
const PERM_BIT_INDEXES = [0, 1, 2, 3] as const;

/**
 * A failed lock operation. `message` is what QEMU prints after its "qemu-img: Could not open 'x': "
 * prefix: the error itself and, on a new line, the hint when QEMU attaches one, e.g.
 * `Failed to get "write" lock\nIs another process using the image [x.img]?`.
 */
export class ImageLockError extends BlockError {
  /** The error without the hint, e.g. 'Failed to get "write" lock'. */
  readonly reason: string;
  /** QEMU's error_append_hint() text without its trailing newline, if any. */
  readonly hint: string | undefined;

  constructor(error: BlockError, hint?: string) {
    super(error.code, hint === undefined ? error.message : `${error.message}\n${hint}`, { cause: error.cause });
    this.reason = error.message;
    this.hint = hint;
  }
}

/**
 * raw_lock_error_setg_errno(): a conflict (EAGAIN/EACCES) is the expected case and gets the bare text;
 * any other errno is a real failure and gets ": <strerror>" appended, QEMU's error_setg_errno().
 */
function lockError(cause: unknown, text: string): BlockError {
  const code = toBlockError(cause).code;
  if (code === 'EAGAIN' || code === 'EACCES') return new BlockError(code, text, { cause });
  return new BlockError(code, `${text}: ${describe(cause)}`, { cause });
}

function describe(error: unknown): string {
  if (isNativeError(error) && typeof error.description === 'string') return error.description;
  return error instanceof Error ? error.message : String(error);
}

function conflict(text: string): BlockError {
  // qemu_lock_fd_test() reports a held lock as -EAGAIN.
  return new BlockError('EAGAIN', text);
}

export interface ImageLockOptions {
  /**
   * Where QEMU would warn_report(): unlocking failed during commit or abort. Unlocking "cannot fail",
   * so QEMU carries on; so do we. Defaults to process.emitWarning.
   */
  warn?: (message: string) => void;
}

interface PendingChange {
  perm: number;
  shared: number;
  newFd: number | undefined;
}

/**
 * The lock bytes of one open image file, driven like QEMU's raw_handle_perm_lock(): a permission
 * update is `prepare()` (take the union of old and new locks, then test for conflicts) followed by
 * `commit()` (drop what the new permissions no longer need) or `abort()` (drop back to the committed
 * permissions). `perm` is what this node uses, `shared` what it lets others use, both as PERM_* bits.
 *
 * With POSIX locks (kernels without OFD locks) locks belong to the process: a lock test never sees
 * another ImageLock of the same process, and closing any fd of the file drops all of them.
 */
export class ImageLock {
  readonly filename: string;
  readonly #native: NativeHelper;
  readonly #warn: (message: string) => void;
  #fd: number;
  #perm = 0;
  #shared = PERM_ALL;
  #lockedPerm = 0;
  #lockedUnshared = 0;
  #pending: PendingChange | null = null;

  constructor(fd: number, filename: string, native: NativeHelper, options: ImageLockOptions = {}) {
    this.#fd = fd;
    this.filename = filename;
    this.#native = native;
    this.#warn = options.warn ?? ((message) => process.emitWarning(message));
  }

  /** The fd whose open file description holds the locks. */
  get fd(): number {
    return this.#fd;
  }

  /** Committed permissions in use. */
  get perm(): number {
    return this.#perm;
  }

  /** Committed permissions shared with others. */
  get shared(): number {
    return this.#shared;
  }

  /** Bits whose "uses" byte (100+i) is locked on `fd` right now. */
  get lockedPerm(): number {
    return this.#lockedPerm;
  }

  /** Bits whose "does not share" byte (200+i) is locked on `fd` right now. */
  get lockedUnshared(): number {
    return this.#lockedUnshared;
  }

  /** True between prepare() and commit()/abort(). */
  get preparing(): boolean {
    return this.#pending !== null;
  }

  /**
   * raw_check_lock_bytes(): throws (EAGAIN) if another process forbids a permission in `perm` or uses a
   * permission missing from `shared`. Takes no locks, so on its own it can race; prepare() locks first.
   */
  check(perm: number, shared: number): void {
    checkLockBytes(this.#native, this.#fd, perm, shared);
  }

  /**
   * RAW_PL_PREPARE. On failure the locks are back to the committed state and the error carries QEMU's
   * hint. With `newFd` (a reopen that needs another fd, QEMU's perm_change_fd) the new permissions' bytes
   * are also locked on `newFd`; commit() then moves to it and the caller closes the old fd, abort() leaves
   * it to the caller to close `newFd`.
   */
  prepare(perm: number, shared: number, newFd?: number): void {
    if (this.#pending) throw new BlockError('EBUSY', `Lock update on '${this.filename}' already in progress`);
    if ((this.#perm | perm) !== this.#perm || (this.#shared & shared) !== this.#shared) {
      try {
        this.#applyLockBytes(this.#fd, this.#perm | perm, ~this.#shared | ~shared, false);
      } catch (error) {
        this.#restoreCommitted();
        throw new ImageLockError(toBlockError(error));
      }
      try {
        checkLockBytes(this.#native, this.#fd, perm, shared);
      } catch (error) {
        this.#restoreCommitted();
        // QEMU appends the hint only to a failed test, not to a failed lock call.
        throw new ImageLockError(toBlockError(error), `Is another process using the image [${this.filename}]?`);
      }
    }
    // Otherwise only unlocking is ahead, which cannot conflict, so nothing is locked or tested yet.
    if (newFd !== undefined && newFd !== this.#fd) {
      try {
        lockBytes(this.#native, newFd, perm, ~shared);
      } catch (error) {
        this.#restoreCommitted();
        throw toBlockError(error);
      }
    }
    this.#pending = { perm, shared, newFd };
  }

  /** RAW_PL_COMMIT: keep exactly the locks of the prepared permissions. */
  commit(): void {
    const pending = this.#pending;
    if (!pending) throw new BlockError('EINVAL', `No lock update on '${this.filename}' to commit`);
    this.#pending = null;
    if (pending.newFd !== undefined && pending.newFd !== this.#fd) {
      // prepare() locked exactly the new bytes on newFd; the old fd's locks go when the caller closes it.
      this.#fd = pending.newFd;
      this.#lockedPerm = pending.perm & PERM_ALL;
      this.#lockedUnshared = ~pending.shared & PERM_ALL;
    }
    this.#applyLockBytesWarning(pending.perm, ~pending.shared);
    this.#perm = pending.perm;
    this.#shared = pending.shared;
  }

  /** RAW_PL_ABORT: back to the committed permissions' locks. */
  abort(): void {
    this.#pending = null;
    this.#restoreCommitted();
  }

  /** prepare() and commit() in one step, for callers without a wider transaction. */
  apply(perm: number, shared: number): void {
    this.prepare(perm, shared);
    this.commit();
  }

  /** Drop every lock byte (permissions 0, everything shared), as when QEMU's node loses its last user. */
  release(): void {
    this.#pending = null;
    this.#applyLockBytesWarning(0, 0);
    this.#perm = 0;
    this.#shared = PERM_ALL;
  }

  #restoreCommitted(): void {
    this.#applyLockBytesWarning(this.#perm, ~this.#shared);
  }

  #applyLockBytesWarning(permLockBits: number, unsharedLockBits: number): void {
    try {
      this.#applyLockBytes(this.#fd, permLockBits, unsharedLockBits, true);
    } catch (error) {
      this.#warn(error instanceof Error ? error.message : String(error));
    }
  }

  /**
   * raw_apply_lock_bytes() with state: lock the bytes of `permLockBits` and `unsharedLockBits` that are
   * not locked yet and, when `unlock`, unlock those locked but no longer wanted.
   */
  #applyLockBytes(fd: number, permLockBits: number, unsharedLockBits: number, unlock: boolean): void {
    for (const i of PERM_BIT_INDEXES) {
      const bit = 1 << i;
      const offset = RAW_LOCK_PERM_BASE + i;
      if ((permLockBits & bit) !== 0 && (this.#lockedPerm & bit) === 0) {
        lockByte(this.#native, fd, offset);
        this.#lockedPerm |= bit;
      } else if (unlock && (this.#lockedPerm & bit) !== 0 && (permLockBits & bit) === 0) {
        unlockByte(this.#native, fd, offset);
        this.#lockedPerm &= ~bit;
      }
    }
    for (const i of PERM_BIT_INDEXES) {
      const bit = 1 << i;
      const offset = RAW_LOCK_SHARED_BASE + i;
      if ((unsharedLockBits & bit) !== 0 && (this.#lockedUnshared & bit) === 0) {
        lockByte(this.#native, fd, offset);
        this.#lockedUnshared |= bit;
      } else if (unlock && (this.#lockedUnshared & bit) !== 0 && (unsharedLockBits & bit) === 0) {
        unlockByte(this.#native, fd, offset);
        this.#lockedUnshared &= ~bit;
      }
    }
  }
}

function lockByte(native: NativeHelper, fd: number, offset: number): void {
  try {
    native.ofdLock(fd, offset, 1, 'r');
  } catch (error) {
    throw lockError(error, `Failed to lock byte ${offset}`);
  }
}

function unlockByte(native: NativeHelper, fd: number, offset: number): void {
  try {
    native.ofdLock(fd, offset, 1, 'u');
  } catch (error) {
    // QEMU uses plain error_setg_errno() here: unlocking has no expected failure to elide.
    throw new BlockError(toBlockError(error).code, `Failed to unlock byte ${offset}: ${describe(error)}`, {
      cause: error,
    });
  }
}

/** raw_apply_lock_bytes() without state (s == NULL): lock every requested byte, unlock nothing. */
function lockBytes(native: NativeHelper, fd: number, permLockBits: number, unsharedLockBits: number): void {
  for (const i of PERM_BIT_INDEXES) {
    if ((permLockBits & (1 << i)) !== 0) lockByte(native, fd, RAW_LOCK_PERM_BASE + i);
  }
  for (const i of PERM_BIT_INDEXES) {
    if ((unsharedLockBits & (1 << i)) !== 0) lockByte(native, fd, RAW_LOCK_SHARED_BASE + i);
  }
}

/** raw_check_lock_bytes(). */
function checkLockBytes(native: NativeHelper, fd: number, perm: number, shared: number): void {
  for (const i of PERM_BIT_INDEXES) {
    const bit = 1 << i;
    if ((perm & bit) !== 0) testByte(native, fd, RAW_LOCK_SHARED_BASE + i, `Failed to get "${permNames(bit)}" lock`);
  }
  for (const i of PERM_BIT_INDEXES) {
    const bit = 1 << i;
    if ((shared & bit) === 0) {
      testByte(native, fd, RAW_LOCK_PERM_BASE + i, `Failed to get shared "${permNames(bit)}" lock`);
    }
  }
}

function testByte(native: NativeHelper, fd: number, offset: number, text: string): void {
  let free: boolean;
  try {
    free = native.ofdTest(fd, offset, 1, 'w');
  } catch (error) {
    throw lockError(error, text);
  }
  if (!free) throw conflict(text);
}

/** QEMU's `locking` option of the file driver. */
export type LockingMode = 'auto' | 'on' | 'off';

export interface LockingDecision {
  useLock: boolean;
  /** QEMU's warning while opening (warn_report, then an error_printf hint), or null. */
  warning: { message: string; hint: string } | null;
}

/**
 * raw_open_common()'s reading of `locking`: 'auto' locks only where OFD locks exist (POSIX locks are
 * lost when any fd of the file closes, so they are not used unasked); 'on' falls back to POSIX locks
 * with QEMU's warning. Without the native helper there is no lock call at all, so 'on' is an error.
 */
export function resolveLocking(mode: LockingMode, native: NativeHelper | null): LockingDecision {
  switch (mode) {
    case 'off':
      return { useLock: false, warning: null };
    case 'auto':
      return { useLock: native !== null && native.lockKind() === 'ofd', warning: null };
    case 'on':
      if (native === null) {
        throw new BlockError('ENOTSUP', 'File lock requested but the blockgraph native helper is unavailable');
      }
      if (native.lockKind() === 'ofd') return { useLock: true, warning: null };
      return {
        useLock: true,
        warning: {
          message: 'File lock requested but OFD locking syscall is unavailable, falling back to POSIX file locks',
          hint: 'Due to the implementation, locks can be lost unexpectedly.\n',
        },
      };
    default:
      throw new BlockError('EINVAL', `Invalid parameter '${String(mode)}'`);
  }
}
