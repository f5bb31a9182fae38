/**
 * Port of qemu-iotests 132 "Test mirror with unmap" (tests/qemu-iotests/132).
 *
 * Ported: test_mirror_discard: a 2 MiB image written with 0x5d, attached with discard=unmap; a full mirror runs
 * while the guest discards 0-64k; after completion the images are identical (qemu-img compare). The discard also
 * runs in write-blocking mode, where blockgraph's mirror node intentionally differs from QEMU's (job-mirror
 * README, "Where this differs from QEMU"): an active discard writes to the target what the source reads after
 * the discard, instead of discarding the target, so both still compare equal.
 *
 * QEMU uses drive-mirror to a new image of the same format; here the target is a pre-created raw image.
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror } from '@blockgraph/job-mirror';
import { compareImages, createRaw, describeWithTools, device, EventLog, KiB, MiB, newGraph, readNode, scratch, writePattern, type Scratch } from './helpers.js';

describeWithTools('iotest 132: mirror with unmap', ['qemu-img'], () => {
  const imageLen = 2 * MiB;
  let s: Scratch;
  let g: Graph;
  let events: EventLog;

  beforeEach(() => {
    s = scratch('132');
    createRaw(s.path('test.img'), imageLen);
    writePattern(s.path('test.img'), 0, imageLen, 0x5d); // qemu-io -c 'write -P0x5d 0 2M'
    createRaw(s.path('target.img'), imageLen);
    g = newGraph();
    events = new EventLog(g);
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  for (const copyMode of ['background', 'write-blocking'] as const) {
    it(`test_mirror_discard (${copyMode})`, async () => {
      await g.addNode({ driver: 'raw', nodeName: 'drive0-node', discard: 'unmap', file: { driver: 'file', filename: s.path('test.img') } });
      await g.addNode({ driver: 'raw', nodeName: 'target', file: { driver: 'file', filename: s.path('target.img') } });
      const drive0 = device(g, 'drive0-node', 'drive0');
      const job = await startMirror(g, { jobId: 'drive0', device: 'drive0-node', target: 'target', sync: 'full', copyMode });
      await drive0.pdiscard(0, 64 * KiB); // hmp qemu-io drive0 'discard 0 64k'
      await events.wait('BLOCK_JOB_READY', { device: 'drive0' });
      job.complete();
      const done = await events.wait('BLOCK_JOB_COMPLETED', { device: 'drive0' });
      expect(done.data.error).toBeUndefined();
      await job.waitFinished();
      // The discard took effect: the file has a hole there.
      expect((await readNode(g, 'drive0-node', 0, 64 * KiB)).every((b) => b === 0)).toBe(true);
      await g.close();
      expect(compareImages(s.path('test.img'), s.path('target.img'))).toBe(true);
    });
  }
});
