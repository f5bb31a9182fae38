/**
 * Port of qemu-iotests 141 "ejecting BDSs with block jobs still running on them" (tests/qemu-iotests/141,
 * 141.out), the drive-mirror part.
 *
 * Ported: a node 'drv0' added with blockdev-add, a mirror job with sync=none on it (READY at once: len 0,
 * offset 0); blockdev-del of drv0 must fail because the job uses it; block-job-cancel (soft, in READY) ends the
 * job with BLOCK_JOB_COMPLETED; then blockdev-del succeeds. The event sequence is 141.out's. The error text is
 * QEMU 7.2's (checked against qemu-storage-daemon 7.2): "Node 'drv0' is busy: block device is in use by block job:
 * mirror" (later QEMU versions word it "node is used as backing hd of ..."); deleting the target, which the job
 * holds through its own BlockBackend, fails with "Node <name> is in use".
 *
 * Not ported: the drive-backup, block-commit and block-stream parts (no such jobs in blockgraph).
 * The image is a raw file instead of the top of a qcow2 chain (no qcow2 yet).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror } from '@blockgraph/job-mirror';
import { createRaw, EventLog, MiB, newGraph, scratch, type Scratch } from './helpers.js';

describe('iotest 141: deleting a node used by a mirror job', () => {
  let s: Scratch;
  let g: Graph;
  let events: EventLog;

  beforeEach(() => {
    s = scratch('141');
    createRaw(s.path('t.img'), MiB);
    createRaw(s.path('o.img'), MiB);
    g = newGraph();
    events = new EventLog(g);
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  it('Testing drive-mirror', async () => {
    await g.addNode({ nodeName: 'drv0', driver: 'raw', file: { driver: 'file', filename: s.path('t.img') } });
    await g.addNode({ nodeName: 'o', driver: 'raw', file: { driver: 'file', filename: s.path('o.img') } });
    const job = await startMirror(g, { jobId: 'job0', device: 'drv0', target: 'o', sync: 'none' });
    const ready = await events.wait('BLOCK_JOB_READY', { device: 'job0' });
    expect(ready.data).toEqual({ device: 'job0', len: 0, offset: 0, speed: 0, type: 'mirror' });

    // We want this to return an error because the block job is still running
    await expect(g.deleteNode('drv0')).rejects.toThrow("Node 'drv0' is busy: block device is in use by block job: mirror");
    await expect(g.deleteNode('o')).rejects.toThrow('Node o is in use');
    expect(g.findNode('drv0')).toBeDefined();

    job.cancel(false);
    const done = await events.wait('BLOCK_JOB_COMPLETED', { device: 'job0' });
    expect(done.data).toEqual({ device: 'job0', len: 0, offset: 0, speed: 0, type: 'mirror' });
    await job.waitFinished();

    await g.deleteNode('drv0');
    expect(g.findNode('drv0')).toBeUndefined();
    expect(events.sequence('job0')).toEqual([
      'status:created',
      'status:running',
      'status:ready',
      'BLOCK_JOB_READY',
      'status:waiting',
      'status:pending',
      'BLOCK_JOB_COMPLETED',
      'status:concluded',
      'status:null',
    ]);
  });
});
