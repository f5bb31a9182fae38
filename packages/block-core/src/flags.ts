/** Request flags, QEMU's BdrvRequestFlags values (include/block/block-common.h). */
export const ReqFlag = {
  COPY_ON_READ: 0x1,
  ZERO_WRITE: 0x2,
  MAY_UNMAP: 0x4,
  FUA: 0x10,
  WRITE_COMPRESSED: 0x20,
  WRITE_UNCHANGED: 0x40,
  SERIALISING: 0x80,
  NO_FALLBACK: 0x100,
  PREFETCH: 0x200,
  NO_WAIT: 0x400,
} as const;
export type ReqFlags = number;
export const REQ_FLAG_MASK = 0x7ff;

/** Block status bits (BDRV_BLOCK_*). ALLOCATED is derived by the core from DATA|ZERO. */
export const BlockStatus = {
  DATA: 0x01,
  ZERO: 0x02,
  OFFSET_VALID: 0x04,
  RAW: 0x08,
  ALLOCATED: 0x10,
  EOF: 0x20,
  RECURSE: 0x40,
} as const;

export function flagNames(flags: ReqFlags): string[] {
  return Object.entries(ReqFlag)
    .filter(([, v]) => (flags & v) !== 0)
    .map(([k]) => k);
}
