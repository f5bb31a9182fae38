import type { BlockNode } from './node.js';

/**
 * Drained sections (bdrv_drained_begin/end). Draining a node quiesces everything above it — parents stop
 * sending new requests (BlockBackends queue them, jobs pause) — and then waits until nothing is in flight in the
 * node or its parents. Every change to edges happens inside one.
 */
export function drainBeginNoPoll(node: BlockNode): void {
  node.quiesceCounter++;
  for (const p of node.parents) {
    if (!p.quiescedParent) {
      p.quiescedParent = true;
      p.parent.drainedBegin?.();
    }
  }
  if (node.quiesceCounter === 1) node.impl.drainBegin?.();
}

export function drainEnd(node: BlockNode): void {
  if (node.quiesceCounter <= 0) throw new Error(`drainEnd without drainBegin on node '${node.nodeName}'`);
  if (--node.quiesceCounter > 0) return;
  node.impl.drainEnd?.();
  for (const p of [...node.parents]) {
    if (p.quiescedParent) {
      p.quiescedParent = false;
      p.parent.drainedEnd?.();
    }
  }
  node.graph.kick();
}

/** True while a drain of `node` must keep waiting. */
export function drainPoll(node: BlockNode): boolean {
  if (node.inFlight > 0) return true;
  for (const p of node.parents) if (p.parent.drainedPoll?.()) return true;
  return false;
}

export async function drainedBegin(node: BlockNode): Promise<void> {
  drainBeginNoPoll(node);
  await node.graph.waitWhile(() => drainPoll(node));
}

export function drainedEnd(node: BlockNode): void {
  drainEnd(node);
}

/** Run `fn` inside a drained section of every node in `nodes`. */
export async function withDrained<T>(nodes: readonly BlockNode[], fn: () => T | Promise<T>): Promise<T> {
  const unique = [...new Set(nodes)];
  for (const n of unique) drainBeginNoPoll(n);
  try {
    await unique[0]?.graph.waitWhile(() => unique.some(drainPoll));
    return await fn();
  } finally {
    for (const n of unique) if (n.quiesceCounter > 0) drainEnd(n);
  }
}
