/**
 * Port of qemu-iotests 041 "Tests for image mirroring" (tests/qemu-iotests/041), the blockdev-mirror cases
 * that need no qcow2, no quorum and no drive-mirror.
 *
 * Ported:
 * - TestSingleBlockdev (image lengths 1 MiB, 0 and 1025 KiB, as TestSingleBlockdev / ...ZeroLength /
 *   ...UnalignedLength): test_complete (the device uses the target afterwards; images identical), test_cancel
 *   (force: BLOCK_JOB_CANCELLED, the device stays on the source), test_cancel_after_ready (soft cancel in READY:
 *   BLOCK_JOB_COMPLETED, no pivot, images identical), test_pause (offset does not move while paused),
 *   test_small_buffer (buf-size 4096 is rounded up), test_device_not_found, test_mirror_to_self,
 *   test_small_target / test_large_target ('Source and target image have different sizes').
 * - TestReadErrors / TestWriteErrors with blkdebug and QEMU's own blkdebug config (read_aio / write_aio, errno 5,
 *   once, sector = 1 MiB / 512, state toggled by set-state): report (BLOCK_JOB_ERROR, then BLOCK_JOB_COMPLETED
 *   with 'Input/output error', never READY), ignore (BLOCK_JOB_ERROR, the job goes on to READY and completes),
 *   stop (BLOCK_JOB_ERROR, status 'paused' with io-status 'failed'; resume clears it; READY; complete).
 * - TestSetSpeed: default speed 0, set-speed accepted and reported, speed at start, invalid speed -1 at start
 *   and in set-speed (QEMU 7.2's message).
 * - TestUnbackedSource.test_blockdev_full (a target with old data is overwritten; images identical).
 * - TestGranularity: granularity 8192 on a fully written 10 MiB image: READY, complete, images identical.
 * - TestRepairQuorum's replaces errors without quorum: a nonexistent replaces node (QEMU 7.2: "Failed to find node
 *   with node-name='img77'") and a node that is not in the source's chain ("Cannot replace ... abrupt change of
 *   visible data").
 * - TestReplaces.test_replace_filter: copy-on-read filter0 over filter1 over null-co, replaces filter1; after
 *   completion filter0's file is the target.
 * - TestOrphanedSource: test_success, test_failing_permissions (read-only target), test_failing_permission_in_
 *   complete (blkdebug take-child-perms / unshare-child-perms make the pivot fail; every node but the mirror
 *   filter is still there). test_no_job_id differs by design: blockgraph's job ID defaults to the device's node
 *   name (job-mirror README); QEMU 7.2 fails with "Invalid job ID ''" for a node without a BlockBackend.
 * - TestFilters.test_explicit_mirror_filter: with filter-node-name the device sees the named mirror filter.
 *
 * Not ported (and why):
 * - drive-mirror variants (TestSingleDrive*, test_image_not_found, test_small_buffer2, mode=existing/
 *   absolute-paths, TestThrottleDriveMirror): blockgraph has blockdev-mirror only.
 * - Anything needing qcow2 (backing files, cluster sizes): test_large_cluster (both), TestMirrorNoBacking,
 *   TestMirrorResized, TestReadErrors.test_large_cluster, TestFilters.test_cor — they come with driver-qcow2.
 * - TestRepairQuorum (success paths, snapshots, NBD parents): no quorum driver.
 * - test_implicit_node / TestFilters.test_implicit_mirror_filter: need query-block's hiding of implicit nodes.
 * - test_medium_not_found: no CD-ROM devices. TestThrottle: needs QEMU's virtual clock (qtest clock_step).
 * The error tests use a raw image over blkdebug instead of a qcow2 image whose backing file is blkdebug.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlockError, type BlockBackend, type Graph } from '@blockgraph/block-core';
import { startMirror, type MirrorJob } from '@blockgraph/job-mirror';
import { parseBlkdebugConfig } from '../../src/index.js';
import {
  compareImages,
  createImage,
  createRaw,
  describeWithTools,
  device,
  EventLog,
  KiB,
  MiB,
  newGraph,
  readNode,
  scratch,
  sleep,
  until,
  writePattern,
  type Scratch,
} from './helpers.js';

function errorOf(fn: () => unknown): BlockError {
  try {
    fn();
  } catch (e) {
    return e as BlockError;
  }
  throw new Error('expected an error');
}

/** QMPTestCase helpers over a graph with one job. */
function qmpCase(g: () => Graph, events: () => EventLog) {
  return {
    assertNoActiveBlockJobs(): void {
      expect([...g().jobs.values()].map((j) => j.id)).toEqual([]);
    },
    /** complete_and_wait(): optionally wait for READY, complete, BLOCK_JOB_COMPLETED without error. */
    async completeAndWait(job: MirrorJob, waitReady = true): Promise<void> {
      if (waitReady) await events().wait('BLOCK_JOB_READY', { device: job.id });
      job.complete();
      const e = await events().wait('BLOCK_JOB_COMPLETED', { device: job.id });
      expect(e.data.error).toBeUndefined();
      await job.waitFinished();
      expect(g().jobs.size).toBe(0);
    },
    /** cancel_and_wait(force): BLOCK_JOB_CANCELLED, no job left. */
    async cancelAndWait(job: MirrorJob, force = false): Promise<void> {
      job.cancel(force);
      const e = await events().wait('BLOCK_JOB_CANCELLED', { device: job.id });
      expect(e.data.type).toBe('mirror');
      await job.waitFinished();
      expect(g().jobs.size).toBe(0);
    },
    /** wait_ready_and_cancel(): READY, soft cancel, BLOCK_JOB_COMPLETED without error. */
    async waitReadyAndCancel(job: MirrorJob): Promise<void> {
      await events().wait('BLOCK_JOB_READY', { device: job.id });
      job.cancel(false);
      const e = await events().wait('BLOCK_JOB_COMPLETED', { device: job.id });
      expect(e.data.error).toBeUndefined();
      await job.waitFinished();
      expect(g().jobs.size).toBe(0);
    },
  };
}

for (const imageLen of [MiB, 0, 1025 * KiB]) {
  const title = imageLen === 0 ? 'ZeroLength' : imageLen === MiB ? '' : 'UnalignedLength';
  describeWithTools(`iotest 041: TestSingleBlockdev${title} (${imageLen} bytes)`, ['qemu-img'], () => {
    let s: Scratch;
    let g: Graph;
    let events: EventLog;
    let drive0: BlockBackend;
    const q = qmpCase(() => g, () => events);

    beforeEach(async () => {
      s = scratch('041');
      createImage(s.path('test.img'), imageLen);
      createRaw(s.path('target.img'), imageLen);
      g = newGraph();
      events = new EventLog(g);
      await g.addNode({ driver: 'raw', nodeName: 'top', file: { driver: 'file', filename: s.path('test.img') } });
      drive0 = device(g, 'top', 'drive0');
      await g.addNode({ driver: 'raw', nodeName: 'node1', file: { driver: 'file', filename: s.path('target.img') } });
    });

    afterEach(async () => {
      await g.close();
      s.cleanup();
    });

    const mirror = (extra: Record<string, unknown> = {}): Promise<MirrorJob> =>
      startMirror(g, { jobId: 'drive0', device: 'top', sync: 'full', target: 'node1', ...extra });

    it('test_complete', async () => {
      q.assertNoActiveBlockJobs();
      const job = await mirror();
      await q.completeAndWait(job);
      // query-block: return[0]/inserted/file is the target image.
      expect(drive0.node.nodeName).toBe('node1');
      expect(drive0.node.filename).toBe(s.path('target.img'));
      await g.close();
      expect(compareImages(s.path('test.img'), s.path('target.img'))).toBe(true);
    });

    it('test_cancel', async () => {
      q.assertNoActiveBlockJobs();
      const job = await mirror();
      await q.cancelAndWait(job, true);
      expect(drive0.node.filename).toBe(s.path('test.img'));
    });

    it('test_cancel_after_ready', async () => {
      q.assertNoActiveBlockJobs();
      const job = await mirror();
      await q.waitReadyAndCancel(job);
      expect(drive0.node.filename).toBe(s.path('test.img'));
      await g.close();
      expect(compareImages(s.path('test.img'), s.path('target.img'))).toBe(true);
    });

    it('test_pause', async () => {
      q.assertNoActiveBlockJobs();
      const job = await mirror();
      // pause_job(): pause, wait until the job is parked.
      job.pause();
      await until(() => job.status === 'paused' || job.status === 'standby', 'the job to pause');
      const offset = job.query().offset;
      await sleep(500);
      expect(job.query().offset).toBe(offset);
      job.resume();
      await q.completeAndWait(job);
      await g.close();
      expect(compareImages(s.path('test.img'), s.path('target.img'))).toBe(true);
    });

    it('test_small_buffer (buf-size 4096 is rounded up automatically)', async () => {
      q.assertNoActiveBlockJobs();
      const job = await mirror({ bufSize: 4096 });
      expect(job.bufSize).toBe(job.granularity);
      await q.completeAndWait(job);
      expect(drive0.node.filename).toBe(s.path('target.img'));
      await g.close();
      expect(compareImages(s.path('test.img'), s.path('target.img'))).toBe(true);
    });

    it('test_device_not_found', async () => {
      await expect(startMirror(g, { jobId: 'drive0', device: 'nonexistent', sync: 'full', target: 'node1' })).rejects.toThrow(
        "Cannot find device='nonexistent' nor node-name='nonexistent'",
      );
    });

    it('test_mirror_to_self', async () => {
      await expect(startMirror(g, { jobId: 'job0', device: 'node1', sync: 'full', target: 'node1' })).rejects.toThrow(
        "Can't mirror node into itself",
      );
    });

    if (imageLen > 0) {
      for (const [name, size] of [['test_small_target', imageLen / 2], ['test_large_target', imageLen * 2]] as const) {
        it(name, async () => {
          // block_resize the target, then run the job: it fails at start.
          const be = g.backend('node1', { perm: 0x8, shared: 0xf });
          await be.truncate(Math.floor(size / 512) * 512);
          be.remove();
          const job = await mirror({ jobId: 'job0', autoDismiss: false });
          const e = await events.wait('BLOCK_JOB_COMPLETED', { device: 'job0' });
          expect(e.data.error).toBe('Source and target image have different sizes');
          expect(job.status).toBe('concluded');
          job.dismiss();
        });
      }
    }
  });
}

/** The blkdebug config of TestReadErrors / TestWriteErrors, as the Python test writes it. */
function errorConfig(event: 'read_aio' | 'write_aio', errno: number): string {
  const MIRROR_GRANULARITY = MiB;
  return `
[inject-error]
state = "1"
event = "${event}"
errno = "${errno}"
immediately = "off"
once = "on"
sector = "${MIRROR_GRANULARITY / 512}"

[set-state]
state = "1"
event = "${event}"
new_state = "2"

[set-state]
state = "2"
event = "${event}"
new_state = "1"
`;
}

for (const kind of ['read', 'write'] as const) {
  describeWithTools(`iotest 041: Test${kind === 'read' ? 'Read' : 'Write'}Errors`, ['qemu-img'], () => {
    const imageLen = 2 * MiB;
    let s: Scratch;
    let g: Graph;
    let events: EventLog;
    const q = qmpCase(() => g, () => events);

    beforeEach(async () => {
      s = scratch('041-err');
      createImage(s.path('test.img'), imageLen);
      createRaw(s.path('target.img'), imageLen);
      g = newGraph();
      events = new EventLog(g);
      const rules = parseBlkdebugConfig(errorConfig(kind === 'read' ? 'read_aio' : 'write_aio', 5));
      const file = (name: string) => ({ driver: 'file', filename: s.path(name) });
      const debug = (name: string) => ({ driver: 'blkdebug', image: file(name), ...rules });
      await g.addNode({ driver: 'raw', nodeName: 'drive0-node', file: kind === 'read' ? debug('test.img') : file('test.img') });
      await g.addNode({ driver: 'raw', nodeName: 'target', file: kind === 'write' ? debug('target.img') : file('target.img') });
      device(g, 'drive0-node', 'drive0');
    });

    afterEach(async () => {
      await g.close();
      s.cleanup();
    });

    const mirror = (extra: Record<string, unknown> = {}): Promise<MirrorJob> =>
      startMirror(g, { jobId: 'drive0', device: 'drive0', sync: 'full', target: 'target', ...extra });

    it(`test_report_${kind}`, async () => {
      q.assertNoActiveBlockJobs();
      const job = await mirror();
      await job.waitFinished();
      const names = events.events.map((e) => e.event);
      expect(names).not.toContain('BLOCK_JOB_READY');
      const error = events.named('BLOCK_JOB_ERROR');
      expect(error.length).toBeGreaterThan(0);
      expect(error[0]!.data).toEqual({ device: 'drive0', operation: kind, action: 'report' });
      const completed = events.named('BLOCK_JOB_COMPLETED');
      expect(completed.length).toBe(1);
      expect(names.indexOf('BLOCK_JOB_ERROR')).toBeLessThan(names.indexOf('BLOCK_JOB_COMPLETED'));
      expect(completed[0]!.data).toMatchObject({ type: 'mirror', device: 'drive0', error: 'Input/output error' });
      for (const e of events.named('JOB_STATUS_CHANGE')) expect(e.data.id).toBe('drive0');
      q.assertNoActiveBlockJobs();
    });

    it(`test_ignore_${kind}`, async () => {
      q.assertNoActiveBlockJobs();
      const job = await mirror(kind === 'read' ? { onSourceError: 'ignore' } : { onTargetError: 'ignore' });
      const e = await events.wait('BLOCK_JOB_ERROR');
      // The first event that is not a status change is the error.
      const first = events.events.find((x) => x.event !== 'JOB_STATUS_CHANGE')!;
      expect(first).toBe(e);
      expect(e.data).toEqual({ device: 'drive0', operation: kind, action: 'ignore' });
      expect(['running', 'ready']).toContain(job.query().status);
      expect(job.query().paused).toBe(false);
      await q.completeAndWait(job);
    });

    it(`test_stop_${kind}`, async () => {
      q.assertNoActiveBlockJobs();
      const job = await mirror(kind === 'read' ? { onSourceError: 'stop' } : { onTargetError: 'stop' });
      let error = false;
      const errorSeen = events.wait('BLOCK_JOB_ERROR', { device: 'drive0' }).then(async (e) => {
        expect(e.data).toEqual({ device: 'drive0', operation: kind, action: 'stop' });
        if (job.query().status !== 'paused') await events.wait('JOB_STATUS_CHANGE', { id: 'drive0', status: 'paused' });
        const info = job.query();
        expect(info.status).toBe('paused');
        expect(info.paused).toBe(true);
        expect(info['io-status']).toBe('failed');
        job.resume();
        // QEMU re-enters the job inside block-job-resume, so query-block-jobs already shows it running; here the
        // job goes on in a later microtask: the I/O status is reset at once, the status with the next event.
        expect(job.query()['io-status']).toBe('ok');
        await events.wait('JOB_STATUS_CHANGE', { id: 'drive0' });
        const after = job.query();
        expect(['running', 'ready']).toContain(after.status);
        expect(after['io-status']).toBe('ok');
        error = true;
      });
      const ready = await events.wait('BLOCK_JOB_READY', { device: 'drive0' });
      await errorSeen;
      expect(error).toBe(true);
      expect(ready.data.device).toBe('drive0');
      const info = job.query();
      expect(info.status).toBe('ready');
      expect(info['io-status']).toBe('ok');
      await q.completeAndWait(job, false);
      q.assertNoActiveBlockJobs();
    });
  });
}

describeWithTools('iotest 041: TestSetSpeed, TestUnbackedSource, TestGranularity', ['qemu-img'], () => {
  let s: Scratch;
  let g: Graph;
  let events: EventLog;
  const q = qmpCase(() => g, () => events);

  beforeEach(() => {
    s = scratch('041-misc');
    g = newGraph();
    events = new EventLog(g);
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  async function setSpeedSetup(): Promise<void> {
    createRaw(s.path('test.img'), 16 * MiB);
    await g.addNode({ driver: 'raw', nodeName: 'drive0-node', file: { driver: 'file', filename: s.path('test.img') } });
    device(g, 'drive0-node', 'drive0');
    // An empty target that can be zeroed cheaply, as QEMU's new qcow2 target: nothing to copy but zeroes.
    createRaw(s.path('target.img'), 16 * MiB);
    await g.addNode({ driver: 'raw', nodeName: 'target', discard: 'unmap', file: { driver: 'file', filename: s.path('target.img') } });
  }

  it('test_set_speed', async () => {
    await setSpeedSetup();
    q.assertNoActiveBlockJobs();
    let job = await startMirror(g, { jobId: 'drive0', device: 'drive0', sync: 'full', target: 'target' });
    // Default speed is 0
    expect(job.query()).toMatchObject({ device: 'drive0', speed: 0 });
    job.setSpeed(8 * MiB);
    // Ensure the speed we set was accepted
    expect(job.query()).toMatchObject({ device: 'drive0', speed: 8 * MiB });
    await q.waitReadyAndCancel(job);

    // Check setting speed in drive-mirror works
    job = await startMirror(g, { jobId: 'drive0', device: 'drive0', sync: 'full', target: 'target', speed: 4 * MiB });
    expect(job.query()).toMatchObject({ device: 'drive0', speed: 4 * MiB });
    await q.waitReadyAndCancel(job);
  });

  it('test_set_speed_invalid', async () => {
    await setSpeedSetup();
    q.assertNoActiveBlockJobs();
    await expect(startMirror(g, { jobId: 'drive0', device: 'drive0', sync: 'full', target: 'target', speed: -1 })).rejects.toThrow(
      "Parameter 'speed' expects a non-negative value",
    );
    q.assertNoActiveBlockJobs();
    const job = await startMirror(g, { jobId: 'drive0', device: 'drive0', sync: 'full', target: 'target' });
    expect(errorOf(() => job.setSpeed(-1)).message).toBe("Parameter 'speed' expects a non-negative value");
    await q.waitReadyAndCancel(job);
  });

  it('TestUnbackedSource.test_blockdev_full', async () => {
    const imageLen = 2 * MiB;
    createRaw(s.path('test.img'), imageLen);
    createRaw(s.path('target.img'), imageLen);
    writePattern(s.path('target.img'), 0, 64 * KiB, 42);
    await g.addNode({ driver: 'raw', nodeName: 'drive0', file: { driver: 'file', filename: s.path('test.img') } });
    await g.addNode({ driver: 'raw', nodeName: 'target', file: { driver: 'file', filename: s.path('target.img') } });
    q.assertNoActiveBlockJobs();
    const job = await startMirror(g, { jobId: 'drive0', device: 'drive0', sync: 'full', target: 'target' });
    await q.completeAndWait(job);
    q.assertNoActiveBlockJobs();
    await g.deleteNode('drive0');
    await g.deleteNode('target');
    expect(compareImages(s.path('test.img'), s.path('target.img'))).toBe(true);
  });

  it('TestGranularity.test_granularity (8192)', async () => {
    const imageLen = 10 * MiB;
    createRaw(s.path('test.img'), imageLen);
    writePattern(s.path('test.img'), 0, imageLen, 0xcd); // qemu-io -c 'write 0 10M'
    createRaw(s.path('target.img'), imageLen);
    await g.addNode({ driver: 'raw', nodeName: 'drive0-node', file: { driver: 'file', filename: s.path('test.img') } });
    device(g, 'drive0-node', 'drive0');
    await g.addNode({ driver: 'raw', nodeName: 'target', file: { driver: 'file', filename: s.path('target.img') } });
    q.assertNoActiveBlockJobs();
    const job = await startMirror(g, { jobId: 'drive0', device: 'drive0', sync: 'full', target: 'target', granularity: 8192 });
    expect(job.granularity).toBe(8192);
    // Failures would manifest as COMPLETED/ERROR before READY.
    await events.wait('BLOCK_JOB_READY', { device: 'drive0' });
    expect(events.events.filter((e) => e.event !== 'JOB_STATUS_CHANGE').map((e) => e.event)).toEqual(['BLOCK_JOB_READY']);
    await q.completeAndWait(job, false);
    q.assertNoActiveBlockJobs();
    await g.close();
    expect(compareImages(s.path('test.img'), s.path('target.img'))).toBe(true);
  });
});

describe('iotest 041: replaces, orphaned source and filters (null-co)', () => {
  let g: Graph;
  let events: EventLog;
  const q = qmpCase(() => g, () => events);

  beforeEach(() => {
    g = newGraph();
    events = new EventLog(g);
  });

  afterEach(async () => {
    await g.close();
  });

  it('TestReplaces.test_replace_filter', async () => {
    await g.addNode({ driver: 'copy-on-read', nodeName: 'filter0', file: { driver: 'copy-on-read', nodeName: 'filter1', file: { driver: 'null-co' } } });
    await g.addNode({ nodeName: 'target', driver: 'null-co' });
    const job = await startMirror(g, { jobId: 'mirror', device: 'filter0', target: 'target', sync: 'full', replaces: 'filter1' });
    await q.completeAndWait(job);
    // assert_block_path('filter0', '/file', 'target')
    expect(g.getNode('filter0').file!.node.nodeName).toBe('target');
  });

  it('TestRepairQuorum.test_nonexistent_replaces / test_with_other_parent (errors)', async () => {
    await g.addNode({ driver: 'copy-on-read', nodeName: 'filter0', file: { driver: 'copy-on-read', nodeName: 'filter1', file: { driver: 'null-co' } } });
    await g.addNode({ nodeName: 'img1', driver: 'null-co' });
    await g.addNode({ nodeName: 'repair0', driver: 'null-co' });
    // QEMU 7.2 wording (check_to_replace_node()).
    await expect(startMirror(g, { jobId: 'job0', device: 'filter0', sync: 'full', target: 'repair0', replaces: 'img77' })).rejects.toThrow(
      "Failed to find node with node-name='img77'",
    );
    await expect(startMirror(g, { jobId: 'job0', device: 'filter0', sync: 'full', target: 'repair0', replaces: 'img1' })).rejects.toThrow(
      "Cannot replace 'img1' by a node mirrored from 'filter0', because it cannot be guaranteed that doing so would not lead to an abrupt change of visible data",
    );
    q.assertNoActiveBlockJobs();
    expect(g.getNode('filter0').parents).toEqual([]);
  });

  it('TestOrphanedSource.test_success / test_failing_permissions / test_no_job_id (differs by design)', async () => {
    await g.addNode({ nodeName: 'src', driver: 'null-co' });
    await g.addNode({ nodeName: 'dest', driver: 'null-co' });
    await g.addNode({ nodeName: 'dest-ro', driver: 'null-co', readOnly: true });

    // test_failing_permissions: a read-only target. (QEMU 7.2: "Block node is read-only".)
    await expect(startMirror(g, { jobId: 'job', device: 'src', sync: 'full', target: 'dest-ro' })).rejects.toThrow(
      "Read-only block node 'dest-ro' cannot support read-write users",
    );
    q.assertNoActiveBlockJobs();
    expect(g.getNode('src').parents).toEqual([]);

    // test_no_job_id: QEMU refuses ("Invalid job ID ''"); blockgraph names the job after the node.
    const unnamed = await startMirror(g, { device: 'src', sync: 'full', target: 'dest' });
    expect(unnamed.id).toBe('src');
    await q.cancelAndWait(unnamed, true);

    // test_success
    const job = await startMirror(g, { jobId: 'job', device: 'src', sync: 'full', target: 'dest' });
    await q.completeAndWait(job);
  });

  it('TestOrphanedSource.test_failing_permission_in_complete', async () => {
    await g.addNode({ nodeName: 'src', driver: 'null-co' });
    await g.addNode({ nodeName: 'dest', driver: 'null-co' });
    // Unshare consistent-read on the target (the mirror job does not care)
    await g.addNode({ driver: 'blkdebug', nodeName: 'dest-perm', image: 'dest', unshareChildPerms: ['consistent-read'] });
    const job = await startMirror(g, { jobId: 'job', device: 'src', sync: 'full', target: 'dest', filterNodeName: 'mirror-filter' });
    // Require consistent-read on the source (added once the job runs)
    await g.addNode({ driver: 'blkdebug', nodeName: 'src-perm', image: 'src', 'take-child-perms': ['consistent-read'] });
    // While completing, mirror tries to replace src by dest, which must fail because src-perm requires
    // consistent-read but dest-perm does not share it; the job fails instead of completing.
    await events.wait('BLOCK_JOB_READY', { device: 'job' });
    job.complete();
    const done = await events.wait('BLOCK_JOB_COMPLETED', { device: 'job' });
    // QEMU reports strerror(EPERM), 'Operation not permitted', and prints the conflict on stderr; blockgraph's job
    // error is the conflict itself (code EPERM), worded as QEMU's.
    expect(job.error?.code).toBe('EPERM');
    expect(done.data.error).toBe(
      "Permission conflict on node 'dest': permissions 'consistent read' are both required by node 'src-perm' (uses node 'dest' as 'image' child) and unshared by node 'dest-perm' (uses node 'dest' as 'image' child).",
    );
    await job.waitFinished();
    // All our nodes are still there, except for the mirror filter.
    for (const n of ['src', 'src-perm', 'dest', 'dest-perm']) expect(g.findNode(n), `${n} disappeared`).toBeDefined();
    expect(g.findNode('mirror-filter'), 'Mirror filter node did not disappear').toBeUndefined();
    expect(g.getNode('src-perm').filteredChild()!.node.nodeName).toBe('src');
  });

  it('TestFilters.test_explicit_mirror_filter', async () => {
    await g.addNode({ nodeName: 'source', driver: 'null-co', size: MiB });
    await g.addNode({ nodeName: 'target', driver: 'null-co', size: MiB });
    const virtio = device(g, 'source', 'virtio');
    const job = await startMirror(g, { jobId: 'mirror', device: 'source', target: 'target', sync: 'top', filterNodeName: 'mirror-filter' });
    // With a node-name given to it, the mirror filter is visible to the device.
    expect(virtio.node.nodeName).toBe('mirror-filter');
    expect(virtio.node.filteredChild()!.node.nodeName).toBe('source');
    await q.completeAndWait(job);
    expect(virtio.node.nodeName).toBe('target');
    expect(await readNode(g, 'target', 0, 4096)).toHaveLength(4096);
  });
});
