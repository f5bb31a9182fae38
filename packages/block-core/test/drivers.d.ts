/**
 * Drivers used by block-core's own tests (and by the conformance suite's self-test): a memory protocol with
 * configurable alignment, a pass-through filter, and a minimal copy-on-write format with a backing file.
 */
import { type BlockDriver } from '../src/index.js';
export declare const testMemDriver: BlockDriver;
export declare const memStore: Map<string, Uint8Array<ArrayBufferLike>>;
/** A filter with no I/O methods at all: everything goes through the core's generic forwarding. */
export declare const testFilterDriver: BlockDriver;
/**
 * A minimal COW format: data lives in `file` at the guest offset, an in-memory per-cluster allocation map says
 * what this layer has; the rest comes from `backing`. Clusters are the request alignment, so no partial-cluster
 * copy-on-write is needed.
 */
export declare const testCowDriver: BlockDriver;
export declare const testDrivers: BlockDriver[];
//# sourceMappingURL=drivers.d.ts.map