/**
 * Port of qemu-iotests 156 "oVirt-like storage migration" (tests/qemu-iotests/156, 156.out), qcow2:
 *  - create a snapshot;
 *  - create the target image with a (not yet existing) target backing chain, i.e. just write the name of a
 *    soon-to-be-copied-over backing file into it;
 *  - mirror the snapshot to the target with sync=top;
 *  - meanwhile copy the original source files to the destination by conventional means (outside of the graph);
 *  - complete the job; delete all source images; every pattern is still there, online and offline.
 *
 * QMP → blockgraph:
 *  - `-drive if=none,id=source,file=t.qcow2` → the qcow2 node (backing chain opened from the header) and a
 *    BlockBackend named 'source';
 *  - blockdev-snapshot-sync mode=existing onto the pre-created overlay → blockdev-add of the overlay without a
 *    backing file + `graph.snapshot()` (blockdev-snapshot);
 *  - HMP `qemu-io source "write/read -P ..."` → I/O through the 'source' backend;
 *  - drive-mirror mode=existing sync=top → the target overlay added with `backing: null` (drive-mirror opens an
 *    existing target without its backing chain) + startMirror sync=top with drive-mirror's backing mode
 *    (`backingMode: 'open'`, OPEN_BACKING_CHAIN): when the job completes (mirror_exit_common(), in the job's
 *    prepare step since QEMU 6.1) it opens the backing file named in the target's header, which by then has
 *    been copied over;
 *  - `quit` → graph.close(), then qemu-io reads the target overlay offline.
 * Asserted as 156.out: BLOCK_JOB_READY {len 131072, offset 131072} — only the overlay's 128k is copied —,
 * BLOCK_JOB_COMPLETED {len 196608, offset 196608}, with the job's status changes in between (created, running,
 * ready; waiting, pending, concluded, null); the four patterns through
 * the device after the source files are gone, and the same four patterns read by qemu-io from the target overlay.
 * Added: the target has no backing file until completion, and the device's chain afterwards is target overlay →
 * copied image → copied backing image.
 */
import { copyFileSync, rmSync } from 'node:fs';
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { BlockBackend, Graph } from '@blockgraph/block-core';
import { startMirror } from '@blockgraph/job-mirror';
import { describeWithTools, device, EventLog, KiB, MiB, pattern, scratch, type Scratch } from './helpers.js';
import { backingChain, expectPattern, imageInfo, newQcow2Graph, qemuImg, qemuIo } from './mirror-qcow2-helpers.js';

describeWithTools('iotest 156: oVirt-like storage migration (sync=top into an existing target)', ['qemu-img', 'qemu-io'], () => {
  let s: Scratch;
  let g: Graph;
  let events: EventLog;
  const TEST_IMG = (suffix = ''): string => s.path(`t.qcow2${suffix}`);

  beforeEach(() => {
    s = scratch('156');
    g = newQcow2Graph();
    events = new EventLog(g);
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  it('mirrors the snapshot, completes onto the copied chain, and needs no source image afterwards', async () => {
    // Create source disk
    qemuImg('create', '-q', '-f', 'qcow2', TEST_IMG('.backing'), '1M');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', TEST_IMG('.backing'), '-F', 'qcow2', TEST_IMG(), '1M');
    qemuIo(TEST_IMG('.backing'), 'write -P 1 0 256k');
    qemuIo(TEST_IMG(), 'write -P 2 64k 192k');

    await g.addNode({ driver: 'qcow2', nodeName: 'source-top', file: { driver: 'file', filename: TEST_IMG() } });
    const source: BlockBackend = device(g, 'source-top', 'source');

    // Create snapshot
    qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', TEST_IMG(), '-F', 'qcow2', TEST_IMG('.overlay'), '1M');
    await g.addNode({ driver: 'qcow2', nodeName: 'source-overlay', backing: null, file: { driver: 'file', filename: TEST_IMG('.overlay') } });
    await g.snapshot('source-top', 'source-overlay');
    expect(source.node.nodeName).toBe('source-overlay');
    expect(backingChain(source.node)).toEqual([TEST_IMG('.overlay'), TEST_IMG(), TEST_IMG('.backing')]);

    // Write something to the snapshot
    await source.pwrite(128 * KiB, pattern(128 * KiB, 3));

    // Create target image
    qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', TEST_IMG('.target'), '-F', 'qcow2', TEST_IMG('.target.overlay'), '1M');
    await g.addNode({ driver: 'qcow2', nodeName: 'target-overlay', backing: null, file: { driver: 'file', filename: TEST_IMG('.target.overlay') } });

    // Mirror snapshot
    // (QEMU names the job after the device, 'source'; blockgraph's default would be the node's name.)
    const job = await startMirror(g, { jobId: 'source', device: 'source', target: 'target-overlay', sync: 'top', backingMode: 'open' });
    expect(job.source.nodeName).toBe('source-overlay');

    // Wait for convergence
    const ready = await events.wait('BLOCK_JOB_READY', { device: 'source' });
    expect(ready.data).toEqual({ device: 'source', len: 131072, offset: 131072, speed: 0, type: 'mirror' });

    // Write some more
    await source.pwrite(192 * KiB, pattern(64 * KiB, 4));

    // Copy source backing chain to the target before completing the job
    copyFileSync(TEST_IMG('.backing'), TEST_IMG('.target.backing'));
    copyFileSync(TEST_IMG(), TEST_IMG('.target'));
    qemuImg('rebase', '-u', '-b', TEST_IMG('.target.backing'), '-F', 'qcow2', TEST_IMG('.target'));

    expect(events.sequence('source')).toEqual(['status:created', 'status:running', 'status:ready', 'BLOCK_JOB_READY']);
    events.clear();
    // Until completion the target is used without its backing chain (which did not exist when the job started).
    expect(g.getNode('target-overlay').backing).toBeUndefined();

    // Complete block job
    job.complete();
    await events.wait('JOB_STATUS_CHANGE', { id: 'source', status: 'null' });
    expect(events.sequence('source')).toEqual(['status:waiting', 'status:pending', 'BLOCK_JOB_COMPLETED', 'status:concluded', 'status:null']);
    const completed = events.named('BLOCK_JOB_COMPLETED');
    expect(completed.map((e) => e.data)).toEqual([{ device: 'source', len: 196608, offset: 196608, speed: 0, type: 'mirror' }]);
    expect(source.node.nodeName).toBe('target-overlay');
    expect(backingChain(source.node)).toEqual([TEST_IMG('.target.overlay'), TEST_IMG('.target'), TEST_IMG('.target.backing')]);

    // Remove the source images (and close the nodes still open on them: QEMU freed them with the old chain)
    rmSync(TEST_IMG());
    rmSync(TEST_IMG('.backing'));
    rmSync(TEST_IMG('.overlay'));
    await g.deleteNode('source-overlay');
    await g.deleteNode('source-top');
    const sourceFiles = [TEST_IMG(), TEST_IMG('.backing'), TEST_IMG('.overlay')];
    expect([...g.nodes.values()].filter((n) => sourceFiles.includes(n.filename ?? ''))).toEqual([]);

    // Check online disk contents
    await expectPattern(g, source, 0, 64 * KiB, 1);
    await expectPattern(g, source, 64 * KiB, 64 * KiB, 2);
    await expectPattern(g, source, 128 * KiB, 64 * KiB, 3);
    await expectPattern(g, source, 192 * KiB, 64 * KiB, 4);

    await g.close();

    // Check offline disk contents
    qemuIo(TEST_IMG('.target.overlay'), 'read -P 1 0k 64k', 'read -P 2 64k 64k', 'read -P 3 128k 64k', 'read -P 4 192k 64k');
    // The target overlay names the copied chain, as it did from the start.
    expect(imageInfo(TEST_IMG('.target.overlay'))).toMatchObject({ 'backing-filename': TEST_IMG('.target'), 'virtual-size': MiB });
  });
});
