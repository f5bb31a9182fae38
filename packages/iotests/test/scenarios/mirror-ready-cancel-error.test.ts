/**
 * Port of qemu-iotests tests/mirror-ready-cancel-error "errors to a mirror job after it has been cancelled in
 * the READY phase".
 *
 * Ported, both cases: the target is raw over blkdebug over a file, with QEMU's rules: set-state on
 * flush_to_disk from state 1 to 2 (the first flush, before READY, succeeds and moves to state 2), inject-error
 * on flush_to_disk in state 2, immediately, once (transient) or not (persistent). The job runs with
 * on-target-error=stop. After READY a 64 KiB write through the mirror-top node makes sure the job does not
 * leave at once; a soft cancel then flushes the target, which fails: BLOCK_JOB_ERROR (write, stop), the job goes
 * to STANDBY. Transient: block-job-resume, the next flush succeeds and the job ends (BLOCK_JOB_COMPLETED, a
 * consistent copy, no pivot). Persistent: a force cancel ends it (BLOCK_JOB_CANCELLED). Both reach NULL.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror, type MirrorJob } from '@blockgraph/job-mirror';
import { createRaw, EventLog, KiB, MiB, newGraph, pattern, scratch, type Scratch } from './helpers.js';

describe('mirror-ready-cancel-error', () => {
  const imageSize = 1 * MiB;
  let s: Scratch;
  let g: Graph;
  let events: EventLog;

  beforeEach(() => {
    s = scratch('mirror-ready-cancel-error');
    createRaw(s.path('source.img'), imageSize);
    createRaw(s.path('target.img'), imageSize);
    g = newGraph();
    events = new EventLog(g);
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  async function addBlockdevs(once: boolean): Promise<void> {
    await g.addNode({ nodeName: 'source', driver: 'raw', file: { driver: 'file', filename: s.path('source.img') } });
    // Enter state 2 on the first flush, which happens before the job enters the READY state. The second flush
    // happens when the job is about to complete, and that one must fail.
    await g.addNode({
      nodeName: 'target',
      driver: 'raw',
      file: {
        driver: 'blkdebug',
        image: { driver: 'file', filename: s.path('target.img') },
        'set-state': [{ event: 'flush_to_disk', state: 1, new_state: 2 }],
        'inject-error': [{ event: 'flush_to_disk', once, immediately: true, state: 2 }],
      },
    });
  }

  const startJob = (): Promise<MirrorJob> =>
    startMirror(g, { jobId: 'mirror', device: 'source', target: 'target', filterNodeName: 'mirror-top', sync: 'full', onTargetError: 'stop' });

  async function cancelMirrorWithError(job: MirrorJob): Promise<void> {
    await events.wait('BLOCK_JOB_READY', { device: 'mirror' });
    // Write something so the job will not leave immediately, but flush first (which fails, thanks to blkdebug)
    const be = g.backend('mirror-top', { perm: 0x3, shared: 0xf }); // hmp: qemu-io mirror-top "write 0 64k"
    await be.pwrite(0, pattern(64 * KiB, 0xcd));
    be.remove();
    // Drain status change events
    events.clear();
    job.cancel(false);
    const e = await events.wait('BLOCK_JOB_ERROR', { device: 'mirror' });
    expect(e.data).toEqual({ device: 'mirror', operation: 'write', action: 'stop' });
  }

  it('test_transient_error', async () => {
    await addBlockdevs(true);
    const job = await startJob();
    await cancelMirrorWithError(job);
    for (;;) {
      const e = await events.wait('JOB_STATUS_CHANGE', { id: 'mirror' });
      // Transient error, try again
      if (e.data.status === 'standby') job.resume();
      else if (e.data.status === 'null') break;
    }
    expect(events.sequence('mirror')).toEqual([
      'BLOCK_JOB_ERROR',
      'status:standby',
      'status:ready',
      'status:waiting',
      'status:pending',
      'BLOCK_JOB_COMPLETED',
      'status:concluded',
      'status:null',
    ]);
    expect(events.named('BLOCK_JOB_COMPLETED')[0]!.data.error).toBeUndefined();
    // A consistent copy, no pivot.
    expect(g.getNode('source').parents).toEqual([]);
  });

  it('test_persistent_error', async () => {
    await addBlockdevs(false);
    const job = await startJob();
    await cancelMirrorWithError(job);
    for (;;) {
      const e = await events.wait('JOB_STATUS_CHANGE', { id: 'mirror' });
      // Persistent error, no point in continuing
      if (e.data.status === 'standby') job.cancel(true);
      else if (e.data.status === 'null') break;
    }
    expect(events.sequence('mirror')).toEqual([
      'BLOCK_JOB_ERROR',
      'status:standby',
      'status:ready',
      'status:aborting',
      'BLOCK_JOB_CANCELLED',
      'status:concluded',
      'status:null',
    ]);
  });
});
