/**
 * Port of qemu-iotests 151 "Tests for active mirroring" (tests/qemu-iotests/151).
 *
 * Ported, all five cases:
 * - TestActiveMirror.testActiveIO / testActiveIOFlushed: background writes and zero writes before the job
 *   starts, while it starts, and after READY, in 1 MiB requests over eighths of the image; write-blocking
 *   mirror; complete. QEMU's own check is an assertion inside mirror.c (the dirty bitmap stays clean between
 *   READY and completion when mirror-top is the source's only parent); we have no such assertion, so the test
 *   checks it: after READY every write settles with a clean bitmap and `actively-synced` stays true. The flushed
 *   variant then requires identical images (qemu-img compare), as QEMU's tearDown does.
 * - testUnalignedActiveIO: a 1-byte write at 1 MiB + 42 into a still-dirty area of a practically stalled job
 *   (speed 1, buf-size 256 KiB); images identical after completion.
 * - testIntersectingActiveIO: the 2021 deadlock regression, with blkdebug breakpoints exactly as QEMU's script
 *   (break write_aio A / write #1 / wait_break A / writes #2 #3 / break write_aio B / write #4 / wait_break B /
 *   resume A / resume B); the job must complete and the images must be identical.
 * - TestThrottledWithNbdExport.testUnderLoad: background copying is not starved by active writes. QEMU throttles
 *   the source to 16 IOPS, writes to it through an NBD export from qemu-io processes and steps a virtual clock.
 *   Here: the source is a test-throttle node on a `ManualClock` (200 IOPS, requests served in arrival order),
 *   stepped one I/O at a time as QEMU's script does; the first half of the image is data to copy, the second half
 *   receives 4 KiB writes: 5 s of them, 4 s of clock, then 10 s more and 5 s of clock. `remaining` (len - offset)
 *   must decrease while active writes are still queued, i.e. the job issued a background read while active
 *   writes were in flight (an implementation that waits for active writes before copying, as QEMU before the
 *   fix, makes no progress here). A first version on real time could only be sure of that on an idle machine.
 *   No NBD (no NBD export in blockgraph yet): the writers are requests on a device of the source node, which is
 *   what an NBD export's requests become.
 *
 * Not ported: nothing. Sizes are smaller (16 MiB instead of 128 MiB) to keep the run short; the shape of the
 * I/O (1 MiB requests over eighths of the image) is QEMU's. Formats: raw only (qcow2 comes with driver-qcow2).
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { BlockBackend, Graph } from '@blockgraph/block-core';
import { startMirror, type MirrorJob } from '@blockgraph/job-mirror';
import { createTestThrottleDriver, findBlkdebug, ManualClock } from '../../src/index.js';
import {
  compareImages,
  createRaw,
  describeWithTools,
  device,
  EventLog,
  KiB,
  MiB,
  newGraph,
  pattern,
  remaining,
  scratch,
  sleep,
  stepClockUntil,
  until,
  type Scratch,
} from './helpers.js';

describeWithTools('iotest 151: active mirroring (TestActiveMirror)', ['qemu-img'], () => {
  const imageLen = 16 * MiB;
  let s: Scratch;
  let g: Graph;
  let source: BlockBackend;
  let events: EventLog;
  let sourceImg: string;
  let targetImg: string;

  beforeEach(async () => {
    s = scratch('151');
    sourceImg = s.path('source.raw');
    targetImg = s.path('target.raw');
    createRaw(sourceImg, imageLen);
    createRaw(targetImg, imageLen);
    g = newGraph();
    events = new EventLog(g);
    // blk_source: raw format over blkdebug over file, so that breakpoints can be set.
    await g.addNode({ driver: 'raw', nodeName: 'source-node', file: { driver: 'blkdebug', image: { driver: 'file', filename: sourceImg } } });
    await g.addNode({ driver: 'raw', nodeName: 'target-node', file: { driver: 'file', filename: targetImg } });
    source = device(g, 'source-node', 'source');
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  const mirror = (extra: Record<string, unknown> = {}): Promise<MirrorJob> =>
    startMirror(g, {
      jobId: 'mirror',
      filterNodeName: 'mirror-node',
      device: 'source-node',
      target: 'target-node',
      sync: 'full',
      copyMode: 'write-blocking',
      ...extra,
    });

  /** QMPTestCase.complete_and_wait(wait_ready=...): complete, BLOCK_JOB_COMPLETED without error. */
  async function completeAndWait(job: MirrorJob, waitReady = true): Promise<void> {
    if (waitReady) await events.wait('BLOCK_JOB_READY', { device: 'mirror' });
    job.complete();
    const done = await events.wait('BLOCK_JOB_COMPLETED', { device: 'mirror' });
    expect(done.data.error).toBeUndefined();
    await job.waitFinished();
    expect(g.jobs.size).toBe(0);
    // The device now uses the target; the mirror node is gone.
    expect(source.node.nodeName).toBe('target-node');
    expect(g.findNode('mirror-node')).toBeUndefined();
  }

  async function doActiveIO(syncSourceAndTarget: boolean): Promise<void> {
    const eighth = imageLen / 8;
    // Fill the source image
    await source.pwrite(0, pattern(imageLen, 1));

    // Start some background requests
    const inFlight: Promise<void>[] = [];
    for (let off = eighth; off < 3 * eighth; off += MiB) inFlight.push(source.pwrite(off, pattern(MiB, 2)));
    for (let off = 2 * eighth; off < 3 * eighth; off += MiB) inFlight.push(source.pwriteZeroes(off, MiB));

    // Start the block job
    const job = await mirror();

    // Start some more requests
    for (let off = 3 * eighth; off < 5 * eighth; off += MiB) inFlight.push(source.pwrite(off, pattern(MiB, 3)));
    for (let off = 4 * eighth; off < 5 * eighth; off += MiB) inFlight.push(source.pwriteZeroes(off, MiB));

    // Wait for the READY event
    await events.wait('BLOCK_JOB_READY', { device: 'mirror' });
    await Promise.all(inFlight.splice(0));
    expect(job.bitmap.count()).toBe(0);

    // Now start some final requests; all of these (which land on the source) should be settled using the
    // active mechanism. QEMU asserts in mirror.c that the dirty bitmap stays clean between READY and
    // COMPLETED; we check it after each request.
    const checked = (p: Promise<void>): Promise<void> =>
      p.then(() => {
        expect(job.bitmap.count()).toBe(0);
      });
    for (let off = 5 * eighth; off < 7 * eighth; off += MiB) inFlight.push(checked(source.pwrite(off, pattern(MiB, 3))));
    for (let off = 6 * eighth; off < 7 * eighth; off += MiB) inFlight.push(checked(source.pwriteZeroes(off, MiB)));

    if (syncSourceAndTarget) {
      // If source and target should be in sync after the mirror, we have to flush before completion.
      await Promise.all(inFlight.splice(0));
      await source.flush();
      expect(job.query()['actively-synced']).toBe(true);
    }
    await completeAndWait(job, false);
    await Promise.all(inFlight);

    if (syncSourceAndTarget) {
      await g.close();
      expect(compareImages(sourceImg, targetImg)).toBe(true);
    }
  }

  it('testActiveIO', async () => {
    await doActiveIO(false);
  });

  it('testActiveIOFlushed', async () => {
    await doActiveIO(true);
  });

  it('testUnalignedActiveIO', async () => {
    // Fill the source image
    await source.pwrite(0, pattern(2 * MiB, 1));

    // Start the block job (very slowly)
    const job = await mirror({ bufSize: MiB / 4, speed: 1 });

    // Start an unaligned request to a dirty area
    await source.pwrite(MiB + 42, pattern(1, 2));

    // Let the job finish
    job.setSpeed(0);
    await completeAndWait(job);

    await g.close();
    expect(compareImages(sourceImg, targetImg)).toBe(true);
  });

  it('testIntersectingActiveIO (deadlock regression, blkdebug breakpoints)', async () => {
    // Fill the source image
    await source.pwrite(0, pattern(2 * MiB, 1));

    // Start the block job (very slowly)
    const job = await mirror({ speed: 1 });
    // Let the first (rate-limited) iteration's operations finish, so only the guest writes intersect below.
    await until(() => job.progress.current > 0, 'first background copy');

    const dbg = findBlkdebug(source);
    const writes: Promise<void>[] = [];
    dbg.break('write_aio', 'A');
    writes.push(source.pwrite(0, pattern(MiB, 0xcd))); // 1
    await dbg.waitBreak('A');
    writes.push(source.pwrite(0, pattern(2 * MiB, 0xcd))); // 2
    writes.push(source.pwrite(0, pattern(2 * MiB, 0xcd))); // 3

    // Now 2 and 3 wait for 1 in the mirror's conflict wait

    dbg.break('write_aio', 'B');
    writes.push(source.pwrite(MiB, pattern(2 * MiB, 0xcd))); // 4
    await dbg.waitBreak('B');

    // 4 doesn't wait for 2 and 3, because they didn't yet mark their range in flight. So nothing prevents 4
    // from going on except breakpoint B.
    expect(dbg.suspendedTags()).toEqual(['A', 'B']);

    dbg.resume('A');

    // 1 is done, so 2 and 3 look for conflicts again and find 4's range in flight. In QEMU before the fix, 2
    // and 3 then waited for each other (a deadlock); they must wait for 4.
    await sleep(20);

    dbg.resume('B');

    // After 4, one of 2 and 3 goes first and marks its range, so the other waits for it.
    await Promise.all(writes);

    job.setSpeed(0);
    await completeAndWait(job);

    await g.close();
    expect(compareImages(sourceImg, targetImg)).toBe(true);
  });
});

describeWithTools('iotest 151: background progress under load (TestThrottledWithNbdExport)', ['qemu-img'], () => {
  let s: Scratch;
  let g: Graph;

  beforeEach(() => {
    s = scratch('151-load');
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  it('testUnderLoad: remaining decreases while active writes saturate the source', async () => {
    const imageLen = 8 * MiB;
    const iops = 200;
    const slotMs = 1000 / iops;
    createRaw(s.path('source.raw'), imageLen);
    createRaw(s.path('target.raw'), imageLen);
    // QEMU's throttle runs on qtest's virtual clock, which the test steps; so does this one.
    const clock = new ManualClock();
    g = newGraph(createTestThrottleDriver({ name: 'test-throttle-virtual', clock }));
    await g.addNode({
      driver: 'test-throttle-virtual',
      nodeName: 'source-node',
      iopsTotal: iops,
      file: { driver: 'raw', file: { driver: 'file', filename: s.path('source.raw') } },
    });
    await g.addNode({ driver: 'raw', nodeName: 'target-node', file: { driver: 'file', filename: s.path('target.raw') } });
    // The NBD export's role: a writer on the source node.
    const exp = device(g, 'source-node', 'exp0');
    /** qtest clock_step, one I/O slot at a time; the event loop runs in between (as between qtest commands). */
    const stepSlots = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        clock.step(slotMs);
        await sleep(1);
      }
    };

    // Fill the first half of the source image; the second half is where active requests occur, so active
    // mirroring itself does not make progress towards READY.
    let filled = false;
    void exp.pwrite(0, pattern(imageLen / 2, 1)).then(() => void (filled = true));
    await stepClockUntil(clock, () => filled, 'the first half to be written', slotMs);

    const job = await startMirror(g, {
      jobId: 'mirror',
      filterNodeName: 'mirror-node',
      device: 'source-node',
      target: 'target-node',
      sync: 'full',
      copyMode: 'write-blocking',
      bufSize: 64 * KiB,
    });

    let activeOffset = imageLen / 2;
    const activeLen = 4 * KiB;
    const requests: Promise<void>[] = [];
    let pending = 0;
    const burst = (n: number): void => {
      for (let i = 0; i < n; i++) {
        pending++;
        requests.push(exp.pwrite(activeOffset, pattern(activeLen, 42)).finally(() => pending--));
        // Stay in the second half of the image.
        activeOffset = activeOffset + activeLen < imageLen ? activeOffset + activeLen : imageLen / 2;
      }
    };

    await stepClockUntil(clock, () => job.progress.current > 0, 'the first background copy', slotMs);

    // Enough requests to saturate the node for 5 s of the clock. Step it by 4 s, one I/O at a time: the job
    // issues background reads meanwhile, which queue behind the active requests issued earlier.
    burst(5 * iops);
    await stepSlots(4 * iops);
    // Note how much remains to be done until the mirror job is finished.
    const startRemaining = remaining(job);

    // Many more active requests (10 s of them); after 5 more seconds the background reads queued before them
    // must have been served, while active requests are still queued.
    burst(10 * iops);
    await stepSlots(5 * iops);
    const endRemaining = remaining(job);

    // See that indeed progress was being made on the job, even while the node was saturated with active
    // requests.
    expect(job.status).toBe('running');
    expect(startRemaining - endRemaining).toBeGreaterThan(0);
    expect(pending).toBeGreaterThan(0);

    // As QEMU's tearDown: cancel, and keep the clock going (1 s a step) until the job is gone; its last
    // background read is queued behind the active requests.
    job.cancel(true);
    let finished = false;
    void job.waitFinished().then(() => void (finished = true));
    await stepClockUntil(clock, () => finished, 'the job to go away', 1000);
    await stepClockUntil(clock, () => pending === 0, 'the active writes');
    await Promise.all(requests);
  });
});
