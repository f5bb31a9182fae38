import { describe, expect, it } from 'vitest';
import { BlockStatus, Graph, Perm, PERM_ALL, ReqFlag, isAllocated } from '../src/index.js';
import { testDrivers } from './drivers.js';
import { randInt, xorshift } from './prng.js';

const CL = 4096;
const SIZE = 64 * CL;
const R = Perm.CONSISTENT_READ;
const W = Perm.WRITE;
const WU = Perm.WRITE_UNCHANGED;

async function chain(opts: { latencyMs?: number; filter?: boolean } = {}) {
  const g = new Graph({ drivers: testDrivers });
  await g.addNode({ driver: 'test-mem', nodeName: 'basefile', size: SIZE, latencyMs: opts.latencyMs ?? 0 });
  await g.addNode({ driver: 'test-mem', nodeName: 'topfile', size: SIZE, latencyMs: opts.latencyMs ?? 0 });
  const base = g.backend('basefile', { perm: R | W, shared: PERM_ALL });
  const rnd = xorshift(7);
  const baseData = new Uint8Array(SIZE);
  for (let i = 0; i < SIZE; i++) baseData[i] = 1 + Math.floor(rnd() * 255);
  await base.pwrite(0, baseData);
  base.remove();
  const top = await g.addNode({ driver: 'test-cow', nodeName: 'top', file: 'topfile', backing: 'basefile', size: SIZE, clusterSize: CL });
  const writes: [number, number, number][] = [];
  const orig = top.impl.pwritev!.bind(top.impl);
  top.impl = { ...top.impl, pwritev: (o, b, q, f) => (writes.push([o, b, f]), orig(o, b, q, f)) };
  const entry = opts.filter ? await g.addNode({ driver: 'test-filter', nodeName: 'f', file: 'top' }) : top;
  return { g, top, entry, baseData, writes };
}

describe('copy-on-read in the pipeline', () => {
  it('copies only unallocated clusters, with WRITE_UNCHANGED, rounding to clusters', async () => {
    const { g, top, baseData, writes } = await chain();
    const guest = g.backend(top, { perm: R | W, shared: R | WU });
    await guest.pwrite(4 * CL, new Uint8Array(CL).fill(0xee));
    writes.length = 0;
    const cor = g.backend(top, { perm: R | WU, shared: PERM_ALL });
    // An unaligned read over clusters 3..5; cluster 4 is allocated already.
    const out = await cor.read(3 * CL + 100, 2 * CL + 200, ReqFlag.COPY_ON_READ);
    expect(Buffer.compare(out.subarray(0, CL - 100), baseData.subarray(3 * CL + 100, 4 * CL))).toBe(0);
    expect(out.subarray(CL - 100, 2 * CL - 100).every((v) => v === 0xee)).toBe(true);
    expect(writes.map(([o, b, f]) => [o / CL, b / CL, f])).toEqual([
      [3, 1, ReqFlag.WRITE_UNCHANGED],
      [5, 1, ReqFlag.WRITE_UNCHANGED],
    ]);
    for (const c of [3, 4, 5]) expect((await isAllocated(top, c * CL, CL)).allocated).toBe(true);
    expect((await isAllocated(top, 6 * CL, CL)).allocated).toBe(false);
    // Reading again copies nothing.
    writes.length = 0;
    await cor.read(3 * CL, 3 * CL, ReqFlag.COPY_ON_READ);
    expect(writes).toEqual([]);
  });

  it('PREFETCH copies without filling a buffer', async () => {
    const { g, top, baseData } = await chain();
    const cor = g.backend(top, { perm: R | WU, shared: PERM_ALL });
    await cor.preadv(8 * CL, 4 * CL, null, ReqFlag.COPY_ON_READ | ReqFlag.PREFETCH);
    const st = await cor.blockStatus(8 * CL, 4 * CL);
    expect(st.ret & BlockStatus.ALLOCATED).toBeTruthy();
    expect(st.pnum).toBe(4 * CL);
    expect(Buffer.compare(await cor.read(8 * CL, 4 * CL), baseData.subarray(8 * CL, 12 * CL))).toBe(0);
  });

  it('needs WRITE_UNCHANGED on the edge it comes through', async () => {
    const { g, top } = await chain();
    const ro = g.backend(top, { perm: R, shared: PERM_ALL });
    await expect(ro.read(0, CL, ReqFlag.COPY_ON_READ)).rejects.toThrow(/needs the 'write unchanged' permission/);
  });

  it('through a pass-through filter, a writer entering below the filter never gets overwritten by a stale copy-up', async () => {
    for (let seed = 1; seed <= 12; seed++) {
      const { g, top, entry, baseData } = await chain({ latencyMs: 2, filter: true });
      const cor = g.backend(entry, { perm: R | WU, shared: PERM_ALL });
      const writer = g.backend(top, { perm: R | W, shared: PERM_ALL });
      const rnd = xorshift(seed);
      const model = baseData.slice();
      const ops: Promise<unknown>[] = [];
      // Concurrent overlapping guest writes have no defined order, so the writes never overlap each other;
      // copy-ups overlap everything.
      const written = new Uint8Array(SIZE);
      for (let i = 0; i < 60; i++) {
        const c = randInt(rnd, 0, 15);
        if (rnd() < 0.5) {
          ops.push(cor.read(c * CL, CL * randInt(rnd, 1, 3), ReqFlag.COPY_ON_READ));
        } else {
          const off = c * CL + randInt(rnd, 0, CL - 1);
          const len = Math.min(randInt(rnd, 1, 2 * CL), SIZE - off);
          if (written.subarray(off, off + len).some((v) => v)) continue;
          written.fill(1, off, off + len);
          const data = new Uint8Array(len).fill(i + 1);
          model.set(data, off);
          ops.push(writer.pwrite(off, data));
        }
      }
      await Promise.all(ops);
      const got = await writer.read(0, SIZE);
      const bad = got.findIndex((v, k) => v !== model[k]);
      expect(bad, `seed ${seed}: stale data at ${bad}`).toBe(-1);
      await g.close();
    }
  });
});
