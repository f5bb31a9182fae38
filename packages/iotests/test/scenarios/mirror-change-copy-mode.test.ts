/**
 * Port of qemu-iotests tests/mirror-change-copy-mode "changing mirror copy mode from background to active".
 *
 * Ported: test_background_to_active. Source and target of 1 MiB, both written; writes to the source are
 * throttled (QEMU: iops_wr=16 on the drive) and so are writes to the target (QEMU: an NBD export of a
 * throttled node in a qemu-storage-daemon, iops-write=8). A background mirror is not actively synced, neither
 * before nor after READY; under a write load that keeps it behind (its `len` grows past the image size), the
 * copy mode changes to write-blocking (block-job-change); the job becomes actively synced (polled, as QEMU
 * does); `len` keeps growing; more writes go to the first half, then a synchronous write in the second half
 * must be on the target immediately (read back from the target node); cancel; images identical (qemu-img
 * compare) and no pattern mismatch.
 *
 * Differences: time is real, not qtest's virtual clock, so the limits are 25x QEMU's (source 400, target 200
 * write IOPS) and the load lasts about half a second; the throttled nodes are the iotests package's
 * test-throttle filter (QEMU throttles the source at the device, and the target behind NBD; blockgraph has no
 * NBD yet). QEMU verifies the synchronous write with qemu-io's `read -P 37`; here the bytes are compared.
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror } from '@blockgraph/job-mirror';
import { compareImages, createRaw, describeWithTools, device, EventLog, MiB, newGraph, pattern, readNode, scratch, until, type Scratch } from './helpers.js';

describeWithTools('mirror-change-copy-mode', ['qemu-img'], () => {
  const iopsTarget = 200;
  const iopsSource = iopsTarget * 2;
  const imageSize = 1 * MiB;
  let s: Scratch;
  let g: Graph;
  let events: EventLog;

  beforeEach(() => {
    s = scratch('mirror-change-copy-mode');
    createRaw(s.path('source.img'), imageSize);
    createRaw(s.path('target.img'), imageSize);
    g = newGraph();
    events = new EventLog(g);
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  it('test_background_to_active', async () => {
    await g.addNode({
      nodeName: 'target',
      driver: 'test-throttle',
      iopsWrite: iopsTarget,
      file: { driver: 'raw', file: { driver: 'file', filename: s.path('target.img') } },
    });
    await g.addNode({
      nodeName: 'source-node',
      driver: 'test-throttle',
      iopsWrite: iopsSource,
      file: { driver: 'raw', file: { driver: 'file', filename: s.path('source.img') } },
    });
    const source = device(g, 'source-node', 'source');

    await source.pwrite(0, pattern(imageSize, 0xcd)); // hmp qemu-io source 'write 0 1M'
    const targetWriter = g.backend('target', { perm: 0x3, shared: 0xf });
    await targetWriter.pwrite(0, pattern(imageSize, 0xcd)); // hmp qemu-io target 'write 0 1M'
    targetWriter.remove();

    const job = await startMirror(g, { jobId: 'mirror', device: 'source', target: 'target', filterNodeName: 'mirror-top', sync: 'full', copyMode: 'background' });
    expect(job.query()['actively-synced']).toBe(false);
    await events.wait('BLOCK_JOB_READY', { device: 'mirror' });
    expect(job.query()['actively-synced']).toBe(false);

    // Start some background requests (QEMU: 4 s of source writes; here about half a second).
    const inFlight: Promise<void>[] = [];
    let reqs = iopsSource / 2;
    let reqSize = Math.floor(imageSize / reqs);
    for (let i = 0; i < reqs; i++) inFlight.push(source.pwrite(reqSize * i, pattern(reqSize, 7)));

    // Wait for the first few requests: there should have been new requests (QEMU sleeps and steps its clock;
    // polling keeps the change well inside the load on a slow machine too).
    await until(() => job.query().len > imageSize, 'the job to see new requests', 10_000, 1);
    // To verify later that not all requests were completed at this point.
    const lenBeforeChange = job.query().len;

    // Change the copy mode while requests are happening.
    await job.change({ copyMode: 'write-blocking' });

    // Wait until the image is actively synced.
    await until(() => job.query()['actively-synced'] === true, 'actively-synced', 10_000, 10);

    // Because of throttling, not all requests had completed above.
    expect(job.query().len).toBeGreaterThan(lenBeforeChange);

    // Issue requests for a while, only touching the first half of the image.
    reqs = iopsTarget / 2;
    reqSize = Math.floor(imageSize / 2 / reqs);
    for (let i = 0; i < reqs; i++) inFlight.push(source.pwrite(reqSize * i, pattern(reqSize, 19)));

    // A synchronous write in the second half must be on the target at once (it would not be without the
    // switch of the copy mode).
    const off = 3 * (imageSize / 4);
    await source.pwrite(off, pattern(reqSize, 37));
    expect([...(await readNode(g, 'target', off, reqSize))].every((b) => b === 37)).toBe(true);

    job.cancel(false);
    await until(() => g.jobs.size === 0, 'the job to go away', 10_000, 10);
    expect(events.named('BLOCK_JOB_COMPLETED').map((e) => e.data.error)).toEqual([undefined]);
    await Promise.all(inFlight);
    expect([...(await readNode(g, 'source-node', off, reqSize))].every((b) => b === 37)).toBe(true);

    await g.close();
    expect(compareImages(s.path('source.img'), s.path('target.img'))).toBe(true);
  });
});
