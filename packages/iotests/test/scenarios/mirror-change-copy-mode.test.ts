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
 * As in QEMU, the source's throttle runs on a clock the test steps (qtest's virtual clock there, a
 * `ManualClock` here): a quarter of the load completes before the change and the rest only after it, however
 * loaded the machine is. A first version on real time failed once in CI: a stall of the test process let the
 * whole load through before the change. The target's throttle stays on real time, as QEMU's runs in another
 * process. The limits are 25x QEMU's (source 400, target 200 write IOPS). After each clock step the test waits
 * for the requests it released before it looks at the job, so a poll never sees a state from before them. The
 * throttled nodes are the iotests package's test-throttle filter (QEMU throttles the source at the device, and
 * the target behind NBD). QEMU verifies the synchronous write with qemu-io's `read -P 37`; here the bytes are
 * compared.
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror } from '@blockgraph/job-mirror';
import { createTestThrottleDriver, ManualClock } from '../../src/index.js';
import { compareImages, createRaw, describeWithTools, device, EventLog, MiB, newGraph, pattern, readNode, scratch, stepClockUntil, until, type Scratch } from './helpers.js';

describeWithTools('mirror-change-copy-mode', ['qemu-img'], () => {
  const iopsTarget = 200;
  const iopsSource = iopsTarget * 2;
  const imageSize = 1 * MiB;
  let s: Scratch;
  let g: Graph;
  let events: EventLog;
  let clock: ManualClock;

  beforeEach(() => {
    s = scratch('mirror-change-copy-mode');
    createRaw(s.path('source.img'), imageSize);
    createRaw(s.path('target.img'), imageSize);
    clock = new ManualClock();
    g = newGraph(createTestThrottleDriver({ name: 'test-throttle-virtual', clock }));
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
      driver: 'test-throttle-virtual',
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

    // Start some background requests (QEMU: 4 s of source writes at its rate; here 0.5 s of the virtual clock).
    const inFlight: Promise<void>[] = [];
    let completed = 0;
    const sourceWrite = (offset: number, data: Uint8Array): Promise<void> => {
      const w = source.pwrite(offset, data).then(() => void completed++);
      inFlight.push(w);
      return w;
    };
    // Every request the clock has released is done (each held one waits on one timer of the clock).
    const settled = () => until(() => completed === inFlight.length - clock.pendingTimers, 'the released source writes', 10_000, 1);
    const slotMs = 1000 / iopsSource;
    let reqs = iopsSource / 2;
    let reqSize = Math.floor(imageSize / reqs);
    for (let i = 0; i < reqs; i++) void sourceWrite(reqSize * i, pattern(reqSize, 7));
    // The source node was idle: the first request goes at once, every other one waits for its slot.
    await until(() => clock.pendingTimers === reqs - 1, 'the source writes to reach the throttle', 10_000, 1);

    // Let the first quarter of them through (QEMU: clock_step of a quarter of the load).
    clock.step((reqs / 4) * slotMs);
    await settled();
    expect(completed).toBe(reqs / 4 + 1);
    // There should have been new requests: the job's next iteration (real time) counts them.
    await until(() => job.query().len > imageSize, 'the job to see new requests', 10_000, 1);
    // To verify later that not all requests were completed at this point.
    const lenBeforeChange = job.query().len;
    expect(clock.pendingTimers).toBeGreaterThan(0);

    // Change the copy mode while requests are happening.
    await job.change({ copyMode: 'write-blocking' });

    // Wait until the image is actively synced, stepping the clock by 100 ms each time as QEMU does, and until the
    // background load is over: a background-mode write that lands later leaves its chunk dirty, and an active write
    // copies no unaligned part of a dirty chunk (do_sync_target_write), so the check below would depend on timing.
    const firstLoad = reqs;
    for (let step = 0; ; step++) {
      if (step === 1000) throw new Error('timed out waiting for actively-synced');
      clock.step(100);
      await settled();
      await new Promise((r) => setTimeout(r, 10));
      if (completed === firstLoad && job.query()['actively-synced'] === true) break;
    }

    // Because of throttling, not all requests had completed above.
    expect(job.query().len).toBeGreaterThan(lenBeforeChange);

    // Issue requests for a while, only touching the first half of the image.
    reqs = iopsTarget / 2;
    reqSize = Math.floor(imageSize / 2 / reqs);
    for (let i = 0; i < reqs; i++) void sourceWrite(reqSize * i, pattern(reqSize, 19));

    // A synchronous write in the second half must be on the target at once (it would not be without the
    // switch of the copy mode). It queues behind the others at the source's throttle: let them all go.
    const off = 3 * (imageSize / 4);
    let syncDone = false;
    const syncWrite = sourceWrite(off, pattern(reqSize, 37)).then(() => void (syncDone = true));
    // Requests reach the throttle only after the mirror node has prepared their copy: the clock runs free.
    await stepClockUntil(clock, () => syncDone, 'the synchronous write');
    await syncWrite;
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
