/**
 * Named trace events (request start/end, job state, qcow2 allocation). Libraries never print; Node entry
 * points may forward these to `node:diagnostics_channel` (see the cli package).
 */
export type TraceListener = (event: string, data: Readonly<Record<string, unknown>>) => void;

const listeners = new Set<TraceListener>();

export function onTrace(listener: TraceListener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** True when someone listens; hot paths check this before building the event payload. */
export function traceEnabled(): boolean {
  return listeners.size > 0;
}

export function trace(event: string, data: Readonly<Record<string, unknown>>): void {
  for (const l of listeners) l(event, data);
}
