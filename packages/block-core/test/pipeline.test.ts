import { describe, expect, it } from 'vitest';
import { BlockError, BlockStatus, Graph, IOVector, Perm, PERM_ALL, ReqFlag, type BlockNode } from '../src/index.js';
import { testDrivers } from './drivers.js';
import { randInt, xorshift } from './prng.js';

const RW = Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE;
const SIZE = 256 * 1024;

async function setup(alignment: number, opts: { filter?: boolean; latencyMs?: number; detectZeroes?: string } = {}) {
  const g = new Graph({ drivers: testDrivers });
  const mem = await g.addNode({ driver: 'test-mem', nodeName: 'mem', size: SIZE, alignment, maxTransfer: 16384, latencyMs: opts.latencyMs ?? 0, discard: 'unmap', detectZeroes: opts.detectZeroes ?? 'off' });
  let top: BlockNode = mem;
  if (opts.filter) top = await g.addNode({ driver: 'test-filter', nodeName: 'f', file: 'mem', discard: 'unmap' });
  const be = g.backend(top, { perm: RW, shared: Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED });
  return { g, mem, top, be };
}

function pattern(rnd: () => number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

describe('request pipeline property test', () => {
  for (const alignment of [1, 512, 4096]) {
    for (const filter of [false, true]) {
      it(`random requests at alignment ${alignment}${filter ? ' through a filter' : ''} match a byte-array model`, async () => {
        const seed = 1000 + alignment + (filter ? 1 : 0);
        const rnd = xorshift(seed);
        const { be, mem } = await setup(alignment, { filter });
        const model = new Uint8Array(SIZE);
        for (let op = 0; op < 400; op++) {
          const off = randInt(rnd, 0, SIZE - 1);
          const len = randInt(rnd, 1, Math.min(SIZE - off, rnd() < 0.2 ? 40000 : 5000));
          const kind = rnd();
          const ctx = `seed ${seed} op ${op} off ${off} len ${len}`;
          if (kind < 0.4) {
            const data = pattern(rnd, len);
            const flags = rnd() < 0.3 ? ReqFlag.FUA : 0;
            await be.pwrite(off, data, flags);
            model.set(data, off);
          } else if (kind < 0.55) {
            const flags = (rnd() < 0.5 ? ReqFlag.MAY_UNMAP : 0) | (rnd() < 0.3 ? ReqFlag.FUA : 0);
            await be.pwriteZeroes(off, len, flags);
            model.fill(0, off, off + len);
          } else if (kind < 0.65) {
            // test-mem zeroes what it discards, but the core passes only what the driver can take.
            await be.pdiscard(off, len);
            const mirror = await be.read(0, SIZE);
            // Discard may leave data or zeroes; adopt what the driver kept, but only zeroes are allowed to appear.
            for (let i = off; i < off + len; i++) {
              if (mirror[i] !== model[i] && mirror[i] !== 0) throw new Error(`${ctx}: discard produced garbage at ${i}`);
              model[i] = mirror[i]!;
            }
          } else if (kind < 0.7) {
            await be.flush();
          } else {
            const got = await be.read(off, len);
            const want = model.subarray(off, off + len);
            if (Buffer.compare(got, want) !== 0) {
              const i = got.findIndex((v, k) => v !== want[k]);
              throw new Error(`${ctx}: read mismatch at ${off + i}: got ${got[i]} want ${want[i]}`);
            }
          }
        }
        expect(Buffer.compare(await be.read(0, SIZE), model)).toBe(0);
        expect(mem.inFlight).toBe(0);
        expect(mem.tracked.size).toBe(0);
      });
    }
  }

  it('concurrent unaligned writes sharing alignment blocks all land (RMW is serialising)', async () => {
    for (const seed of [1, 2, 3]) {
      const rnd = xorshift(seed);
      const { be } = await setup(4096, { latencyMs: 3 });
      const model = new Uint8Array(SIZE);
      // Disjoint byte ranges, many of them inside the same 4 KiB blocks.
      const ops: Promise<void>[] = [];
      let pos = 0;
      while (pos < 64 * 1024) {
        const len = randInt(rnd, 1, 700);
        const data = pattern(rnd, len);
        model.set(data, pos);
        ops.push(be.pwrite(pos, data));
        pos += len + randInt(rnd, 0, 50);
      }
      await Promise.all(ops);
      expect(Buffer.compare(await be.read(0, SIZE), model), `seed ${seed}`).toBe(0);
    }
  });

  it('serialising writes wait for overlapping requests and are ordered', async () => {
    const { be, mem } = await setup(512, { latencyMs: 5 });
    const order: string[] = [];
    const orig = mem.impl.pwritev!.bind(mem.impl);
    mem.impl = { ...mem.impl, pwritev: async (o, b, q, f) => { order.push(`start ${q.toBuffer()[0]}`); await orig(o, b, q, f); order.push(`end ${q.toBuffer()[0]}`); } };
    const a = be.pwrite(0, new Uint8Array(4096).fill(1), ReqFlag.SERIALISING);
    const b = be.pwrite(1024, new Uint8Array(1024).fill(2));
    const c = be.pwrite(0, new Uint8Array(4096).fill(3), ReqFlag.SERIALISING);
    await Promise.all([a, b, c]);
    // Each overlapping write starts only after the previous one ended.
    expect(order).toEqual(['start 1', 'end 1', 'start 2', 'end 2', 'start 3', 'end 3']);
    const out = await be.read(0, 4096);
    expect(out[0]).toBe(3);
    expect(out[1500]).toBe(3);
  });

  it('NO_WAIT fails with EBUSY instead of waiting for a conflict', async () => {
    const { be } = await setup(512, { latencyMs: 10 });
    const a = be.pwrite(0, new Uint8Array(4096).fill(1), ReqFlag.SERIALISING);
    const err = await be.pwrite(512, new Uint8Array(512), ReqFlag.SERIALISING | ReqFlag.NO_WAIT).catch((e: unknown) => e);
    await a;
    expect(err).toBeInstanceOf(BlockError);
    expect((err as BlockError).code).toBe('EBUSY');
  });

  it('splits requests at max-transfer and zero-fills reads past the end of the node', async () => {
    const { g, mem } = await setup(512);
    const sizes: number[] = [];
    const orig = mem.impl.preadv!.bind(mem.impl);
    mem.impl = { ...mem.impl, preadv: (o, b, q, f) => (sizes.push(b), orig(o, b, q, f)) };
    const child = g.backend(mem, { perm: Perm.CONSISTENT_READ, shared: PERM_ALL }).root!;
    const buf = new Uint8Array(40000);
    await child.preadv(SIZE - 1000, 40000, IOVector.of(buf));
    expect(Math.max(...sizes)).toBeLessThanOrEqual(16384);
    expect(buf.subarray(1000).every((v) => v === 0)).toBe(true);
  });

  it('emulates FUA with a flush when the driver lacks it', async () => {
    const { be, mem } = await setup(1);
    let flushes = 0;
    mem.impl = { ...mem.impl, flushToDisk: async () => void flushes++ };
    await be.pwrite(0, new Uint8Array(10));
    expect(flushes).toBe(0);
    await be.pwrite(0, new Uint8Array(10), ReqFlag.FUA);
    expect(flushes).toBe(1);
  });

  it('falls back to writing zeroes unless NO_FALLBACK', async () => {
    const { be, mem } = await setup(1);
    const writes: number[] = [];
    const origW = mem.impl.pwritev!.bind(mem.impl);
    mem.impl = { ...mem.impl, pwriteZeroes: undefined, pwritev: (o, b, q, f) => (writes.push(b), origW(o, b, q, f)) };
    await be.pwrite(0, new Uint8Array(8192).fill(5));
    await be.pwriteZeroes(100, 5000);
    expect(writes.length).toBeGreaterThan(1);
    const out = await be.read(0, 8192);
    expect(out.subarray(100, 5100).every((v) => v === 0)).toBe(true);
    expect(out[99]).toBe(5);
    expect(out[5100]).toBe(5);
    await expect(be.pwriteZeroes(0, 512, ReqFlag.NO_FALLBACK)).rejects.toMatchObject({ code: 'ENOTSUP' });
  });

  it('detect-zeroes turns all-zero writes into zero writes (unmap: with MAY_UNMAP)', async () => {
    const { be, mem } = await setup(1, { detectZeroes: 'unmap' });
    const seen: number[] = [];
    const orig = mem.impl.pwriteZeroes!.bind(mem.impl);
    mem.impl = { ...mem.impl, pwriteZeroes: (o, b, f) => (seen.push(f), orig(o, b, f)) };
    await be.pwrite(0, new Uint8Array(4096));
    expect(seen).toEqual([ReqFlag.MAY_UNMAP]);
    const st = await be.blockStatus(0, 4096);
    expect(st.ret & BlockStatus.ZERO).toBe(BlockStatus.ZERO);
  });

  it('marks enabled dirty bitmaps on write and discard, not disabled ones', async () => {
    const { be, mem } = await setup(1);
    const on = mem.createDirtyBitmap({ granularity: 4096 });
    const off = mem.createDirtyBitmap({ granularity: 4096, disabled: true });
    await be.pwrite(5000, new Uint8Array(10));
    await be.pdiscard(65536, 8192);
    expect(on.get(4096)).toBe(true);
    expect(on.get(65536)).toBe(true);
    expect(on.count()).toBe(4096 + 8192);
    expect(off.count()).toBe(0);
  });

  it('grows a node on writes past its end only through an edge with RESIZE', async () => {
    const { g, mem, be } = await setup(1);
    be.remove();
    const noResize = g.backend(mem, { perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: PERM_ALL, allowBeyondEof: true });
    await expect(noResize.pwrite(SIZE, new Uint8Array(10))).rejects.toThrow(/without 'resize' permission/);
    const resize = g.backend(mem, { perm: RW, shared: PERM_ALL, allowBeyondEof: true });
    await resize.pwrite(SIZE + 100, new Uint8Array(10).fill(1));
    expect(mem.totalBytes).toBe(SIZE + 512); // whole sectors, as QEMU
    const strict = g.backend(mem, { perm: RW, shared: PERM_ALL });
    await expect(strict.pwrite(mem.totalBytes, new Uint8Array(1))).rejects.toMatchObject({ code: 'EIO' });
  });
});
