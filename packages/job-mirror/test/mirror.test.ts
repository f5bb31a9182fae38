import { describe, expect, it } from 'vitest';
import { BlockError, Graph, isAllocated, PERM_ALL, type BlockBackend } from '@blockgraph/block-core';
import { testDrivers } from '../../block-core/test/drivers.js';
import { startMirror } from '../src/index.js';
import { firstDiff, R, setup, statusSequence, W, WU } from './helpers.js';

describe('mirror: argument errors worded as QEMU’s', () => {
  it('refuses bad arguments', async () => {
    const { g } = await setup({ fill: 'none', size: 1 << 20 });
    await expect(startMirror(g, { device: 'src', target: 'src', sync: 'full' })).rejects.toThrow("Can't mirror node into itself");
    await expect(startMirror(g, { device: 'src', target: 'tgt', sync: 'full', granularity: 1000 })).rejects.toThrow("Parameter 'granularity' expects a power of 2");
    await expect(startMirror(g, { device: 'src', target: 'tgt', sync: 'full', granularity: 256 })).rejects.toThrow("Parameter 'granularity' expects a value in range [512B, 64MB]");
    await expect(startMirror(g, { device: 'src', target: 'tgt', sync: 'full', 'buf-size': -1 })).rejects.toThrow("Invalid parameter 'buf-size'");
    await expect(startMirror(g, { device: 'src', target: 'tgt', sync: 'full', speed: -1 })).rejects.toThrow("Parameter 'speed' expects a non-negative value");
    await expect(startMirror(g, { device: 'src', target: 'tgt', sync: 'incremental' })).rejects.toThrow("Sync mode 'incremental' not supported");
    await expect(startMirror(g, { device: 'src', target: 'nope', sync: 'full' })).rejects.toThrow(/Cannot find device='nope'/);
    // Nothing was left behind.
    expect(g.getNode('src').parents.map((p) => p.parent.describeParent())).toEqual(["block device 'guest'"]);
  });

  it('fails the job when sizes differ', async () => {
    const { g, events } = await setup({ fill: 'none', size: 1 << 20 });
    await g.addNode({ driver: 'test-mem', nodeName: 'small', size: 4096 });
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'small', sync: 'full' });
    await job.waitFinished();
    const done = events.find((e) => e.event === 'BLOCK_JOB_COMPLETED');
    expect(done?.data.error).toBe('Source and target image have different sizes');
    expect(g.getNode('src').parents.map((p) => p.parent.describeParent())).toEqual(["block device 'guest'"]);
  });
});

describe('mirror: background mode', () => {
  it('copies a disk in use, pivots on complete, and emits QEMU’s event sequence', async () => {
    const { g, guest, model, events, readTarget } = await setup({ latencyMs: 1 });
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', granularity: 65536 });
    // Guest I/O while the job runs.
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 40; i++) {
      const off = (i * 97 * 4096) % (model.length - 8192);
      const d = new Uint8Array(5000).fill(i + 1);
      model.set(d, off);
      writes.push(guest.pwrite(off, d));
      if (i % 8 === 0) await Promise.all(writes.splice(0));
    }
    await Promise.all(writes);
    await job.waitFor('ready');
    expect(job.status).toBe('ready');
    job.complete();
    await job.waitFinished();
    expect(statusSequence(events)).toEqual(['created', 'running', 'ready', 'waiting', 'pending', 'concluded', 'null']);
    const completed = events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')!;
    expect(completed.data).toMatchObject({ type: 'mirror', device: 'job0', speed: 0 });
    expect(completed.data.error).toBeUndefined();
    expect(completed.data.len).toBe(completed.data.offset);
    // The guest now uses the target; the mirror node is gone.
    expect(guest.root!.node.nodeName).toBe('tgt');
    expect([...g.nodes.keys()].sort()).toEqual(['src', 'tgt']);
    expect(firstDiff(await guest.read(0, model.length), model)).toBe(-1);
    guest.remove();
    expect(firstDiff(await readTarget(), model)).toBe(-1);
  });

  it('soft cancel in READY leaves a consistent copy and no pivot; force cancel before READY cancels', async () => {
    const { g, guest, model, events, readTarget } = await setup();
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full' });
    await job.waitFor('ready');
    await guest.pwrite(4096, new Uint8Array(100).fill(9));
    model.fill(9, 4096, 4196);
    job.cancel(false);
    await job.waitFinished();
    expect(events.some((e) => e.event === 'BLOCK_JOB_COMPLETED')).toBe(true);
    expect(events.some((e) => e.event === 'BLOCK_JOB_CANCELLED')).toBe(false);
    expect(guest.root!.node.nodeName).toBe('src');
    expect(firstDiff(await readTarget(), model)).toBe(-1);

    const job2 = await startMirror(g, { jobId: 'job1', device: 'src', target: 'tgt', sync: 'full', speed: 65536 });
    job2.cancel(false);
    await job2.waitFinished();
    expect(events.filter((e) => e.event === 'BLOCK_JOB_CANCELLED').map((e) => e.data.device)).toEqual(['job1']);
    expect(statusSequence(events, 'job1')).toEqual(['created', 'running', 'aborting', 'concluded', 'null']);
    expect(guest.root!.node.nodeName).toBe('src');
    expect(g.findNode('src')!.parents.length).toBe(1);
  });

  it('pause stops progress; resume continues; set-speed throttles', async () => {
    const { g } = await setup({ latencyMs: 1 });
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', speed: 1 << 20, granularity: 65536, bufSize: 65536 });
    await new Promise((r) => setTimeout(r, 150));
    job.pause();
    await job.waitFor('paused');
    const at = job.progress.current;
    await new Promise((r) => setTimeout(r, 200));
    expect(job.progress.current).toBe(at);
    expect(job.progress.current).toBeLessThan(4 << 20);
    job.resume();
    job.setSpeed(0);
    await job.waitFor('ready');
    job.complete();
    await job.waitFinished();
  });
});

describe('mirror: target-is-zero', () => {
  it('copies only what does not read as zero when the target reads as zeroes already', async () => {
    const { g, guest, model, readTarget } = await setup({ fill: 'half' });
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', targetIsZero: true });
    await job.waitFor('ready');
    // Half of the 4 MiB is data; the rest reads as zero on both sides and is not copied.
    expect(job.progress.total).toBe(2 << 20);
    job.complete();
    await job.waitFinished();
    guest.remove();
    expect(firstDiff(await readTarget(), model)).toBe(-1);
  });
});

describe('mirror: write-blocking mode', () => {
  it('after READY every guest write is on the target at once, and completion copies nothing', async () => {
    const { g, guest, model, readTarget } = await setup({ latencyMs: 1 });
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', copyMode: 'write-blocking' });
    await job.waitFor('ready');
    await new Promise((r) => setTimeout(r, 20));
    expect(job.query()['actively-synced']).toBe(true);
    for (let i = 0; i < 20; i++) {
      const off = 3000 + i * 70000;
      const d = new Uint8Array(9000).fill(200 + i);
      await guest.pwrite(off, d);
      model.set(d, off);
      expect(job.bitmap.count()).toBe(0);
    }
    await guest.pwriteZeroes(1 << 20, 200000);
    model.fill(0, 1 << 20, (1 << 20) + 200000);
    await guest.flush();
    expect(firstDiff(await readTarget(), model)).toBe(-1);
    const before = job.progress.current;
    job.complete();
    await job.waitFinished();
    expect(job.progress.current).toBe(before);
  });

  it('refuses a writer that would bypass the mirror node, and allows it in background mode', async () => {
    // The guest itself would share WRITE: only the mirror node's rule stands in the way.
    const { g } = await setup({ fill: 'none', size: 1 << 20, guestShared: R | W | WU });
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', copyMode: 'write-blocking' });
    expect(() => g.backend('src', { name: 'sneaky', perm: R | W, shared: 15 })).toThrow(
      /Permission conflict on node 'src': permissions 'write' are both required by block device 'sneaky'.*unshared by node '#block/,
    );
    await job.waitFor('ready');
    job.cancel(true);
    await job.waitFinished();
    const job2 = await startMirror(g, { jobId: 'job1', device: 'src', target: 'tgt', sync: 'full' });
    const sneaky = g.backend('src', { name: 'sneaky', perm: R | W, shared: 15 });
    await job2.waitFor('ready');
    // The write bypasses the mirror node; the source's catch-all bitmap still sees it and the job copies it.
    await sneaky.pwrite(12345, new Uint8Array([7, 7, 7]));
    // Leaving background mode is refused while such a writer exists, and nothing changes.
    await expect(job2.change({ copyMode: 'write-blocking' })).rejects.toThrow(/Cannot change copy mode to 'write-blocking': Permission conflict on node 'src'/);
    expect(job2.copyMode).toBe('background');
    job2.complete();
    await job2.waitFinished();
    const tgt = g.backend('tgt', { perm: 0, shared: 15 });
    expect([...(await tgt.read(12345, 3))]).toEqual([7, 7, 7]);
    sneaky.remove();
  });

  it('keeps unaligned dirty heads and tails for the background copy (151: unaligned active I/O)', async () => {
    const { g, guest, model, readTarget } = await setup({ size: 2 << 20 });
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', copyMode: 'write-blocking', bufSize: 256 << 10, speed: 1 });
    await new Promise((r) => setTimeout(r, 50));
    // A one-byte write into a still-dirty area.
    await guest.pwrite((1 << 20) + 42, new Uint8Array([0x55]));
    model[(1 << 20) + 42] = 0x55;
    job.setSpeed(0);
    await job.waitFor('ready');
    job.complete();
    await job.waitFinished();
    guest.remove();
    expect(firstDiff(await readTarget(), model)).toBe(-1);
  });
});

describe('mirror: read-write-blocking mode', () => {
  it('with background copying stalled, guest reads alone bring the job to READY', async () => {
    const { g, guest, model, readTarget } = await setup({ size: 2 << 20 });
    const job = await startMirror(g, {
      jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', copyMode: 'read-write-blocking',
      speed: 1, granularity: 65536, bufSize: 65536,
    });
    // The job put a copy-on-read node above the mirror node.
    await new Promise((r) => setTimeout(r, 50));
    expect(guest.root!.node.driver.name).toBe('copy-on-read');
    const mirrorTop = guest.root!.node.filteredChild()!.node;
    expect(mirrorTop.driver.name).toBe('mirror_top');
    // Dirty chunks are unallocated at the mirror node, clean ones allocated.
    expect((await isAllocated(mirrorTop, 1 << 20, 65536)).allocated).toBe(false);
    for (let off = 0; off < model.length; off += 128 << 10) {
      const got = await guest.read(off, 128 << 10);
      expect(firstDiff(got, model.subarray(off, off + (128 << 10)))).toBe(-1);
    }
    await job.waitFor('ready');
    expect(job.status).toBe('ready');
    expect((await isAllocated(mirrorTop, 1 << 20, 65536)).allocated).toBe(true);
    job.complete();
    await job.waitFinished();
    expect(guest.root!.node.nodeName).toBe('tgt');
    expect(g.findNode('src')!.parents.length).toBe(0);
    guest.remove();
    expect(firstDiff(await readTarget(), model)).toBe(-1);
  });

  it('changes copy mode between all three modes while running', async () => {
    const { g, guest, model, readTarget } = await setup({ latencyMs: 1 });
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', speed: 1 << 20 });
    const modes = ['write-blocking', 'read-write-blocking', 'background', 'read-write-blocking', 'write-blocking', 'background', 'write-blocking'] as const;
    let i = 0;
    for (const m of modes) {
      await job.change({ copyMode: m });
      expect(job.copyMode).toBe(m);
      const off = 100000 * ++i;
      const d = new Uint8Array(3333).fill(i);
      await guest.pwrite(off, d);
      model.set(d, off);
      await guest.read(0, 65536 * 3);
      const top = guest.root!.node;
      expect(top.driver.name).toBe(m === 'read-write-blocking' ? 'copy-on-read' : 'mirror_top');
    }
    job.setSpeed(0);
    await job.waitFor('ready');
    job.complete();
    await job.waitFinished();
    guest.remove();
    expect(firstDiff(await readTarget(), model)).toBe(-1);
  });
});

describe('mirror: errors', () => {
  it('a BlockError names what was wrong', () => {
    expect(new BlockError('EINVAL', 'x').code).toBe('EINVAL');
  });
});

export { R, W };

describe('mirror: drive-mirror backing modes', () => {
  const CL = 4096;
  const SIZE = 64 * CL;

  /** base (test-mem, 1s) ← src (test-cow, 2s in its second half); the target a test-cow without a backing file. */
  async function chain() {
    const g = new Graph({ drivers: testDrivers });
    await g.addNode({ driver: 'test-mem', nodeName: 'base', size: SIZE });
    const b = g.backend('base', { perm: R | W, shared: PERM_ALL });
    await b.pwrite(0, new Uint8Array(SIZE).fill(1));
    b.remove();
    await g.addNode({ driver: 'test-mem', nodeName: 'srcfile', size: SIZE });
    await g.addNode({ driver: 'test-cow', nodeName: 'src', file: 'srcfile', backing: 'base', size: SIZE, clusterSize: CL });
    await g.addNode({ driver: 'test-mem', nodeName: 'tgtfile', size: SIZE });
    const target = await g.addNode({ driver: 'test-cow', nodeName: 'tgt', file: 'tgtfile', backing: null, size: SIZE, clusterSize: CL });
    const guest = g.backend('src', { name: 'guest', perm: R | W, shared: R | WU });
    await guest.pwrite(SIZE / 2, new Uint8Array(SIZE / 2).fill(2));
    return { g, guest, target };
  }

  const expectContent = async (be: BlockBackend): Promise<void> => {
    const d = await be.read(0, SIZE);
    expect(d.subarray(0, SIZE / 2).every((v) => v === 1)).toBe(true);
    expect(d.subarray(SIZE / 2).every((v) => v === 2)).toBe(true);
  };

  for (const [sync, backing] of [
    ['top', 'base'],
    ['none', 'src'],
    ['full', undefined],
  ] as const) {
    it(`'source' with sync=${sync}: the target's backing file becomes ${backing ?? 'nothing'} before the pivot`, async () => {
      const { g, guest, target } = await chain();
      const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync, backingMode: 'source' });
      await job.waitFor('ready');
      await guest.pwrite(0, new Uint8Array(CL).fill(3));
      job.complete();
      await job.waitFinished();
      expect(job.query().error).toBeUndefined();
      expect(guest.root!.node).toBe(target);
      expect(target.backing?.node.nodeName).toBe(backing);
      const d = await guest.read(0, CL);
      expect(d.every((v) => v === 3)).toBe(true);
      await guest.pwrite(0, new Uint8Array(CL).fill(1));
      await expectContent(guest);
    });
  }

  it("'leave' (the default) keeps the target's backing file; a cancelled job sets none", async () => {
    const { g, guest, target } = await chain();
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'top' });
    await job.waitFor('ready');
    job.complete();
    await job.waitFinished();
    expect(guest.root!.node).toBe(target);
    expect(target.backing).toBeUndefined();

    const c = await chain();
    const job2 = await startMirror(c.g, { jobId: 'job1', device: 'src', target: 'tgt', sync: 'top', backingMode: 'source' });
    job2.cancel(true);
    await job2.waitFinished();
    expect(c.guest.root!.node.nodeName).toBe('src');
    expect(c.target.backing).toBeUndefined();
  });

  it("'open' opens nothing for a target whose header names no backing file; bad values are refused", async () => {
    const { g, guest, target } = await chain();
    await expect(startMirror(g, { device: 'src', target: 'tgt', sync: 'full', 'backing-mode': 'bogus' })).rejects.toThrow(
      "Parameter 'backing-mode' does not accept value 'bogus'",
    );
    const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', backingMode: 'open' });
    await job.waitFor('ready');
    job.complete();
    await job.waitFinished();
    expect(job.query().error).toBeUndefined();
    expect(guest.root!.node).toBe(target);
    expect(target.backing).toBeUndefined();
    await expectContent(guest);
  });
});
