/**
 * Port of qemu-iotests 185 "Test exiting qemu while jobs are still running" (tests/qemu-iotests/185, 185.out),
 * the mirror parts; `quit` is `graph.close()`, which force-cancels every job (QEMU's qemu_cleanup()).
 *
 * - "Creating backing chain": base (64M qcow2) ← mid ← top built at runtime as QEMU does it, with
 *   blockdev-snapshot-sync mode=absolute-paths → qemu-img create of the overlay naming its backing file +
 *   blockdev-add without a backing file + graph.snapshot(); `qemu-io disk "write 0 4M"` goes to mid.
 * - "Start mirror job and exit qemu": relaunched on top; drive-mirror sync=full speed=65536 into a new qcow2
 *   image. drive-mirror creates the target itself, so it knows the target reads as zeroes and copies only what
 *   the chain has allocated (zero_target is off); blockdev-mirror would zero the whole 64M first, so the port
 *   passes target-is-zero (QEMU 10.1's blockdev-mirror flag for exactly this). 185's point: with speed 64 KiB/s
 *   and a buffer covering the 4M, the job does exactly one iteration and then has to sleep for a minute, so at
 *   quit (0.5 s later) it is still running with offset 4M; it is cancelled cleanly:
 *   aborting, BLOCK_JOB_CANCELLED {len 4194304, offset 4194304, speed 65536, type mirror}, concluded, null
 *   (185.out's paused/running pairs during shutdown are left out, as later QEMU versions filter them: they depend
 *   on timing). Then `qemu-img check` of the image finds no errors (_check_test_img).
 * - "Start mirror to throttled QSD and exit qemu": blockdev-mirror sync=top from a fresh 64M image to a target
 *   throttled to 1 MiB/s (QSD's null-co behind a throttle node, exported over NBD → a test-throttle node over
 *   null-co in the same graph); READY at once {len 0, offset 0, speed 0}; the guest writes 64k every 128k
 *   (512 writes), the job's length reaches 32M; quit must force-cancel the job without waiting for the data to
 *   reach the target: aborting, BLOCK_JOB_CANCELLED {len 33554432, offset (filtered), speed 0}, concluded,
 *   null. The reference output also has standby/ready from the drain at shutdown; both are accepted here.
 *
 * Not ported (no such jobs in blockgraph): block-commit, active commit (also the throttled-QSD variant),
 * drive-backup and block-stream.
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror } from '@blockgraph/job-mirror';
import { describeWithTools, device, EventLog, KiB, MiB, pattern, scratch, sleep, until, type Scratch } from './helpers.js';
import { backingChain, expectCleanImage, newQcow2Graph, qemuImg } from './mirror-qcow2-helpers.js';

const size = 64 * MiB;

/** The job's events from `from` on, JOB_STATUS_CHANGE as `status:<s>`, without the drain-related pairs. */
function shutdownSequence(events: EventLog, id: string, from: number): string[] {
  return events.events
    .slice(from)
    .filter((e) => e.data.id === id || e.data.device === id)
    .map((e) => (e.event === 'JOB_STATUS_CHANGE' ? `status:${String(e.data.status)}` : e.event))
    .filter((e) => !['status:paused', 'status:running', 'status:standby', 'status:ready'].includes(e));
}

describeWithTools('iotest 185: exiting while a mirror job is running', ['qemu-img'], () => {
  let s: Scratch;
  let g: Graph;
  const TEST_IMG = (suffix = ''): string => s.path(`t.qcow2${suffix}`);

  beforeEach(() => {
    s = scratch('185');
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  it('=== Start mirror job and exit qemu ===', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', TEST_IMG('.base'), String(size));

    // === Starting VM ===
    g = newQcow2Graph();
    await g.addNode({ driver: 'qcow2', nodeName: 'base', file: { driver: 'file', filename: TEST_IMG('.base') } });
    const disk = device(g, 'base', 'disk');

    // === Creating backing chain ===
    qemuImg('create', '-q', '-f', 'qcow2', '-b', TEST_IMG('.base'), '-F', 'qcow2', TEST_IMG('.mid'), String(size));
    await g.addNode({ driver: 'qcow2', nodeName: 'mid', backing: null, file: { driver: 'file', filename: TEST_IMG('.mid') } });
    await g.snapshot('base', 'mid');
    await disk.pwrite(0, pattern(4 * MiB, 0xcd)); // qemu-io disk "write 0 4M"
    qemuImg('create', '-q', '-f', 'qcow2', '-b', TEST_IMG('.mid'), '-F', 'qcow2', TEST_IMG(), String(size));
    await g.addNode({ driver: 'qcow2', nodeName: 'top', backing: null, file: { driver: 'file', filename: TEST_IMG() } });
    await g.snapshot('mid', 'top');
    expect(backingChain(disk.node)).toEqual([TEST_IMG(), TEST_IMG('.mid'), TEST_IMG('.base')]);
    await g.close();

    // === Start mirror job and exit qemu ===
    g = newQcow2Graph();
    const events = new EventLog(g);
    await g.addNode({ driver: 'qcow2', nodeName: 'disk-node', file: { driver: 'file', filename: TEST_IMG() } });
    device(g, 'disk-node', 'disk');
    qemuImg('create', '-q', '-f', 'qcow2', TEST_IMG('.copy'), String(size));
    await g.addNode({ driver: 'qcow2', nodeName: 'copy', file: { driver: 'file', filename: TEST_IMG('.copy') } });
    const job = await startMirror(g, { jobId: 'disk', device: 'disk', target: 'copy', sync: 'full', speed: 65536, targetIsZero: true });
    expect(events.sequence('disk')).toEqual(['status:created', 'status:running']);

    // If we don't sleep here 'quit' command may be handled before the first mirror iteration is done. (QEMU
    // sleeps 0.5 s; waiting for the iteration instead keeps a loaded machine from failing the test.)
    await until(() => job.query().offset === 4 * MiB, 'the first iteration', 10_000, 10);
    await sleep(500);
    // Exactly one iteration, then the rate limit holds the job back.
    expect(job.query()).toMatchObject({ status: 'running', len: 4 * MiB, offset: 4 * MiB, speed: 65536 });

    const quitAt = events.events.length;
    const t0 = Date.now();
    await g.close();
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(events.named('BLOCK_JOB_READY')).toEqual([]);
    expect(shutdownSequence(events, 'disk', quitAt)).toEqual(['status:aborting', 'BLOCK_JOB_CANCELLED', 'status:concluded', 'status:null']);
    expect(events.named('BLOCK_JOB_CANCELLED').map((e) => e.data)).toEqual([
      { device: 'disk', len: 4194304, offset: 4194304, speed: 65536, type: 'mirror' },
    ]);

    expectCleanImage(TEST_IMG());
    expectCleanImage(TEST_IMG('.copy'));
  });

  it('=== Start mirror to throttled QSD and exit qemu ===', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', TEST_IMG(), String(size));
    g = newQcow2Graph();
    const events = new EventLog(g);
    // The QSD side: null-co of the same size behind a 1 MiB/s throttle.
    await g.addNode({ driver: 'test-throttle', nodeName: 'target', bpsTotal: MiB, file: { driver: 'null-co', nodeName: 'null', size } });
    await g.addNode({ driver: 'file', nodeName: 'source-proto', filename: TEST_IMG() });
    await g.addNode({ driver: 'qcow2', nodeName: 'source-fmt', file: 'source-proto' });
    const vblk = device(g, 'source-fmt', 'vblk');

    const job = await startMirror(g, { jobId: 'mirror', device: 'source-fmt', target: 'target', sync: 'top' });
    const ready = await events.wait('BLOCK_JOB_READY', { device: 'mirror' });
    expect(ready.data).toEqual({ device: 'mirror', len: 0, offset: 0, speed: 0, type: 'mirror' });

    // --- Writing data to the virtio-blk device ---
    // One 64k write per cluster, each spaced one cluster apart, so that the job needs one request per cluster.
    const clusterSize = 64 * KiB;
    const step = clusterSize * 2;
    const writes: Promise<void>[] = [];
    for (let ofs = 0; ofs <= size - step; ofs += step) writes.push(vblk.pwrite(ofs, pattern(clusterSize, 0xcd))); // aio_write
    await Promise.all(writes);

    // Wait until the job's length reflects the write requests: half of the device.
    const finalLen = size / 2;
    await until(() => job.query().len === finalLen, `len=${finalLen}`, 10_000, 10);
    await sleep(200);
    expect(job.query().offset).toBeLessThan(finalLen);

    const quitAt = events.events.length;
    const t0 = Date.now();
    await g.close();
    // The job was force-cancelled: nothing waited for 32M to pass a 1 MiB/s throttle.
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(shutdownSequence(events, 'mirror', quitAt)).toEqual(['status:aborting', 'BLOCK_JOB_CANCELLED', 'status:concluded', 'status:null']);
    const cancelled = events.named('BLOCK_JOB_CANCELLED').map((e) => e.data);
    expect(cancelled).toEqual([{ device: 'mirror', len: 33554432, offset: expect.any(Number), speed: 0, type: 'mirror' }]);
    expect(cancelled[0]!.offset as number).toBeLessThan(33554432);
    // Only standby/ready may come in between, from the drain at shutdown.
    const extra = events.events.slice(quitAt).filter((e) => e.event === 'JOB_STATUS_CHANGE').map((e) => String(e.data.status));
    expect(extra.filter((st) => !['aborting', 'concluded', 'null'].includes(st)).every((st) => st === 'standby' || st === 'ready')).toBe(true);
    expectCleanImage(TEST_IMG());
  });
});
