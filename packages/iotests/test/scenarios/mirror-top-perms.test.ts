/**
 * Port of qemu-iotests tests/mirror-top-perms "Test permissions taken by the mirror-top filter".
 *
 * Ported: test_cancel. A 1 MiB raw image attached as a guest device (virtio-blk without share-rw: takes
 * consistent read and write, does not share write) is mirrored to a null-co node; once READY, a second process
 * opening the same image read-write must fail with "Is another process using the image", because the mirror
 * node keeps the original parents' permissions (QEMU commit 53431b9086b28; before it, mirror-top shared
 * everything and the second process could take the image). Then block-job-cancel works and ends the job with
 * BLOCK_JOB_COMPLETED (soft cancel in READY).
 *
 * The second process is the real QEMU 7.2 `qemu-io` (read-write, which shares everything, as QEMU's second VM
 * with share-rw=on), instead of a second QEMU VM; `qemu-img info` (which takes no permissions) is shown to still
 * work, so the refusal is about the lock, not about the file. The file protocol's lock bytes are QEMU's, so
 * the conflict is between blockgraph and QEMU.
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror } from '@blockgraph/job-mirror';
import { createRaw, describeWithTools, device, EventLog, MiB, newGraph, runTool, scratch, type Scratch } from './helpers.js';

describeWithTools('mirror-top-perms', ['qemu-io', 'qemu-img'], () => {
  const imageSize = 1 * MiB;
  let s: Scratch;
  let g: Graph;
  let events: EventLog;
  let source: string;

  beforeEach(async () => {
    s = scratch('mirror-top-perms');
    source = s.path('source.img');
    createRaw(source, imageSize);
    g = newGraph();
    events = new EventLog(g);
    // -drive file=source.img,format=raw (+ a device) and -blockdev null-co,node-name=null,size=1M
    await g.addNode({ driver: 'raw', nodeName: 'drive0-node', file: { driver: 'file', filename: source, locking: 'on' } });
    device(g, 'drive0-node', 'drive0');
    await g.addNode({ driver: 'null-co', nodeName: 'null', size: imageSize });
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  it('test_cancel', async () => {
    const job = await startMirror(g, { jobId: 'mirror', device: 'drive0', target: 'null', sync: 'full' });
    await events.wait('BLOCK_JOB_READY', { device: 'mirror' });

    // We want this to fail because the image cannot be locked.
    const b = runTool('qemu-io', ['-f', 'raw', '-c', 'read 0 512', source]);
    expect(b.status).not.toBe(0);
    expect(b.stderr).toContain('Is another process using the image');
    expect(b.stderr).toContain('Failed to get "write" lock');
    // Only the lock stands in the way: a user taking no permissions may look at the image.
    expect(runTool('qemu-img', ['info', '-f', 'raw', source]).status).toBe(0);

    job.cancel(false);
    const done = await events.wait('BLOCK_JOB_COMPLETED', { device: 'mirror' });
    expect(done.data.error).toBeUndefined();
    await job.waitFinished();
    expect(g.getNode('drive0-node').parents.map((p) => p.parent.describeParent())).toEqual(["block device 'drive0'"]);

    // The guest still holds the image as before the job (the permissions were restored without a hitch).
    const again = runTool('qemu-io', ['-f', 'raw', '-c', 'read 0 512', source]);
    expect(again.stderr).toContain('Is another process using the image');
  });
});
