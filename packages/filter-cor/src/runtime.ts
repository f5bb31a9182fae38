import type { BlockNode, Graph } from '@blockgraph/block-core';

export interface InsertCopyOnReadOptions {
  /** Name of the new filter node (generated when omitted). */
  nodeName?: string;
  /** Copy only data allocated above this node (block-stream style). */
  bottom?: string;
}

/**
 * Put a copy-on-read filter above `node` while it is in use: every parent of `node` (guest backends, exports,
 * jobs, other nodes) moves to the filter inside one drained section, so requests are queued, not lost or
 * reordered. Refused with a permission error (and nothing changed) when the filter's needs conflict.
 */
export async function insertCopyOnRead(graph: Graph, node: BlockNode | string, opts: InsertCopyOnReadOptions = {}): Promise<BlockNode> {
  const below = graph.getNode(node);
  return graph.insertFilter({
    driver: 'copy-on-read',
    file: below.nodeName,
    ...(opts.nodeName !== undefined ? { nodeName: opts.nodeName } : {}),
    ...(opts.bottom !== undefined ? { bottom: opts.bottom } : {}),
  });
}

/** Take the filter out again: its parents use the filtered node directly. */
export async function removeCopyOnRead(graph: Graph, filter: BlockNode | string): Promise<void> {
  const f = graph.getNode(filter);
  if (f.driver.name !== 'copy-on-read') throw new Error(`Node '${f.nodeName}' is not a copy-on-read filter`);
  await graph.removeFilter(f);
}
