/**
 * What a pass-through test filter (blkdebug, test-throttle, test-latency) reports about itself is what its `file`
 * child reports: the filter must not hide or invent a capability, or the conformance suite and the scenarios
 * would test the filter instead of the node below it. Read per call, because the child may change (reopen).
 */
import { NO_CAPABILITIES, ReqFlag, type Child, type DriverCapabilities, type ReqFlags } from '@blockgraph/block-core';

const CHILD_CAPS: (keyof DriverCapabilities)[] = ['storesData', 'zeroWrite', 'discard', 'discardZeroes', 'blockStatus', 'flush', 'resize', 'shrink', 'growOnWrite'];

export function childCapabilities(file: Child): Partial<DriverCapabilities> {
  const caps: Partial<DriverCapabilities> = {};
  for (const k of CHILD_CAPS) caps[k] = file.node.capabilities[k];
  return caps;
}

/** WRITE_UNCHANGED always (a filter forwards it as a plain write); FUA when the child has it. */
export function childWriteFlags(file: Child): ReqFlags {
  return ReqFlag.WRITE_UNCHANGED | (file.node.supportedWriteFlags & ReqFlag.FUA);
}

export function childZeroFlags(file: Child): ReqFlags {
  return ReqFlag.WRITE_UNCHANGED | (file.node.supportedZeroFlags & (ReqFlag.FUA | ReqFlag.MAY_UNMAP | ReqFlag.NO_FALLBACK));
}

/** What such a filter's driver declares: everything a child may have (the node then reports the child's own). */
export const PASSTHROUGH_FILTER_CAPABILITIES: DriverCapabilities = {
  ...NO_CAPABILITIES,
  write: true,
  storesData: true,
  zeroWrite: true,
  discard: true,
  discardZeroes: true,
  blockStatus: true,
  flush: true,
  resize: true,
  shrink: true,
  reopen: true,
};
