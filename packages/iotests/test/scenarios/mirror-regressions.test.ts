/**
 * Regression tests for mirror bugs that the qemu-iotests ports exposed (not ports of QEMU tests themselves).
 *
 * - A guest write that passes the mirror node before the job attaches to it (during the initial scan) and is
 *   still in flight when the job starts copying was recorded nowhere in write-blocking mode: the copy read the old
 *   data and the target kept it (found by the write-blocking variant of the 132 port, with a discard). The job now
 *   attaches inside a drained section and a catch-all bitmap on the source covers the time before.
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror } from '@blockgraph/job-mirror';
import { findBlkdebug } from '../../src/index.js';
import { compareImages, createRaw, describeWithTools, device, EventLog, MiB, newGraph, pattern, scratch, sleep, writePattern, type Scratch } from './helpers.js';

describeWithTools('mirror regressions', ['qemu-img'], () => {
  let s: Scratch;
  let g: Graph;
  let events: EventLog;

  beforeEach(() => {
    s = scratch('mirror-reg');
    g = newGraph();
    events = new EventLog(g);
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  for (const copyMode of ['write-blocking', 'background', 'read-write-blocking'] as const) {
    it(`a guest write in flight while the job attaches reaches the target (${copyMode})`, async () => {
      createRaw(s.path('source.img'), MiB);
      writePattern(s.path('source.img'), 0, MiB, 1);
      createRaw(s.path('target.img'), MiB);
      await g.addNode({ driver: 'raw', nodeName: 'source', file: { driver: 'blkdebug', image: { driver: 'file', filename: s.path('source.img') } } });
      await g.addNode({ driver: 'raw', nodeName: 'target', file: { driver: 'file', filename: s.path('target.img') } });
      const guest = device(g, 'source', 'guest');
      const dbg = findBlkdebug(guest);

      const job = await startMirror(g, { jobId: 'mirror', device: 'source', target: 'target', sync: 'full', copyMode });
      // The write passes the mirror node before the job is attached to it and parks below.
      dbg.break('write_aio', 'W');
      const write = guest.pwrite(4096, pattern(4096, 2));
      await dbg.waitBreak('W');
      // Time for a copy of the whole image, had the job not waited for the write.
      await sleep(50);
      dbg.resume('W');
      await write;
      await events.wait('BLOCK_JOB_READY', { device: 'mirror' });
      job.complete();
      const done = await events.wait('BLOCK_JOB_COMPLETED', { device: 'mirror' });
      expect(done.data.error).toBeUndefined();
      await job.waitFinished();
      await g.close();
      expect(compareImages(s.path('source.img'), s.path('target.img'))).toBe(true);
    });
  }
});
