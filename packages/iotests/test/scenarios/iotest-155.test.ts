/**
 * Port of qemu-iotests 155 (tests/qemu-iotests/155): whether the backing nodes are correct after completion of
 * a mirror job. In the "existing" modes the target's backing chain is not overridden. With blockdev-mirror
 * (backing mode LEAVE_BACKING_CHAIN): after the pivot the device's node is the target, whose backing file is
 * exactly what the target had (none, the one named in its header, one forced by blockdev-add, or one attached
 * while the job waits to be finalized), for sync full, top and none alike; and the source's chain source → back2
 * → back1 → back0 stays intact.
 *
 * Setup as 155: qcow2 chain back0 ← back1 ← back2 ← source (1440K), 'source' added by blockdev-add with a
 * device on it; the target (1440K qcow2) added as node 'target' on file node 'target-file'. The job runs with
 * auto-finalize off, as run_job() with pre_finalize does:
 * - TestBlockdevMirrorNoBacking: the target has no backing file → none afterwards;
 * - TestBlockdevMirrorBacking: the target's header names a null-co backing file, opened by blockdev-add → it;
 * - TestBlockdevMirrorForcedBacking: no backing file in the header, blockdev-add with backing {driver: null-co};
 * - TestBlockdevMirrorReopen: header backing, target opened with backing: null; pre_finalize adds a null-co
 *   node and attaches it with blockdev-reopen (graph.setBacking);
 * - TestBlockdevMirrorSnapshot: the same, attached with blockdev-snapshot node=backing overlay=target
 *   (graph.snapshot) — QEMU 7.2 allows an overlay that is in use as long as nobody takes consistent read on it
 *   ("Specifically, allow it as a mirror target, which is write-only access").
 * QEMU writes the header's backing file name as `null-co://`; blockgraph opens backing file names through the
 * image's protocol or as `json:` pseudo-filenames only (no `proto://` prefix parsing), so the header here names
 * `json:{"driver":"raw","file":{"driver":"null-co"}}` (with backing format raw), which QEMU opens the same way;
 * the opened backing node's file name is `null-co://` either way, which is what is asserted.
 *
 * Added to QEMU's assertions (its images are empty): each layer holds its own pattern (back0: 1 at 0-64k,
 * back1: 2 at 64k-128k, back2: 3 at 128k-192k, source: 4 at 192k-256k) and the guest writes 5 at 256k-320k
 * while the job runs; afterwards the device reads what each sync mode copied — full: everything (no backing
 * needed); top: only the top layer (without a backing file the rest reads as zeroes: the target needs the
 * source's backing file, which drive-mirror gives it); none: only what was written during the job (the target
 * needs the source itself as backing). Offline, `qemu-img info` shows the target's header unchanged and
 * `qemu-img check` finds no errors.
 *
 * The drive-mirror classes run as blockdev-mirror with drive-mirror's backing mode (blockgraph has no
 * drive-mirror command that would create or open the target itself): TestDriveMirrorAbsolutePaths — the target
 * created as drive-mirror creates it (no backing file for sync=full, the source's backing file for top, the
 * source for none), opened without it, `backingMode: 'source'`: afterwards its backing node is back2 (top), the
 * source (none) or none (full), and the device reads every layer's data; TestDriveMirrorExistingNoBacking /
 * ...ExistingBacking — the target opened without its backing file, `backingMode: 'open'`: afterwards none / the
 * null-co node named in its header.
 *
 * Not ported: the *Iothread variants (no iothreads), TestCommit (no commit job).
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { BlockBackend, Graph } from '@blockgraph/block-core';
import { startMirror, type MirrorSyncMode } from '@blockgraph/job-mirror';
import { describeWithTools, device, EventLog, KiB, pattern, scratch, type Scratch } from './helpers.js';
import { backingChain, expectCleanImage, expectPattern, imageInfo, newQcow2Graph, qemuImg, qemuIo, runJob } from './mirror-qcow2-helpers.js';

/** The header's backing file name standing in for QEMU's `null-co://` (see above). */
const NULL_CO = 'json:{"driver":"raw","file":{"driver":"null-co"}}';

/** Each layer's pattern and offset (back0, back1, back2, source). */
const ALL_LAYERS: [number, number][] = [
  [1, 0],
  [2, 64 * KiB],
  [3, 128 * KiB],
  [4, 192 * KiB],
];

interface Variant {
  name: string;
  /** drive-mirror (emulated, see above) instead of blockdev-mirror: with mode=absolute-paths or mode=existing. */
  drive?: 'absolute-paths' | 'existing';
  /** Backing file named in the target's header (qemu-img create -b). */
  targetBacking: string | null;
  /** blockdev-add's "backing" for the target. */
  targetBlockdevBacking?: Record<string, unknown>;
  /** Open the target without its backing file; pre_finalize attaches one. */
  openBacking?: (g: Graph) => Promise<void>;
}

const VARIANTS: Variant[] = [
  { name: 'TestDriveMirrorAbsolutePaths', drive: 'absolute-paths', targetBacking: null },
  { name: 'TestDriveMirrorExistingNoBacking', drive: 'existing', targetBacking: null },
  { name: 'TestDriveMirrorExistingBacking', drive: 'existing', targetBacking: NULL_CO },
  { name: 'TestBlockdevMirrorNoBacking', targetBacking: null },
  { name: 'TestBlockdevMirrorBacking', targetBacking: NULL_CO },
  { name: 'TestBlockdevMirrorForcedBacking', targetBacking: null, targetBlockdevBacking: { driver: 'null-co' } },
  {
    name: 'TestBlockdevMirrorReopen',
    targetBacking: NULL_CO,
    openBacking: async (g) => {
      await g.addNode({ nodeName: 'backing', driver: 'null-co' });
      await g.setBacking('target', 'backing'); // x-blockdev-reopen node-name=target file=target-file backing=backing
    },
  },
  {
    name: 'TestBlockdevMirrorSnapshot',
    targetBacking: NULL_CO,
    openBacking: async (g) => {
      await g.addNode({ nodeName: 'backing', driver: 'null-co' });
      await g.snapshot('backing', 'target'); // blockdev-snapshot node=backing overlay=target
    },
  },
];

for (const v of VARIANTS) {
  describeWithTools(`iotest 155: ${v.name}`, ['qemu-img', 'qemu-io'], () => {
    let s: Scratch;
    let g: Graph;
    let events: EventLog;
    let qdev0: BlockBackend;
    const img = (name: string): string => s.path(`${name}.qcow2`);

    beforeEach(async () => {
      s = scratch('155');
      qemuImg('create', '-q', '-f', 'qcow2', img('back0'), '1440K');
      qemuImg('create', '-q', '-f', 'qcow2', '-b', img('back0'), '-F', 'qcow2', img('back1'));
      qemuImg('create', '-q', '-f', 'qcow2', '-b', img('back1'), '-F', 'qcow2', img('back2'));
      qemuImg('create', '-q', '-f', 'qcow2', '-b', img('back2'), '-F', 'qcow2', img('source'));
      qemuIo(img('back0'), 'write -P 1 0 64k');
      qemuIo(img('back1'), 'write -P 2 64k 64k');
      qemuIo(img('back2'), 'write -P 3 128k 64k');
      qemuIo(img('source'), 'write -P 4 192k 64k');

      g = newQcow2Graph();
      events = new EventLog(g);
      // Add the node via blockdev-add so it stays around after the mirror job has been completed
      await g.addNode({ nodeName: 'source', driver: 'qcow2', file: { driver: 'file', filename: img('source') } });
      qdev0 = device(g, 'source', 'qdev0');
      assertIntactSourceBackingChain();

      // drive-mirror mode=absolute-paths creates the target when the job starts (runMirror).
      if (v.drive === 'absolute-paths') return;
      if (v.targetBacking) qemuImg('create', '-q', '-f', 'qcow2', '-b', v.targetBacking, '-F', 'raw', img('target'), '1440K');
      else qemuImg('create', '-q', '-f', 'qcow2', img('target'), '1440K');
      await addTarget();
    });

    /** blockdev-add of the target; drive-mirror and the reopen variants open it without its backing file. */
    async function addTarget(): Promise<void> {
      const options: Record<string, unknown> = {
        nodeName: 'target',
        driver: 'qcow2',
        file: { driver: 'file', nodeName: 'target-file', filename: img('target') },
      };
      if (v.openBacking || v.drive) options.backing = null;
      else if (v.targetBlockdevBacking) options.backing = v.targetBlockdevBacking;
      await g.addNode(options);
    }

    /** The target's backing file after completion: the file name of the backing node, or undefined. */
    function expectedBacking(sync: MirrorSyncMode): string | undefined {
      // SOURCE_BACKING_CHAIN: the source's backing node for sync=top, the source itself for sync=none.
      if (v.drive === 'absolute-paths') return sync === 'full' ? undefined : sync === 'top' ? img('back2') : img('source');
      // OPEN_BACKING_CHAIN and blockdev-mirror: what the target's header or blockdev-add gave it.
      return v.targetBacking !== null || v.targetBlockdevBacking !== undefined ? 'null-co://' : undefined;
    }

    afterEach(async () => {
      await g.close();
      s.cleanup();
    });

    function assertIntactSourceBackingChain(): void {
      expect(backingChain(g.getNode('source'))).toEqual([img('source'), img('back2'), img('back1'), img('back0')]);
    }

    /** findBlockNode('target', 'qdev0') + assertCorrectBackingImage(). */
    function assertCorrectBackingImage(sync: MirrorSyncMode): void {
      expect(qdev0.node.nodeName).toBe('target');
      expect(qdev0.node.backing?.node.filename).toBe(expectedBacking(sync));
    }

    async function runMirror(sync: MirrorSyncMode): Promise<void> {
      if (v.drive === 'absolute-paths') {
        // drive-mirror format=qcow2 mode=absolute-paths: a new image, naming the source's backing file (sync=top)
        // or the source (sync=none) as its backing file; opened without it.
        const backing = sync === 'top' ? img('back2') : sync === 'none' ? img('source') : null;
        if (backing) qemuImg('create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', img('target'), '1440K');
        else qemuImg('create', '-q', '-f', 'qcow2', img('target'), '1440K');
        await addTarget();
      }
      // drive-mirror's backing mode: SOURCE_BACKING_CHAIN for a new image, OPEN_BACKING_CHAIN for mode=existing.
      const backingMode = v.drive === 'absolute-paths' ? 'source' : v.drive === 'existing' ? 'open' : 'leave';
      const job = await startMirror(g, { jobId: 'mirror-job', device: 'source', sync, target: 'target', autoFinalize: false, backingMode });
      // (added) the guest writes while the job runs
      await qdev0.pwrite(256 * KiB, pattern(64 * KiB, 5));
      const done = await runJob(job, events, () => v.openBacking?.(g));
      expect(done).toMatchObject({ device: 'mirror-job', type: 'mirror' });
      expect(done.error).toBeUndefined();
      expect(g.jobs.size).toBe(0);
    }

    /**
     * (added) What the device reads after the pivot: what was copied, and the rest from the backing file — all of
     * it when the target got the source's chain (drive-mirror absolute-paths), zeroes without a backing file.
     */
    async function assertData(sync: MirrorSyncMode, copied: [number, number][]): Promise<void> {
      await expectPattern(g, qdev0, 256 * KiB, 64 * KiB, 5);
      if (v.drive === 'absolute-paths') copied = ALL_LAYERS;
      for (const [value, offset] of copied) await expectPattern(g, qdev0, offset, 64 * KiB, value);
      if (expectedBacking(sync) === undefined) {
        const copiedAt = new Set(copied.map(([, off]) => off));
        for (let off = 0; off < 256 * KiB; off += 64 * KiB) if (!copiedAt.has(off)) await expectPattern(g, qdev0, off, 64 * KiB, 0);
      }
    }

    /** (added) Offline: blockdev-mirror never rewrote the target's header; the images are consistent. */
    async function assertOffline(sync: MirrorSyncMode): Promise<void> {
      await g.close();
      const info = imageInfo(img('target'));
      const header = v.drive === 'absolute-paths' ? expectedBacking(sync) : (v.targetBacking ?? undefined);
      expect(info['backing-filename']).toBe(header);
      for (const name of ['target', 'source', 'back2', 'back1', 'back0']) expectCleanImage(img(name));
      expect(imageInfo(img('source'))['backing-filename']).toBe(img('back2'));
    }

    it('testFull', async () => {
      await runMirror('full');
      assertCorrectBackingImage('full');
      assertIntactSourceBackingChain();
      await assertData('full', ALL_LAYERS);
      await assertOffline('full');
    });

    it('testTop', async () => {
      await runMirror('top');
      assertCorrectBackingImage('top');
      assertIntactSourceBackingChain();
      await assertData('top', [[4, 192 * KiB]]);
      await assertOffline('top');
    });

    it('testNone', async () => {
      await runMirror('none');
      assertCorrectBackingImage('none');
      assertIntactSourceBackingChain();
      await assertData('none', []);
      await assertOffline('none');
    });
  });
}
