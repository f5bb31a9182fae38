/**
 * @blockgraph/driver-raw, platform-neutral entry: the `raw` format and the `null-co` and `memory` protocols.
 * The Node-only `file` protocol is in `@blockgraph/driver-raw/file`.
 */
import type { BlockDriver } from '@blockgraph/block-core';
import { rawDriver } from './raw.js';
import { nullCoDriver } from './null-co.js';
import { memoryDriver } from './memory.js';

export { rawDriver } from './raw.js';
// Re-exported from block-core, where the mirror job's buffers come from too.
export { allocAlignedBuffer, isAlignedBuffer } from '@blockgraph/block-core';
export { nullCoDriver, NULL_CO_DEFAULT_SIZE } from './null-co.js';
export { memoryDriver, MemoryStore, MEMORY_CHUNK_SIZE, getMemoryStore, deleteMemoryStore } from './memory.js';

/** The platform-neutral drivers of this package: raw, null-co, memory. */
export const rawDrivers: readonly BlockDriver[] = [rawDriver, nullCoDriver, memoryDriver];
