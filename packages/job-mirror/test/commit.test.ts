/**
 * The active commit (startCommit, commit_active_start) on in-memory chains: what is allocated above the base
 * reaches it while a guest keeps writing through the top, the base takes the top's place on completion, the
 * nodes between share what they must, and the base's read-only state is restored when the job does not complete.
 */
import { describe, expect, it } from 'vitest';
import { Graph, PERM_ALL, type BlockBackend, type GraphEvent } from '@blockgraph/block-core';
import { copyOnReadDriver } from '@blockgraph/filter-cor';
import { testDrivers } from '../../block-core/test/drivers.js';
import { xorshift } from '../../block-core/test/prng.js';
import { startCommit } from '../src/index.js';
import { firstDiff, R, statusSequence, W, WU } from './helpers.js';

const SIZE = 2 << 20;

/** base (test-mem) <- mid (test-cow) <- top (test-cow), guest on top; the model is what the guest sees. */
async function chain(opts: { baseReadOnly?: boolean; latencyMs?: number } = {}) {
  const g = new Graph({ drivers: [...testDrivers, copyOnReadDriver] });
  const latencyMs = opts.latencyMs ?? 1;
  await g.addNode({ driver: 'test-mem', nodeName: 'base', size: SIZE, latencyMs });
  await g.addNode({ driver: 'test-mem', nodeName: 'midfile', size: SIZE, latencyMs });
  await g.addNode({ driver: 'test-mem', nodeName: 'topfile', size: SIZE, latencyMs });
  await g.addNode({ driver: 'test-cow', nodeName: 'mid', file: 'midfile', backing: 'base', size: SIZE, clusterSize: 4096 });
  await g.addNode({ driver: 'test-cow', nodeName: 'top', file: 'topfile', backing: 'mid', size: SIZE, clusterSize: 4096 });
  const model = new Uint8Array(SIZE);
  const rnd = xorshift(7);
  const fill = async (be: BlockBackend, off: number, len: number, v: number) => {
    const d = new Uint8Array(len).fill(v);
    for (let i = 0; i < len; i += 64) d[i] = Math.floor(rnd() * 256);
    model.set(d, off);
    await be.pwrite(off, d);
  };
  // Each layer gets data of its own, partly hidden by the layers above.
  for (const [name, ranges] of [
    ['base', [[0, SIZE, 1]]],
    ['mid', [[100_000, 300_000, 2], [1_500_000, 4096, 3]]],
    ['top', [[200_000, 50_000, 4], [1_000_000, 120_000, 5]]],
  ] as const) {
    const be = g.backend(name, { perm: R | W, shared: PERM_ALL });
    for (const [off, len, v] of ranges) await fill(be, off, len, v);
    be.remove();
  }
  if (opts.baseReadOnly) await g.reopen('base', { readOnly: true });
  const guest = g.backend('top', { name: 'guest', perm: R | W, shared: R | WU });
  const events: GraphEvent[] = [];
  g.on((e) => events.push(e));
  return { g, guest, model, events, fill };
}

async function readNode(g: Graph, name: string): Promise<Uint8Array> {
  const be = g.backend(name, { perm: 0, shared: PERM_ALL });
  try {
    return await be.read(0, SIZE);
  } finally {
    be.remove();
  }
}

describe('active commit', () => {
  it('commits the whole chain into its base while the guest writes, then the guest uses the base', async () => {
    const { g, guest, model, events, fill } = await chain({ baseReadOnly: true });
    const job = await startCommit(g, { jobId: 'job0', device: 'top' });
    expect(g.getNode('base').readOnly).toBe(false);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 30; i++) writes.push(fill(guest, (i * 65_537) % (SIZE - 9000), 9000, 0x40 + i));
    await Promise.all(writes);
    await job.waitFor('ready');
    await fill(guest, 12_345, 777, 0x99);
    job.complete();
    await job.waitFinished();
    expect(statusSequence(events)).toEqual(['created', 'running', 'ready', 'waiting', 'pending', 'concluded', 'null']);
    expect(events.find((e) => e.event === 'BLOCK_JOB_COMPLETED')?.data).toMatchObject({ type: 'commit', device: 'job0' });
    expect(guest.root!.node.nodeName).toBe('base');
    expect(firstDiff(await guest.read(0, SIZE), model)).toBe(-1);
    guest.remove();
    expect(firstDiff(await readNode(g, 'base'), model)).toBe(-1);
    // The mirror node is gone; the old top and the node between are still open, unchanged below the top.
    expect(g.getNode('top').parents).toEqual([]);
    expect(g.getNode('base').readOnly).toBe(false);
  });

  it('commits into the node between, leaving the base as it was', async () => {
    const { g, guest, model } = await chain();
    const before = await readNode(g, 'base');
    const job = await startCommit(g, { jobId: 'job0', device: 'top', base: 'mid' });
    await job.waitFor('ready');
    job.complete();
    await job.waitFinished();
    expect(guest.root!.node.nodeName).toBe('mid');
    expect(firstDiff(await guest.read(0, SIZE), model)).toBe(-1);
    expect(firstDiff(await readNode(g, 'base'), before)).toBe(-1);
  });

  it('a cancelled commit makes a read-only base read-only again and leaves the guest on the top', async () => {
    const { g, guest, model } = await chain({ baseReadOnly: true, latencyMs: 3 });
    const job = await startCommit(g, { jobId: 'job0', device: 'top', speed: 1 << 20 });
    job.cancel(true);
    await job.waitFinished();
    expect(guest.root!.node.nodeName).toBe('top');
    expect(g.getNode('base').readOnly).toBe(true);
    expect(firstDiff(await guest.read(0, SIZE), model)).toBe(-1);
    // The chain is no longer frozen: its links can change again.
    await g.setBacking('top', 'base');
    expect(g.getNode('top').backing?.node.nodeName).toBe('base');
  });

  it('refuses a base that is the top or not below it', async () => {
    const { g } = await chain();
    await expect(startCommit(g, { device: 'top', base: 'top' })).rejects.toThrow('cannot commit an image into itself');
    await expect(startCommit(g, { device: 'mid', base: 'topfile' })).rejects.toThrow("'topfile' is not in the backing chain of 'mid'");
    await expect(startCommit(g, { device: 'base' })).rejects.toThrow('cannot commit an image into itself');
    await expect(startCommit(g, { device: 'top', onError: 'sometimes' as never })).rejects.toThrow("Parameter 'on-error' does not accept value 'sometimes'");
    expect(g.jobs.size).toBe(0);
  });

  it('a commit that cannot start leaves links frozen by others frozen, and its own not', async () => {
    const { g } = await chain({ baseReadOnly: true });
    g.freezeChain(g.getNode('mid'), g.getNode('base'));
    await expect(startCommit(g, { jobId: 'job0', device: 'top' })).rejects.toThrow(/Cannot freeze 'backing' link/);
    expect(g.getNode('mid').backing?.frozen).toBe(true);
    expect(g.getNode('top').backing?.frozen).toBe(false);
    expect(g.getNode('base').readOnly).toBe(true);
    expect(g.jobs.size).toBe(0);
  });
});
