import { BlockError, type OnError } from '@blockgraph/block-core';

export type MirrorSyncMode = 'full' | 'top' | 'none';
export type MirrorCopyMode = 'background' | 'write-blocking' | 'read-write-blocking';
/**
 * What becomes of the target's backing file when the job completes (block/mirror.c's BlockMirrorBackingMode):
 * - 'leave' (blockdev-mirror; the default): the target keeps the backing file it has;
 * - 'source' (drive-mirror into a new image): the target's backing file becomes the source's backing node for
 *   sync=top, the source itself for sync=none, none for sync=full;
 * - 'open' (drive-mirror mode=existing: the target is opened without its backing file): the backing file named in
 *   the target's header is opened and attached — it may have been created while the job ran.
 */
export type MirrorBackingMode = 'leave' | 'source' | 'open';

/** blockdev-mirror's arguments, camelCase (QEMU's kebab-case names are accepted by `normaliseMirrorOptions`). */
export interface MirrorOptions {
  /** Job ID; defaults to the device's name. */
  jobId?: string;
  /** Source: a node name (or a BlockBackend's name). */
  device: string;
  /** Target: an existing node name. */
  target: string;
  /** On completion, replace this node (instead of `device`) by the target. */
  replaces?: string;
  sync: MirrorSyncMode;
  /** Bytes per second; 0 = unlimited. */
  speed?: number;
  /** Dirty bitmap granularity: a power of two in [512, 64 MiB]; default from the target's cluster size. */
  granularity?: number;
  /** Data in flight at most; default 16 MiB. */
  bufSize?: number;
  onSourceError?: OnError;
  onTargetError?: OnError;
  /** Name of the mirror node put above the source (generated when omitted). */
  filterNodeName?: string;
  copyMode?: MirrorCopyMode;
  autoFinalize?: boolean;
  autoDismiss?: boolean;
  /** Zero the target where the source reads as zero by unmapping (default true). */
  unmap?: boolean;
  /** The target reads as zeroes already: skip zeroing it (a wrong value corrupts the copy). */
  targetIsZero?: boolean;
  /** drive-mirror's handling of the target's backing file at completion (see MirrorBackingMode). */
  backingMode?: MirrorBackingMode;
}

/** QEMU's constants (block/mirror.c). */
export const MAX_IN_FLIGHT = 16;
export const MAX_IO_BYTES = 1 << 20;
export const DEFAULT_MIRROR_BUF_SIZE = MAX_IN_FLIGHT * MAX_IO_BYTES;

const ON_ERROR = ['report', 'ignore', 'stop', 'enospc', 'auto'] as const;

function kebabToCamel(k: string): string {
  return k.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** Accept QMP's spelling (`job-id`, `buf-size`, `copy-mode`, ...) as well as camelCase. */
export function normaliseMirrorOptions(input: Record<string, unknown>): MirrorOptions {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(input)) out[kebabToCamel(k)] = v;
  return out as unknown as MirrorOptions;
}

/** The argument checks of blockdev-mirror / mirror_start_job, with QEMU's messages. */
export function validateMirrorOptions(o: MirrorOptions): void {
  const invalid = (name: string): never => {
    throw new BlockError('EINVAL', `Invalid parameter '${name}'`);
  };
  if (typeof o.device !== 'string') throw new BlockError('EINVAL', "Parameter 'device' is missing");
  if (typeof o.target !== 'string') throw new BlockError('EINVAL', "Parameter 'target' is missing");
  if (o.sync === undefined) throw new BlockError('EINVAL', "Parameter 'sync' is missing");
  if (!['full', 'top', 'none'].includes(o.sync)) {
    if (['incremental', 'bitmap'].includes(o.sync as string)) throw new BlockError('ENOTSUP', `Sync mode '${o.sync}' not supported`);
    throw new BlockError('EINVAL', `Parameter 'sync' does not accept value '${String(o.sync)}'`);
  }
  if (o.copyMode !== undefined && !['background', 'write-blocking', 'read-write-blocking'].includes(o.copyMode)) {
    throw new BlockError('EINVAL', `Parameter 'copy-mode' does not accept value '${String(o.copyMode)}'`);
  }
  for (const [k, v] of [['on-source-error', o.onSourceError], ['on-target-error', o.onTargetError]] as const) {
    if (v !== undefined && !(ON_ERROR as readonly string[]).includes(v)) {
      throw new BlockError('EINVAL', `Parameter '${k}' does not accept value '${String(v)}'`);
    }
  }
  if (o.speed !== undefined && (!Number.isSafeInteger(o.speed) || o.speed < 0)) {
    throw new BlockError('EINVAL', "Parameter 'speed' expects a non-negative value");
  }
  if (o.granularity !== undefined && o.granularity !== 0) {
    const g = o.granularity;
    if (!Number.isSafeInteger(g) || g < 512 || g > 64 * 1048576) {
      throw new BlockError('EINVAL', "Parameter 'granularity' expects a value in range [512B, 64MB]");
    }
    if (g & (g - 1)) throw new BlockError('EINVAL', "Parameter 'granularity' expects a power of 2");
  }
  if (o.bufSize !== undefined && (!Number.isSafeInteger(o.bufSize) || o.bufSize < 0)) invalid('buf-size');
  if (o.backingMode !== undefined && !['leave', 'source', 'open'].includes(o.backingMode)) {
    throw new BlockError('EINVAL', `Parameter 'backing-mode' does not accept value '${String(o.backingMode)}'`);
  }
}
