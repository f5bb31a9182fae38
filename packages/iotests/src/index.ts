export {
  runDriverConformance,
  conformanceTests,
  type ConformanceOptions,
  type ConformanceSubject,
  type ConformanceTestInfo,
  type CapabilityName,
} from './conformance/index.js';
export { SEED_ENV, DEFAULT_BASE_SEED } from './conformance/harness.js';
export { ByteModel, describeMismatch, type ModelMismatch, type ModelWrite } from './model.js';
export { xorshift, deriveSeed, formatSeed, hashString, type Prng } from './prng.js';
export { ConformanceError, assert, assertEqual, assertRejects, isBlockErrorLike, within } from './assert.js';
export {
  blkdebugDriver,
  blkdebugOf,
  findBlkdebug,
  parseBlkdebugConfig,
  BlkdebugController,
  BLKDEBUG_EVENTS,
  BLKDEBUG_IO_TYPES,
  type BlkdebugEvent,
  type BlkdebugIoType,
  type BlkdebugInjectError,
  type BlkdebugSetState,
  type BlkdebugOptions,
  type BlkdebugPermName,
} from './blkdebug.js';
export { testThrottleDriver, createTestThrottleDriver, type ThrottleOptions, type TestThrottleDriverOptions } from './scenarios/throttle.js';
export { ManualClock, realTimeClock, type ScenarioClock } from './scenarios/clock.js';
