/** The request loop of `blockgraph bench` (runBench) on a backend that answers at once. */
import { IOVector, type BlockBackend } from '@blockgraph/block-core';
import { describe, expect, it } from 'vitest';
import { runBench } from '../src/commands/bench.js';

function instantBackend(log: number[]): BlockBackend {
  return {
    preadv: (offset: number) => {
      log.push(offset);
      return Promise.resolve();
    },
  } as unknown as BlockBackend;
}

describe('runBench', () => {
  it('issues every request once, in order, at most depth at a time, and lets timers run meanwhile', async () => {
    const offsets: number[] = [];
    let timerRan = false;
    let timerRanBeforeEnd = false;
    setTimeout(() => (timerRan = true), 0);
    await runBench({
      blk: instantBackend(offsets),
      imageSize: 1 << 20,
      bufsize: 4096,
      step: 4096,
      nrreq: 8,
      n: 20000,
      offset: 0,
      write: false,
      flushInterval: 0,
      drainOnFlush: true,
      qiov: Array.from({ length: 8 }, () => IOVector.of(new Uint8Array(4096))),
      inFlight: 0,
      inFlush: false,
      writeFlags: 0,
    }).then(() => (timerRanBeforeEnd = timerRan));
    expect(offsets).toHaveLength(20000);
    expect(offsets.slice(0, 3)).toEqual([0, 4096, 8192]);
    // The offset wraps at the end of the image: 256 requests per pass.
    expect(offsets[256]).toBe(0);
    // Completions go through the event loop (like QEMU's bottom halves), not one long chain of microtasks.
    expect(timerRanBeforeEnd).toBe(true);
  });
});
