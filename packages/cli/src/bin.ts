#!/usr/bin/env node
import { main } from './main.js';
import { forwardTraces } from './lib/trace.js';

// BLOCKGRAPH_TRACE=1: block-core's trace events as JSON lines on stderr and on diagnostics_channel.
if (process.env.BLOCKGRAPH_TRACE) forwardTraces((line) => process.stderr.write(line));

// `blockgraph map x | head`: a closed pipe ends the output quietly, as it does for qemu-img.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`blockgraph: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
