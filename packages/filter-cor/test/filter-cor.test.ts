import { describe, expect, it } from 'vitest';
import { Graph, isAllocated, Perm, PERM_ALL, ReqFlag, type BlockBackend } from '@blockgraph/block-core';
import { copyOnReadDriver, corChildPerm, insertCopyOnRead, removeCopyOnRead } from '../src/index.js';
import { testDrivers } from '../../block-core/test/drivers.js';
import { randInt, xorshift } from '../../block-core/test/prng.js';

const CL = 4096;
const SIZE = 128 * CL;
const R = Perm.CONSISTENT_READ;
const W = Perm.WRITE;
const WU = Perm.WRITE_UNCHANGED;

async function chain(latencyMs = 0) {
  const g = new Graph({ drivers: [...testDrivers, copyOnReadDriver] });
  await g.addNode({ driver: 'test-mem', nodeName: 'basefile', size: SIZE, latencyMs });
  await g.addNode({ driver: 'test-mem', nodeName: 'midfile', size: SIZE, latencyMs });
  await g.addNode({ driver: 'test-mem', nodeName: 'topfile', size: SIZE, latencyMs });
  const fill = async (node: string, from: number, to: number, seed: number) => {
    const be = g.backend(node, { perm: R | W, shared: PERM_ALL });
    const rnd = xorshift(seed);
    const d = new Uint8Array(to - from);
    for (let i = 0; i < d.length; i++) d[i] = 1 + Math.floor(rnd() * 255);
    await be.pwrite(from, d);
    be.remove();
    return d;
  };
  const baseData = await fill('basefile', 0, SIZE, 1);
  // The base is the memory node itself (a raw image); mid has data of its own in its first quarter.
  await g.addNode({ driver: 'test-cow', nodeName: 'mid', file: 'midfile', backing: 'basefile', size: SIZE, clusterSize: CL });
  const mb = g.backend('mid', { perm: R | W, shared: PERM_ALL });
  const rnd = xorshift(2);
  const midData = new Uint8Array(SIZE / 4).map(() => 1 + Math.floor(rnd() * 255));
  await mb.pwrite(0, midData);
  mb.remove();
  const top = await g.addNode({ driver: 'test-cow', nodeName: 'top', file: 'topfile', backing: 'mid', size: SIZE, clusterSize: CL });
  const expected = baseData.slice();
  expected.set(midData, 0);
  return { g, top, expected };
}

describe('copy-on-read filter', () => {
  it('always takes WRITE_UNCHANGED and shares only what its parents share (cor_child_perm)', async () => {
    expect(corChildPerm({ perm: R, shared: R })).toEqual({ perm: R | WU, shared: R | WU });
    expect(corChildPerm({ perm: R | W, shared: PERM_ALL })).toEqual({ perm: R | W | WU, shared: PERM_ALL });
    const { g, top } = await chain();
    const cor = await g.addNode({ driver: 'copy-on-read', nodeName: 'cor', file: 'top' });
    g.backend(cor, { name: 'guest', perm: R, shared: R });
    const edge = cor.filteredChild()!;
    expect(edge.perm).toBe(R | WU);
    expect(edge.shared).toBe(R | WU);
    expect(() => g.backend(top, { name: 'w', perm: R | W, shared: PERM_ALL })).toThrow(/unshared by node 'cor'/);
  });

  it('copies what it reads into the node below, and reads return the chain’s data', async () => {
    const { g, top, expected } = await chain();
    const cor = await g.addNode({ driver: 'copy-on-read', nodeName: 'cor', file: 'top' });
    const guest = g.backend(cor, { perm: R, shared: R | WU });
    const got = await guest.read(5 * CL + 10, 40 * CL);
    expect(Buffer.compare(got, expected.subarray(5 * CL + 10, 45 * CL + 10))).toBe(0);
    expect((await isAllocated(top, 5 * CL, 41 * CL)).pnum).toBe(41 * CL);
    expect((await isAllocated(top, 46 * CL, CL)).allocated).toBe(false);
  });

  it('with bottom, copies mid’s data but not base’s (iotest 310’s rule)', async () => {
    const { g, top, expected } = await chain();
    const cor = await g.addNode({ driver: 'copy-on-read', nodeName: 'cor', file: 'top', bottom: 'mid' });
    const guest = g.backend(cor, { perm: R, shared: R | WU });
    // Read across mid's data (first quarter) and base's data.
    const got = await guest.read(0, SIZE / 2);
    expect(Buffer.compare(got, expected.subarray(0, SIZE / 2))).toBe(0);
    expect((await isAllocated(top, 0, SIZE / 4)).pnum).toBe(SIZE / 4);
    expect((await isAllocated(top, SIZE / 4, CL)).allocated).toBe(false);
    // PREFETCH alone reads nothing where nothing needs copying.
    await guest.preadv(SIZE / 2, CL, null, ReqFlag.PREFETCH);
    expect((await isAllocated(top, SIZE / 2, CL)).allocated).toBe(false);
    // The chain down to bottom is frozen while the filter exists.
    await expect(g.replaceNode('mid', 'basefile')).rejects.toThrow(/Cannot change 'backing' link/);
    g.backend('top', { perm: R, shared: PERM_ALL }).remove();
  });

  it('PREFETCH without a buffer reaches the filter and copies (block-stream’s read), with and without bottom', async () => {
    const { g, top, expected } = await chain();
    const cor = await g.addNode({ driver: 'copy-on-read', nodeName: 'cor', file: 'top' });
    const guest = g.backend(cor, { perm: R, shared: R | WU });
    await guest.preadv(3 * CL + 7, 5 * CL, null, ReqFlag.PREFETCH);
    expect(await isAllocated(top, 3 * CL, 6 * CL)).toEqual({ allocated: true, pnum: 6 * CL });
    expect((await isAllocated(top, 9 * CL, CL)).allocated).toBe(false);
    const plain = g.backend('top', { perm: R, shared: PERM_ALL });
    expect(Buffer.compare(await plain.read(3 * CL, 6 * CL), expected.subarray(3 * CL, 9 * CL))).toBe(0);
    plain.remove();
    guest.remove();
    await g.deleteNode('cor');
    // With bottom: mid's clusters are copied, base's are not.
    const cor2 = await g.addNode({ driver: 'copy-on-read', nodeName: 'cor2', file: 'top', bottom: 'mid' });
    const guest2 = g.backend(cor2, { perm: R, shared: R | WU });
    await guest2.preadv(SIZE / 4 - 2 * CL, 4 * CL, null, ReqFlag.PREFETCH);
    expect(await isAllocated(top, SIZE / 4 - 2 * CL, 2 * CL)).toEqual({ allocated: true, pnum: 2 * CL });
    expect((await isAllocated(top, SIZE / 4, 2 * CL)).allocated).toBe(false);
  });

  it('rejects a bad bottom with QEMU’s messages', async () => {
    const { g } = await chain();
    await expect(g.addNode({ driver: 'copy-on-read', file: 'top', bottom: 'nope' })).rejects.toThrow("Bottom node 'nope' not found");
    await g.addNode({ driver: 'test-filter', nodeName: 'flt', file: 'basefile' });
    await expect(g.addNode({ driver: 'copy-on-read', file: 'top', bottom: 'flt' })).rejects.toThrow("Bottom node 'flt' is a filter");
    await expect(g.addNode({ driver: 'copy-on-read', file: 'top', bottom: 'topfile' })).rejects.toThrow(/is not in the backing chain/);
  });

  it('is inserted and removed under a running random workload without losing a request', async () => {
    const { g, top, expected } = await chain(1);
    const guest = g.backend(top, { name: 'guest', perm: R | W, shared: R | WU });
    const model = expected.slice();
    const regions = 8;
    const regionSize = SIZE / regions;
    let stop = false;
    let ops = 0;
    const worker = async (w: number, rnd: () => number): Promise<void> => {
      const lo = w * regionSize;
      while (!stop) {
        const off = lo + randInt(rnd, 0, regionSize - 1);
        const len = randInt(rnd, 1, Math.min(2 * CL, lo + regionSize - off));
        if (rnd() < 0.4) {
          const d = new Uint8Array(len).fill(randInt(rnd, 1, 255));
          await guest.pwrite(off, d);
          model.set(d, off);
        } else {
          const got = await guest.read(off, len);
          const want = model.subarray(off, off + len);
          if (Buffer.compare(got, want) !== 0) throw new Error(`worker ${w}: stale read at ${off}+${len}`);
        }
        ops++;
      }
    };
    const workers = Array.from({ length: regions }, (_, w) => worker(w, xorshift(100 + w)));
    for (let round = 0; round < 4; round++) {
      await new Promise((r) => setTimeout(r, 30));
      const cor = await insertCopyOnRead(g, 'top', { nodeName: 'cor' });
      expect(guest.root!.node).toBe(cor);
      await new Promise((r) => setTimeout(r, 30));
      await removeCopyOnRead(g, 'cor');
      expect(guest.root!.node).toBe(top);
    }
    stop = true;
    await Promise.all(workers);
    expect(ops).toBeGreaterThan(100);
    expect(Buffer.compare(await guest.read(0, SIZE), model)).toBe(0);
    // Reads while the filter was in copied data up.
    let allocated = 0;
    for (let c = 0; c < SIZE / CL; c++) if ((await isAllocated(top, c * CL, CL)).allocated) allocated++;
    expect(allocated).toBeGreaterThan(0);
    expect(top.inFlight).toBe(0);
  });

  it('moves even a strict parent above itself (as QEMU’s bdrv_append checks the new graph once)', async () => {
    const { g, top } = await chain();
    const strict: BlockBackend = g.backend(top, { name: 'strict', perm: R, shared: R });
    const cor = await insertCopyOnRead(g, 'top', { nodeName: 'cor' });
    expect(strict.root!.node).toBe(cor);
    await removeCopyOnRead(g, 'cor');
    expect(strict.root!.node).toBe(top);
  });

  it('refuses insertion with a clear permission error where its needs conflict, and changes nothing', async () => {
    const { g } = await chain();
    // Copy-on-read writes into the node below: impossible on a read-only node.
    const ro = await g.addNode({ driver: 'test-cow', nodeName: 'ro', file: { driver: 'test-mem', size: SIZE }, size: SIZE, readOnly: true });
    const reader = g.backend(ro, { name: 'reader', perm: R, shared: R | WU });
    await expect(insertCopyOnRead(g, 'ro', { nodeName: 'cor' })).rejects.toThrow(
      "Cannot insert filter 'cor': Read-only block node 'ro' cannot support read-write users",
    );
    expect(reader.root!.node).toBe(ro);
    expect(g.findNode('cor')).toBeUndefined();
    expect(ro.parents).toHaveLength(1);
  });
});
