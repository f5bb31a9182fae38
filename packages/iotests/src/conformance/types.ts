import type { BlockNode, DriverCapabilities, Graph } from '@blockgraph/block-core';
import type { TestRun } from './harness.js';

/** What a factory returns: a fresh, isolated node in a fresh Graph. */
export interface ConformanceSubject {
  graph: Graph;
  node: BlockNode;
  /** Called after the suite has closed `graph` (delete temp files and the like). */
  cleanup?(): Promise<void>;
}

export interface ConformanceOptions {
  /** Suite title, e.g. 'file'. */
  name: string;
  /**
   * The runner's `describe`. The suite passes it an async callback (it opens one node to read the capabilities
   * before registering tests), so the runner must await it: vitest, node:test and bun:test do.
   */
  describe: (name: string, fn: () => void) => void;
  /** The runner's `test`/`it`; a thrown error (or rejected promise) is a failure. */
  test: (name: string, fn: () => Promise<void> | void, timeoutMs?: number) => void;
  /**
   * A fresh isolated node of `size` bytes in a fresh Graph. Content must read as zeroes (when the driver stores
   * data). With `readOnly` the node is opened read-only; drivers without the `write` capability always are.
   * Open nodes with `discard: 'unmap'` so that the suite can check what your discard does.
   */
  factory(opts: { size: number; readOnly?: boolean }): Promise<ConformanceSubject>;
}

export type CapabilityName = keyof DriverCapabilities;

/** One conformance check and the capabilities that decide whether it is registered. */
export interface ConformanceCase {
  /** "<area>: <what is checked>" */
  readonly name: string;
  /** Registered only if all of these capabilities are true… */
  readonly requires: readonly CapabilityName[];
  /** …and all of these are false. */
  readonly excludes?: readonly CapabilityName[];
  /** Passed to the runner's `test` (default 60 s). */
  readonly timeoutMs?: number;
  run(t: TestRun): Promise<void>;
}
