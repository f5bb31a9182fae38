import { BlockError, type BlockErrorCode } from '@blockgraph/block-core';

/**
 * A check step that QEMU ends with a negative errno: the whole check stops, qemu-img prints no report but
 * "Check failed: <strerror>" and exits with 1. Thrown through the check functions and turned into
 * `CheckResult.checkFailed` by checkImage().
 */
export class CheckAbort extends BlockError {
  constructor(code: BlockErrorCode, message?: string) {
    super(code, message);
  }
}

/** Repair modes as QEMU's BdrvCheckMode bits. */
export const FIX_LEAKS = 1;
export const FIX_ERRORS = 2;

export function fixBits(fix: 'none' | 'leaks' | 'all'): number {
  return fix === 'all' ? FIX_LEAKS | FIX_ERRORS : fix === 'leaks' ? FIX_LEAKS : 0;
}
