import { describe, expect, it } from 'vitest';
import { BlockStatus, blockStatusAbove, Graph, isAllocatedAbove, Perm, PERM_ALL, drainedBegin, drainedEnd } from '../src/index.js';
import { testDrivers } from './drivers.js';

const CL = 4096;

async function chain() {
  const g = new Graph({ drivers: testDrivers });
  await g.addNode({ driver: 'test-mem', nodeName: 'bf', size: 16 * CL });
  await g.addNode({ driver: 'test-mem', nodeName: 'mf', size: 16 * CL });
  await g.addNode({ driver: 'test-mem', nodeName: 'tf', size: 16 * CL });
  const base = await g.addNode({ driver: 'test-cow', nodeName: 'base', file: 'bf', size: 8 * CL, clusterSize: CL });
  const mid = await g.addNode({ driver: 'test-cow', nodeName: 'mid', file: 'mf', backing: 'base', size: 16 * CL, clusterSize: CL });
  const top = await g.addNode({ driver: 'test-cow', nodeName: 'top', file: 'tf', backing: 'mid', size: 16 * CL, clusterSize: CL });
  const w = (n: string) => g.backend(n, { perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: PERM_ALL });
  return { g, base, mid, top, w };
}

describe('block status through chains', () => {
  it('reports the layer that has the data and treats a short backing file as zeroes', async () => {
    const { g, base, mid, top } = await chain();
    // blockStatusAbove needs writers only for setup; drop the COW perms restriction by writing before chaining.
    const bb = g.backend(base, { perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: PERM_ALL });
    const mb = g.backend(mid, { perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: PERM_ALL });
    const tb = g.backend(top, { perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: PERM_ALL });
    await bb.pwrite(0, new Uint8Array(2 * CL).fill(1));
    await mb.pwrite(2 * CL, new Uint8Array(CL).fill(2));
    await tb.pwrite(3 * CL, new Uint8Array(CL).fill(3));
    await tb.pwriteZeroes(4 * CL, CL);
    const at = async (c: number) => blockStatusAbove(top, undefined, false, true, c * CL, CL);
    expect((await at(0)).depth).toBe(3);
    expect((await at(0)).ret & BlockStatus.DATA).toBeTruthy();
    expect((await at(2)).depth).toBe(2);
    expect((await at(3)).depth).toBe(1);
    const z = await at(4);
    expect(z.depth).toBe(1);
    expect(z.ret & BlockStatus.ZERO).toBeTruthy();
    // Cluster 10 is past base's end (8 clusters): reads as zero, allocated at base's level.
    const past = await at(10);
    expect(past.ret & (BlockStatus.ZERO | BlockStatus.ALLOCATED)).toBe(BlockStatus.ZERO | BlockStatus.ALLOCATED);
    expect((await isAllocatedAbove(top, mid, false, 2 * CL, CL)).depth).toBe(0);
    expect((await isAllocatedAbove(top, mid, true, 2 * CL, CL)).depth).toBe(2);
    expect((await tb.read(2 * CL, 1))[0]).toBe(2);
    expect((await tb.read(10 * CL, 1))[0]).toBe(0);
  });

  it('drain waits for in-flight requests and queues new ones from backends', async () => {
    const g = new Graph({ drivers: testDrivers });
    const mem = await g.addNode({ driver: 'test-mem', nodeName: 'm', size: 1 << 20, latencyMs: 20 });
    const be = g.backend(mem, { perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: PERM_ALL });
    const order: string[] = [];
    const first = be.pwrite(0, new Uint8Array(10).fill(1)).then(() => order.push('first done'));
    await drainedBegin(mem);
    order.push('drained');
    expect(mem.inFlight).toBe(0);
    const second = be.pwrite(0, new Uint8Array(10).fill(2)).then(() => order.push('second done'));
    await new Promise((r) => setTimeout(r, 50));
    expect(order).toEqual(['first done', 'drained']);
    drainedEnd(mem);
    await Promise.all([first, second]);
    expect(order).toEqual(['first done', 'drained', 'second done']);
    expect((await be.read(0, 1))[0]).toBe(2);
  });
});
