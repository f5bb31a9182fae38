/**
 * Errors carry an errno-like code so callers can react (retry on EBUSY, report ENOSPC) and a QEMU-style
 * message so that scripts comparing our output with QEMU's find the same words.
 */
export type BlockErrorCode =
  | 'EIO'
  | 'ENOSPC'
  | 'EINVAL'
  | 'EPERM'
  | 'EACCES'
  | 'ENOTSUP'
  | 'EBUSY'
  | 'ECANCELED'
  | 'ENOENT'
  | 'EEXIST'
  | 'ENOMEDIUM'
  | 'EFBIG'
  | 'EAGAIN';

/** Negative errno values as QEMU uses them; handy when a golden output prints "-5". */
export const ERRNO: Record<BlockErrorCode, number> = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EAGAIN: 11,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  ENOTSUP: 95,
  ENOMEDIUM: 123,
  ECANCELED: 125,
};

/** strerror() texts, used where QEMU prints "Input/output error" and friends. */
export const STRERROR: Record<BlockErrorCode, string> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EIO: 'Input/output error',
  EAGAIN: 'Resource temporarily unavailable',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  EINVAL: 'Invalid argument',
  EFBIG: 'File too large',
  ENOSPC: 'No space left on device',
  ENOTSUP: 'Operation not supported',
  ENOMEDIUM: 'No medium found',
  ECANCELED: 'Operation canceled',
};

export class BlockError extends Error {
  override readonly name = 'BlockError';
  readonly code: BlockErrorCode;

  constructor(code: BlockErrorCode, message?: string, options?: { cause?: unknown }) {
    super(message ?? STRERROR[code], options);
    this.code = code;
  }

  get errno(): number {
    return ERRNO[this.code];
  }

  /** Prefix the message with context, QEMU's error_prepend() style: "Could not open 'x': <msg>". */
  prepend(prefix: string): BlockError {
    const e = new BlockError(this.code, prefix + this.message, { cause: this });
    return e;
  }
}

/**
 * QEMU's error_setg_errno(): "<prefix>: <strerror>", keeping the code of `e` (a BlockError; anything else is
 * returned as it is).
 */
export function errnoError(e: unknown, prefix: string): unknown {
  return isBlockError(e) ? new BlockError(e.code, `${prefix}: ${STRERROR[e.code]}`, { cause: e }) : e;
}

export function isBlockError(e: unknown, code?: BlockErrorCode): e is BlockError {
  return e instanceof BlockError && (code === undefined || e.code === code);
}

/**
 * Map any thrown value to a BlockError. Node's fs errors carry `code` strings such as 'ENOSPC'; anything
 * unknown becomes EIO so that error policies (report/ignore/stop/enospc) always see a code.
 */
export function toBlockError(e: unknown): BlockError {
  if (e instanceof BlockError) return e;
  const code = (e as { code?: unknown } | null)?.code;
  const message = e instanceof Error ? e.message : String(e);
  if (typeof code === 'string' && code in ERRNO) return new BlockError(code as BlockErrorCode, message, { cause: e });
  if (code === 'EOPNOTSUPP') return new BlockError('ENOTSUP', message, { cause: e });
  if (code === 'EROFS') return new BlockError('EACCES', message, { cause: e });
  return new BlockError('EIO', message, { cause: e });
}
