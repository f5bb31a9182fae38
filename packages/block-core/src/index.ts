export * from './errors.js';
export * from './flags.js';
export * from './perm.js';
export { IOVector, isZeroBuffer } from './iovec.js';
export * from './options.js';
export { parseQemuBool, parseQemuI64, parseQemuInteger, parseQemuSize, parseQemuU64, INT64_MAX, type QemuNumberParse } from './option-values.js';
export * from './spec.js';
export { DriverRegistry } from './registry.js';
export { Child, type ChildParent } from './child.js';
export { BlockNode, DEFAULT_LIMITS, defaultBitmapGranularity, type CommonNodeOptions, type DetectZeroes } from './node.js';
export { BlockBackend, type BackendOptions } from './backend.js';
export { Graph, type NodeOptions, type GraphEvent } from './graph.js';
export { DirtyBitmap, type DirtyBitmapOptions } from './bitmap.js';
export { blockStatus, blockStatusAbove, isAllocated, isAllocatedAbove, type BlockStatusResult, type BlockStatusAboveResult } from './block-status.js';
export { snapshotLoadTmp, snapshotLoadTmpByIdOrName } from './snapshot.js';
export { drainedBegin, drainedEnd, withDrained } from './drain.js';
export { Transaction, type TransactionAction } from './transaction.js';
export { refreshPerms, cumulativePerms, checkParentConflicts } from './permission.js';
export {
  Job,
  JobTxn,
  JOB_TRANSITIONS,
  JOB_VERBS,
  JOB_SLICE_MS,
  type JobStatus,
  type JobVerb,
  type JobOptions,
  type JobInfo,
  type OnError,
  type ErrorAction,
  type IoStatus,
} from './job.js';
export { RateLimit } from './ratelimit.js';
export { WaitQueue, ConditionWaiter, sleep } from './wait-queue.js';
export { onTrace, trace, traceEnabled, type TraceListener } from './trace.js';
export { parseJsonFilename, resolveRelativeFilename } from './filename.js';
export { alignDown, alignUp, sectorRound, truncateFlags, MAX_LENGTH, MAX_BOUNCE_BUFFER } from './io.js';
export { allocAlignedBuffer, isAlignedBuffer } from './aligned.js';
