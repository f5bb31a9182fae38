/**
 * Port of qemu-iotests 041 "Tests for image mirroring" (tests/qemu-iotests/041), the cases that need qcow2 — the
 * format QEMU runs 041 with. iotest-041.test.ts has the rest on raw images.
 *
 * Ported:
 * - TestSingleBlockdev on qcow2 (image lengths 1 MiB, 0 and 1025 KiB): the source test.img is a qcow2 overlay
 *   (node 'top') of backing.img (node 'base', iotests.create_image(): every sector holds its number), the
 *   target a qcow2 overlay of the same backing file, opened with it (node 'node1'): test_complete (the device
 *   uses target.img afterwards), test_cancel (force), test_cancel_after_ready, test_pause, test_small_buffer; the
 *   images compare identical (qemu-img compare) where QEMU compares them.
 * - TestSingleDrive.test_small_buffer2: a target with 1 MiB clusters and buf-size 64 KiB.
 * - TestSingleDrive.test_large_cluster, TestMirrorNoBacking.test_large_cluster: the target's clusters (1 MiB,
 *   2 MiB) are larger than the granularity (64 KiB) and it names a backing file it has not opened: it cannot
 *   copy-on-write, so the job copies whole target clusters (mirror.c's cow_bitmap).
 * - TestMirrorNoBacking.test_complete / test_cancel: an existing target naming the source's backing file.
 * - TestMirrorResized.test_complete_top / test_complete_full: a source overlay resized to 2 MiB over a 1 MiB
 *   backing file.
 * - TestReadErrors.test_large_cluster: sync=top into a target with 128 KiB clusters whose backing file is not
 *   open: the first half of the cluster at 1 MiB has to be copied from backing.img although sync=top, and that
 *   read fails once (blkdebug under the source's backing file, QEMU's config): BLOCK_JOB_ERROR (read, ignore) is
 *   the first event, the job goes on and completes; the images compare identical.
 * - TestFilters.test_cor: a copy-on-read filter above the source chain is the mirrored device; with sync=top
 *   only the top layer is copied: `qemu-img map` of the target shows 0-512k from its backing file (depth 1) and
 *   512k-1M in the target (depth 0).
 *
 * drive-mirror → blockdev-mirror + backing mode: blockgraph has no drive-mirror command (it would create or open
 * the target image itself). QEMU's drive-mirror cases are ported with the target created as drive-mirror would
 * find or create it and added by blockdev-add, and the job started with drive-mirror's backing mode: mode=existing
 * (`backingMode: 'open'`, OPEN_BACKING_CHAIN) with the target opened without its backing file — the job opens the
 * one named in its header at completion; mode=absolute-paths (`backingMode: 'source'`, SOURCE_BACKING_CHAIN) gives
 * the target the source's backing node at completion for sync=top. The job ID is 'drive0' as drive-mirror's
 * default (the device's name).
 * TestReadErrors: QEMU names `blkdebug:<config>:backing.img` as test.img's backing file; blockgraph opens
 * test.img with that backing node given explicitly (raw over blkdebug over the file), so test.img's header
 * names backing.img itself and no `qemu-img rebase` is needed before comparing.
 *
 * Not ported: test_implicit_node, TestFilters.test_implicit_mirror_filter (query-block's hiding of implicit
 * nodes), test_image_not_found / test_medium_not_found (drive-mirror / CD-ROM only), TestSingleDrive's other
 * drive-mirror duplicates of the TestSingleBlockdev cases above, test_source_resize / test_target_resize (newer
 * than QEMU 7.2), the quorum and throttle classes (see iotest-041.test.ts).
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { BlockBackend, Graph } from '@blockgraph/block-core';
import { parseBlkdebugConfig } from '../../src/index.js';
import { startMirror, type MirrorJob } from '@blockgraph/job-mirror';
import { createImage, describeWithTools, device, EventLog, KiB, MiB, scratch, sleep, until, type Scratch } from './helpers.js';
import { compareQcow2, imageMap, newQcow2Graph, qemuImg, qemuIo } from './mirror-qcow2-helpers.js';

/** A graph, its events and a scratch directory per test (setUp / tearDown). */
function vmCase(prefix: string) {
  const c = {} as { s: Scratch; g: Graph; events: EventLog; path: (n: string) => string };
  beforeEach(() => {
    c.s = scratch(prefix);
    c.g = newQcow2Graph();
    c.events = new EventLog(c.g);
    c.path = (n) => c.s.path(n);
  });
  afterEach(async () => {
    await c.g.close();
    c.s.cleanup();
  });
  return c;
}

/** QMPTestCase's helpers for a job with auto-finalize on. */
async function completeAndWait(g: Graph, events: EventLog, job: MirrorJob, waitReady = true): Promise<void> {
  if (waitReady) await events.wait('BLOCK_JOB_READY', { device: job.id });
  job.complete();
  const e = await events.wait('BLOCK_JOB_COMPLETED', { device: job.id });
  expect(e.data.error).toBeUndefined();
  await job.waitFinished();
  expect(g.jobs.size).toBe(0);
}

for (const imageLen of [MiB, 0, 1025 * KiB]) {
  const title = imageLen === 0 ? 'ZeroLength' : imageLen === MiB ? '' : 'UnalignedLength';
  describeWithTools(`iotest 041 (qcow2): TestSingleBlockdev${title} (${imageLen} bytes)`, ['qemu-img'], () => {
    const c = vmCase('041q');
    let drive0: BlockBackend;

    beforeEach(async () => {
      createImage(c.path('backing.img'), imageLen);
      qemuImg('create', '-q', '-f', 'qcow2', '-o', `backing_file=${c.path('backing.img')}`, '-F', 'raw', c.path('test.img'));
      // -drive file=test.img,node-name=top,backing.node-name=base
      await c.g.addNode({
        driver: 'qcow2',
        nodeName: 'top',
        file: { driver: 'file', filename: c.path('test.img') },
        backing: { driver: 'raw', nodeName: 'base', file: { driver: 'file', filename: c.path('backing.img') } },
      });
      drive0 = device(c.g, 'top', 'drive0');
      qemuImg('create', '-q', '-f', 'qcow2', '-o', `backing_file=${c.path('backing.img')}`, '-F', 'raw', c.path('target.img'));
      await c.g.addNode({ driver: 'qcow2', nodeName: 'node1', file: { filename: c.path('target.img'), driver: 'file' } });
      expect(c.g.getNode('node1').backing?.node.filename).toBe(c.path('backing.img'));
    });

    const mirror = (extra: Record<string, unknown> = {}): Promise<MirrorJob> =>
      startMirror(c.g, { jobId: 'drive0', device: 'drive0', sync: 'full', target: 'node1', ...extra });

    const imagesMatch = async (): Promise<void> => {
      await c.g.close();
      expect(compareQcow2(c.path('test.img'), c.path('target.img')), 'target image does not match source after mirroring').toBe(true);
    };

    it('test_complete', async () => {
      const job = await mirror();
      await completeAndWait(c.g, c.events, job);
      expect(drive0.node.filename).toBe(c.path('target.img'));
      await imagesMatch();
    });

    it('test_cancel', async () => {
      const job = await mirror();
      job.cancel(true);
      const e = await c.events.wait('BLOCK_JOB_CANCELLED', { device: 'drive0' });
      expect(e.data.type).toBe('mirror');
      await job.waitFinished();
      expect(drive0.node.filename).toBe(c.path('test.img'));
      expect(drive0.node.backing?.node.nodeName).toBe('base');
    });

    it('test_cancel_after_ready', async () => {
      const job = await mirror();
      await c.events.wait('BLOCK_JOB_READY', { device: 'drive0' });
      job.cancel(false);
      const e = await c.events.wait('BLOCK_JOB_COMPLETED', { device: 'drive0' });
      expect(e.data.error).toBeUndefined();
      await job.waitFinished();
      expect(drive0.node.filename).toBe(c.path('test.img'));
      await imagesMatch();
    });

    it('test_pause', async () => {
      const job = await mirror();
      job.pause();
      await until(() => job.status === 'paused' || job.status === 'standby', 'the job to pause');
      const offset = job.query().offset;
      await sleep(300);
      expect(job.query().offset).toBe(offset);
      job.resume();
      await completeAndWait(c.g, c.events, job);
      await imagesMatch();
    });

    it('test_small_buffer (buf-size 4096 is rounded up automatically)', async () => {
      const job = await mirror({ bufSize: 4096 });
      await completeAndWait(c.g, c.events, job);
      expect(drive0.node.filename).toBe(c.path('target.img'));
      await imagesMatch();
    });

    if (imageLen === MiB) {
      // TestSingleDrive only (drive-mirror mode=existing).
      it('TestSingleDrive.test_small_buffer2 (target clusters of 1 MiB, buf-size 64 KiB)', async () => {
        qemuImg('create', '-q', '-f', 'qcow2', '-o', `cluster_size=${imageLen},size=${imageLen}`, c.path('target2.img'));
        await c.g.addNode({ driver: 'qcow2', nodeName: 'target2', backing: null, file: { driver: 'file', filename: c.path('target2.img') } });
        const job = await mirror({ target: 'target2', bufSize: 65536 });
        await completeAndWait(c.g, c.events, job);
        expect(drive0.node.filename).toBe(c.path('target2.img'));
        await c.g.close();
        expect(compareQcow2(c.path('test.img'), c.path('target2.img'))).toBe(true);
      });

      it('TestSingleDrive.test_large_cluster (target clusters of 1 MiB, backing file not open)', async () => {
        qemuImg('create', '-q', '-f', 'qcow2', '-o', `cluster_size=${imageLen},backing_file=${c.path('backing.img')}`, '-F', 'raw', c.path('target2.img'));
        await c.g.addNode({ driver: 'qcow2', nodeName: 'target2', backing: null, file: { driver: 'file', filename: c.path('target2.img') } });
        const job = await mirror({ target: 'target2', backingMode: 'open' });
        expect(job.granularity).toBe(64 * KiB);
        await completeAndWait(c.g, c.events, job);
        expect(drive0.node.filename).toBe(c.path('target2.img'));
        expect(drive0.node.backing?.node.filename).toBe(c.path('backing.img'));
        await c.g.close();
        expect(compareQcow2(c.path('test.img'), c.path('target2.img'))).toBe(true);
      });
    }
  });
}

describeWithTools('iotest 041 (qcow2): TestMirrorNoBacking', ['qemu-img'], () => {
  const c = vmCase('041q-nb');
  const imageLen = 2 * MiB;
  let drive0: BlockBackend;

  beforeEach(async () => {
    createImage(c.path('backing.img'), imageLen);
    qemuImg('create', '-q', '-f', 'qcow2', '-o', `backing_file=${c.path('backing.img')}`, '-F', 'raw', c.path('test.img'));
    await c.g.addNode({ driver: 'qcow2', nodeName: 'drive0-node', file: { driver: 'file', filename: c.path('test.img') } });
    drive0 = device(c.g, 'drive0-node', 'drive0');
  });

  /** drive-mirror mode=existing sync=full target=target.img */
  async function driveMirrorExisting(): Promise<MirrorJob> {
    await c.g.addNode({ driver: 'qcow2', nodeName: 'target', backing: null, file: { driver: 'file', filename: c.path('target.img') } });
    return startMirror(c.g, { jobId: 'drive0', device: 'drive0', sync: 'full', target: 'target', backingMode: 'open' });
  }

  it('test_complete', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', '-o', `backing_file=${c.path('backing.img')}`, '-F', 'raw', c.path('target.img'));
    const job = await driveMirrorExisting();
    await completeAndWait(c.g, c.events, job);
    expect(drive0.node.filename).toBe(c.path('target.img'));
    expect(drive0.node.backing?.node.filename).toBe(c.path('backing.img'));
    await c.g.close();
    expect(compareQcow2(c.path('test.img'), c.path('target.img'))).toBe(true);
  });

  it('test_cancel', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', '-o', `backing_file=${c.path('backing.img')}`, '-F', 'raw', c.path('target.img'));
    const job = await driveMirrorExisting();
    await c.events.wait('BLOCK_JOB_READY', { device: 'drive0' });
    job.cancel(false);
    const e = await c.events.wait('BLOCK_JOB_COMPLETED', { device: 'drive0' });
    expect(e.data.error).toBeUndefined();
    await job.waitFinished();
    expect(drive0.node.filename).toBe(c.path('test.img'));
    // A soft cancel after READY runs mirror_exit_common() without the pivot: the target's chain is opened all the same.
    expect(c.g.getNode('target').backing?.node.filename).toBe(c.path('backing.img'));
    await c.g.close();
    expect(compareQcow2(c.path('test.img'), c.path('target.img'))).toBe(true);
  });

  it('test_large_cluster (target clusters of 2 MiB, backing file not open)', async () => {
    // qemu-img create fails if the image is not there
    qemuImg('create', '-q', '-f', 'qcow2', '-o', `size=${imageLen}`, c.path('target-backing.img'));
    qemuImg('create', '-q', '-f', 'qcow2', '-o', `cluster_size=${imageLen},backing_file=${c.path('target-backing.img')}`, '-F', 'qcow2', c.path('target.img'));
    const job = await driveMirrorExisting();
    await completeAndWait(c.g, c.events, job);
    expect(drive0.node.filename).toBe(c.path('target.img'));
    expect(drive0.node.backing?.node.filename).toBe(c.path('target-backing.img'));
    await c.g.close();
    expect(compareQcow2(c.path('test.img'), c.path('target.img'))).toBe(true);
  });
});

describeWithTools('iotest 041 (qcow2): TestMirrorResized', ['qemu-img'], () => {
  const c = vmCase('041q-rs');
  const backingLen = MiB;
  const imageLen = 2 * MiB;
  let drive0: BlockBackend;

  beforeEach(async () => {
    createImage(c.path('backing.img'), backingLen);
    qemuImg('create', '-q', '-f', 'qcow2', '-o', `backing_file=${c.path('backing.img')}`, '-F', 'raw', c.path('test.img'));
    qemuImg('resize', '-q', c.path('test.img'), '2M');
    await c.g.addNode({
      driver: 'qcow2',
      nodeName: 'drive0-node',
      file: { driver: 'file', filename: c.path('test.img') },
      backing: { driver: 'raw', nodeName: 'base', file: { driver: 'file', filename: c.path('backing.img') } },
    });
    drive0 = device(c.g, 'drive0-node', 'drive0');
    expect(drive0.getLength()).toBe(imageLen);
  });

  it('test_complete_top', async () => {
    // drive-mirror sync=top (mode absolute-paths): a new image named after the source's backing file, opened
    // without it; at completion its backing file is the source's backing node.
    qemuImg('create', '-q', '-f', 'qcow2', '-b', c.path('backing.img'), '-F', 'raw', c.path('target.img'), String(imageLen));
    await c.g.addNode({ driver: 'qcow2', nodeName: 'target', backing: null, file: { driver: 'file', filename: c.path('target.img') } });
    const job = await startMirror(c.g, { jobId: 'drive0', device: 'drive0', sync: 'top', target: 'target', backingMode: 'source' });
    await completeAndWait(c.g, c.events, job);
    // nothing allocated in the top layer
    expect(c.events.named('BLOCK_JOB_COMPLETED').map((e) => e.data)).toMatchObject([{ len: 0, offset: 0 }]);
    expect(drive0.node.filename).toBe(c.path('target.img'));
    expect(drive0.node.backing?.node.nodeName).toBe('base');
    await c.g.close();
    expect(compareQcow2(c.path('test.img'), c.path('target.img'))).toBe(true);
  });

  it('test_complete_full', async () => {
    // drive-mirror sync=full (mode absolute-paths): a new image without a backing file.
    qemuImg('create', '-q', '-f', 'qcow2', c.path('target.img'), String(imageLen));
    await c.g.addNode({ driver: 'qcow2', nodeName: 'target', file: { driver: 'file', filename: c.path('target.img') } });
    const job = await startMirror(c.g, { jobId: 'drive0', device: 'drive0', sync: 'full', target: 'target' });
    await completeAndWait(c.g, c.events, job);
    expect(drive0.node.filename).toBe(c.path('target.img'));
    expect(drive0.node.backing).toBeUndefined();
    await c.g.close();
    expect(compareQcow2(c.path('test.img'), c.path('target.img'))).toBe(true);
  });
});

describeWithTools('iotest 041 (qcow2): TestReadErrors.test_large_cluster', ['qemu-img', 'qemu-io'], () => {
  const c = vmCase('041q-re');
  const imageLen = 2 * MiB;
  // this should be a multiple of twice the default granularity so that we hit this offset first in state 1
  const MIRROR_GRANULARITY = MiB;
  const config = `
[inject-error]
state = "1"
event = "read_aio"
errno = "5"
immediately = "off"
once = "on"
sector = "${MIRROR_GRANULARITY / 512}"

[set-state]
state = "1"
event = "read_aio"
new_state = "2"

[set-state]
state = "2"
event = "read_aio"
new_state = "1"
`;

  it('test_large_cluster', async () => {
    createImage(c.path('backing.img'), imageLen);
    qemuImg('create', '-q', '-f', 'qcow2', '-o', `backing_file=${c.path('backing.img')}`, '-F', 'raw', c.path('test.img'));
    // Write something for tests that use sync='top'
    qemuIo(c.path('test.img'), `write ${MIRROR_GRANULARITY + 65536} 512`);
    // test.img's backing file is blkdebug:<config>:backing.img
    await c.g.addNode({
      driver: 'qcow2',
      nodeName: 'drive0-node',
      file: { driver: 'file', filename: c.path('test.img') },
      backing: { driver: 'raw', file: { driver: 'blkdebug', image: { driver: 'file', filename: c.path('backing.img') }, ...parseBlkdebugConfig(config) } },
    });
    const drive0 = device(c.g, 'drive0-node', 'drive0');

    // Test COW into the target image. The first half of the cluster at MIRROR_GRANULARITY has to be copied from
    // backing_img, even though sync='top'.
    qemuImg('create', '-q', '-f', 'qcow2', `-ocluster_size=131072,backing_file=${c.path('backing.img')}`, '-F', 'raw', c.path('target.img'));
    await c.g.addNode({ driver: 'qcow2', nodeName: 'target', backing: null, file: { driver: 'file', filename: c.path('target.img') } });
    const job = await startMirror(c.g, { jobId: 'drive0', device: 'drive0', sync: 'top', onSourceError: 'ignore', target: 'target', backingMode: 'open' });

    const error = await c.events.wait('BLOCK_JOB_ERROR', { device: 'drive0' });
    const first = c.events.events.find((e) => e.event !== 'JOB_STATUS_CHANGE');
    expect(first).toBe(error);
    for (const e of c.events.named('JOB_STATUS_CHANGE')) expect(e.data.id).toBe('drive0');
    expect(error.data).toEqual({ device: 'drive0', operation: 'read', action: 'ignore' });
    expect(['running', 'ready']).toContain(job.query().status);
    await completeAndWait(c.g, c.events, job);
    expect(drive0.node.filename).toBe(c.path('target.img'));
    await c.g.close();

    expect(compareQcow2(c.path('test.img'), c.path('target.img')), 'target image does not match source after mirroring').toBe(true);
    // (added) The job copied the whole 128k target cluster at 1M and nothing else.
    const map = imageMap(c.path('target.img')).filter((m) => m.depth === 0 && m.data);
    expect(map.map((m) => [m.start, m.length])).toEqual([[MIRROR_GRANULARITY, 128 * KiB]]);
  });
});

describeWithTools('iotest 041 (qcow2): TestFilters.test_cor', ['qemu-img', 'qemu-io'], () => {
  const c = vmCase('041q-f');

  it('test_cor', async () => {
    const img = (n: string): string => c.path(n);
    qemuImg('create', '-q', '-f', 'qcow2', img('backing.img'), '1M');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', img('backing.img'), '-F', 'qcow2', img('test.img'));
    qemuImg('create', '-q', '-f', 'qcow2', '-b', img('backing.img'), '-F', 'qcow2', img('target.img'));
    qemuIo(img('backing.img'), 'write -P 1 0 512k');
    qemuIo(img('test.img'), 'write -P 2 512k 512k');

    await c.g.addNode({ nodeName: 'target', driver: 'qcow2', file: { driver: 'file', filename: img('target.img') }, backing: null });
    const filterlessChain = {
      nodeName: 'source',
      driver: 'qcow2',
      file: { driver: 'file', filename: img('test.img') },
      backing: { nodeName: 'backing', driver: 'qcow2', file: { driver: 'file', filename: img('backing.img') } },
    };
    await c.g.addNode({ nodeName: 'filter', driver: 'copy-on-read', file: filterlessChain });

    const job = await startMirror(c.g, { jobId: 'mirror', device: 'filter', target: 'target', sync: 'top' });
    await completeAndWait(c.g, c.events, job);

    // The target took the filter's place (it had no other parents), so nothing uses it: blockdev-del, then
    // qemu-img map of the target image while the graph is still open.
    await c.g.deleteNode('target');
    const targetMap = imageMap(img('target.img'));
    expect(targetMap[0]).toMatchObject({ start: 0, length: 512 * KiB, depth: 1 });
    expect(targetMap[1]).toMatchObject({ start: 512 * KiB, length: 512 * KiB, depth: 0 });
    // (added) and the data is the source's
    qemuIo(img('target.img'), 'read -P 1 0 512k', 'read -P 2 512k 512k');
  });
});
