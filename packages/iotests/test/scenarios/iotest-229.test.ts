/**
 * Port of qemu-iotests 229 "force canceling a running blockjob that is paused in an error state"
 * (tests/qemu-iotests/229, 229.out).
 *
 * Ported: the current version of the test. 229 originally mirrored to a target that was too small to make the
 * job fail; since QEMU 5.0 a size mismatch fails the job at start, so upstream now makes the target's first write
 * fail with blkdebug ([inject-error] event = "write_aio", errno = "5", once = "on") on a 2 MiB image. The mirror
 * runs with on-source-error=stop and on-target-error=stop: the job reports BLOCK_JOB_ERROR {operation: write,
 * action: stop} and pauses; a force cancel of the job paused in its error state resumes it, it goes through
 * 'aborting' and emits BLOCK_JOB_CANCELLED {len: 2097152, speed: 0, type: mirror} (229.out filters the offset);
 * nothing asserts. The old premise is checked too: a too-small target fails the job at start with
 * 'Source and target image have different sizes' and BLOCK_JOB_COMPLETED, never pausing.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror } from '@blockgraph/job-mirror';
import { parseBlkdebugConfig } from '../../src/index.js';
import { createRaw, device, EventLog, MiB, newGraph, scratch, writePattern, type Scratch } from './helpers.js';

describe('iotest 229: force cancel of a job paused in an error state', () => {
  let s: Scratch;
  let g: Graph;
  let events: EventLog;

  beforeEach(async () => {
    s = scratch('229');
    createRaw(s.path('b.img'), 2 * MiB);
    writePattern(s.path('b.img'), 0, 2 * MiB, 0xcd); // qemu-io -c 'write 0 2M'
    g = newGraph();
    events = new EventLog(g);
    await g.addNode({ driver: 'raw', nodeName: 'testdisk-node', file: { driver: 'file', filename: s.path('b.img') } });
    device(g, 'testdisk-node', 'testdisk');
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  it('Starting drive-mirror, causing error & stop; force cancel job paused in error state', async () => {
    createRaw(s.path('d.img'), 2 * MiB);
    const rules = parseBlkdebugConfig('[inject-error]\nevent = "write_aio"\nerrno = "5"\nonce = "on"\n');
    await g.addNode({ driver: 'raw', nodeName: 'dest', file: { driver: 'blkdebug', image: { driver: 'file', filename: s.path('d.img') }, ...rules } });

    const job = await startMirror(g, { jobId: 'testdisk', device: 'testdisk', target: 'dest', sync: 'full', onSourceError: 'stop', onTargetError: 'stop' });
    await events.wait('JOB_STATUS_CHANGE', { id: 'testdisk', status: 'paused' });
    expect(events.sequence('testdisk')).toEqual(['status:created', 'status:running', 'BLOCK_JOB_ERROR', 'status:paused']);
    expect(events.named('BLOCK_JOB_ERROR')[0]!.data).toEqual({ device: 'testdisk', operation: 'write', action: 'stop' });
    expect(job.query()).toMatchObject({ status: 'paused', paused: true, 'io-status': 'failed' });

    // Force cancel job paused in error state
    events.clear();
    job.cancel(true);
    const cancelled = await events.wait('BLOCK_JOB_CANCELLED', { device: 'testdisk' });
    expect(cancelled.data).toMatchObject({ device: 'testdisk', len: 2097152, speed: 0, type: 'mirror' });
    await job.waitFinished();
    // BLOCK_JOB_ERROR events may or may not occur while the job is resumed for its cancellation (229 filters them).
    expect(events.sequence('testdisk').filter((e) => e !== 'BLOCK_JOB_ERROR')).toEqual([
      'status:running',
      'status:aborting',
      'BLOCK_JOB_CANCELLED',
      'status:concluded',
      'status:null',
    ]);
    expect(events.named('BLOCK_JOB_COMPLETED')).toEqual([]);
  });

  it('the original premise: a too-small target fails the job at start', async () => {
    createRaw(s.path('d.img'), 1 * MiB);
    await g.addNode({ driver: 'raw', nodeName: 'dest', file: { driver: 'file', filename: s.path('d.img') } });
    const job = await startMirror(g, { jobId: 'testdisk', device: 'testdisk', target: 'dest', sync: 'full', onSourceError: 'stop', onTargetError: 'stop' });
    const done = await events.wait('BLOCK_JOB_COMPLETED', { device: 'testdisk' });
    expect(done.data).toEqual({ type: 'mirror', device: 'testdisk', len: 0, offset: 0, speed: 0, error: 'Source and target image have different sizes' });
    await job.waitFinished();
    expect(events.statuses('testdisk')).toEqual(['created', 'running', 'aborting', 'concluded', 'null']);
  });
});
