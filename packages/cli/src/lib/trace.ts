/**
 * block-core's trace events (request start/end, job state changes, qcow2 allocation) on Node's
 * diagnostics_channel, as `blockgraph:<event>` channels. Costs nothing while no channel has subscribers:
 * block-core only builds an event when a listener exists, and the listener is registered only when the
 * process asks for it (BLOCKGRAPH_TRACE=1, or a subscriber attached before the CLI starts).
 */
import diagnostics from 'node:diagnostics_channel';
import { onTrace } from '@blockgraph/block-core';

const channels = new Map<string, diagnostics.Channel>();

function channelFor(event: string): diagnostics.Channel {
  let c = channels.get(event);
  if (!c) {
    c = diagnostics.channel(`blockgraph:${event}`);
    channels.set(event, c);
  }
  return c;
}

/** Forward trace events to diagnostics_channel; with `print`, also write them to `out` (one JSON line each). */
export function forwardTraces(print?: (line: string) => void): () => void {
  return onTrace((event, data) => {
    const c = channelFor(event);
    if (c.hasSubscribers) c.publish(data);
    print?.(`${JSON.stringify({ event, ...data })}\n`);
  });
}
