export { startMirror } from './start.js';
export { startCommit, type CommitOptions } from './commit.js';
export { MirrorJob } from './mirror-job.js';
export { mirrorTopDriver } from './mirror-top.js';
export {
  DEFAULT_MIRROR_BUF_SIZE,
  MAX_IN_FLIGHT,
  MAX_IO_BYTES,
  normaliseMirrorOptions,
  validateMirrorOptions,
  type MirrorBackingMode,
  type MirrorCopyMode,
  type MirrorOptions,
  type MirrorSyncMode,
} from './options.js';
