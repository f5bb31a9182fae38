/**
 * Port of qemu-iotests 218 "what happens when a mirror block job is cancelled in various phases of its
 * existence" (tests/qemu-iotests/218, 218.out).
 *
 * Ported, all five cases, with 218.out's event payloads:
 * - Cancel before convergence (null-co source and target of 1 MiB, speed 65536, buf-size 65536), force=false and
 *   force=true: both emit BLOCK_JOB_CANCELLED {device: mirror, len: 1048576, offset: 65536, speed: 65536}.
 *   (Before READY every cancel is a force cancel.)
 * - Cancel after convergence: after BLOCK_JOB_READY {len = offset = 1048576, speed 0}, force=false emits
 *   BLOCK_JOB_COMPLETED, force=true BLOCK_JOB_CANCELLED, both with len = offset = 1048576.
 * - Cancel a mirror job from a throttled node by quitting: a 64 MiB raw image full of data behind a throttle
 *   node with bps-read 4096, mirrored to null-co; quitting (Graph.close()) must finish within 5 s. Like QEMU's
 *   qemu_cleanup(), closing drains the graph before cancelling jobs, and a drained throttle node lets its
 *   requests through. (The throttle node is the iotests package's test-throttle stand-in for QEMU's throttle
 *   filter with a throttle-group.)
 *
 * QEMU's test waits for the first iteration before cancelling only implicitly (its QMP round trips take long
 * enough); here the tests wait until the first 64 KiB are copied, which is what 218.out's offset shows.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror, type MirrorJob } from '@blockgraph/job-mirror';
import { createRaw, EventLog, MiB, newGraph, scratch, until, writePattern, type Scratch } from './helpers.js';

/** start_mirror(): two null-co nodes (source and target, 1 MiB) and a blockdev-mirror job. */
async function startNullMirror(g: Graph, speed?: number, bufSize?: number): Promise<MirrorJob> {
  await g.addNode({ nodeName: 'source', driver: 'null-co', size: MiB });
  await g.addNode({ nodeName: 'target', driver: 'null-co', size: MiB });
  if (speed !== undefined) {
    return startMirror(g, { jobId: 'mirror', device: 'source', target: 'target', sync: 'full', speed, bufSize });
  }
  return startMirror(g, { jobId: 'mirror', device: 'source', target: 'target', sync: 'full' });
}

describe('iotest 218: cancel a mirror job in various phases', () => {
  let g: Graph;
  let events: EventLog;
  let s: Scratch | undefined;

  afterEach(async () => {
    await g.close();
    s?.cleanup();
    s = undefined;
  });

  for (const force of [false, true]) {
    it(`Cancel mirror job before convergence, force=${force}`, async () => {
      g = newGraph();
      events = new EventLog(g);
      // Low speed so it does not converge
      const job = await startNullMirror(g, 65536, 65536);
      await until(() => job.progress.current === 65536, 'the first iteration');
      job.cancel(force);
      const e = await events.wait('BLOCK_JOB_CANCELLED');
      expect(e.data).toEqual({ device: 'mirror', len: 1048576, offset: 65536, speed: 65536, type: 'mirror' });
      expect(events.named('BLOCK_JOB_COMPLETED')).toEqual([]);
      await job.waitFinished();
    });
  }

  for (const [force, event] of [[false, 'BLOCK_JOB_COMPLETED'], [true, 'BLOCK_JOB_CANCELLED']] as const) {
    it(`Cancel mirror job after convergence, force=${force} -> ${event}`, async () => {
      g = newGraph();
      events = new EventLog(g);
      const job = await startNullMirror(g);
      const ready = await events.wait('BLOCK_JOB_READY');
      expect(ready.data).toEqual({ device: 'mirror', len: 1048576, offset: 1048576, speed: 0, type: 'mirror' });
      job.cancel(force);
      const e = await events.wait(event);
      expect(e.data).toEqual({ device: 'mirror', len: 1048576, offset: 1048576, speed: 0, type: 'mirror' });
      const other = event === 'BLOCK_JOB_COMPLETED' ? 'BLOCK_JOB_CANCELLED' : 'BLOCK_JOB_COMPLETED';
      expect(events.named(other)).toEqual([]);
      await job.waitFinished();
    });
  }

  it('Cancel mirror job from throttled node by quitting (within 5 s)', async () => {
    s = scratch('218');
    const src = s.path('src.img');
    createRaw(src, 64 * MiB);
    writePattern(src, 0, 64 * MiB, 42);
    g = newGraph();
    events = new EventLog(g);
    await g.addNode({ nodeName: 'source', driver: 'raw', file: { driver: 'file', filename: src } });
    await g.addNode({ nodeName: 'throttled-source', driver: 'test-throttle', bpsRead: 4096, file: 'source' });
    await g.addNode({ nodeName: 'target', driver: 'null-co', size: 64 * MiB });
    const job = await startMirror(g, { jobId: 'mirror', device: 'throttled-source', target: 'target', sync: 'full' });
    // The first read (up to 1 MiB) is stuck in the throttle for minutes.
    await until(() => job.status === 'running' && job.progress.total > 0, 'the job to run');
    const t0 = Date.now();
    await g.close(); // quit
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(events.named('BLOCK_JOB_CANCELLED').map((e) => e.data.device)).toEqual(['mirror']);
    expect(job.status).toBe('null');
    expect(g.nodes.size).toBe(0);
  }, 15_000);
});
