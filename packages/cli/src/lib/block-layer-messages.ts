/**
 * What QEMU's block layer prints itself in every tool, before the failing operation's own error:
 * qcow2_signal_corruption()'s line (error_report, no program prefix), from the graph's BLOCK_IMAGE_CORRUPTED
 * events, warn_report()'s "blockgraph: warning: ..." lines, from its WARNING events (Graph.warn()), and the lines
 * it writes with a bare fprintf(stderr), from its MESSAGE events (Graph.message()).
 */
import type { Graph, GraphEvent } from '@blockgraph/block-core';
import type { Ctx } from './context.js';

/** Print each corruption event, warning and message of `graph` as QEMU does; returns the unsubscribe function. */
export function printBlockLayerMessages(ctx: Ctx, graph: Graph): () => void {
  return graph.on((e: GraphEvent) => {
    if (e.event === 'MESSAGE') {
      ctx.err(`${String(e.data.text)}\n`);
      return;
    }
    if (e.event === 'WARNING') {
      ctx.warn(String(e.data.message));
      if (typeof e.data.hint === 'string') ctx.err(e.data.hint);
      return;
    }
    if (e.event !== 'BLOCK_IMAGE_CORRUPTED') return;
    const node = graph.nodes.get(String(e.data['node-name']));
    const fmt = node?.driver.name ?? 'qcow2';
    ctx.err(
      e.data.fatal
        ? `${fmt}: Marking image as corrupt: ${String(e.data.msg)}; further corruption events will be suppressed\n`
        : `${fmt}: Image is corrupt: ${String(e.data.msg)}; further non-fatal corruption events will be suppressed\n`,
    );
  });
}
