/**
 * The copy offloading path (copy-range.ts): tracked on both nodes, a write at the destination (permissions,
 * read-only, serialisation, dirty bitmaps, growth), ZERO_WRITE without a source, and ENOTSUP where a node has no
 * callbacks. With test-mem at both ends, which copies between its arrays.
 */
import { describe, expect, it } from 'vitest';
import { Graph, Perm, ReqFlag } from '../src/index.js';
import { trackRequest, untrackRequest, makeSerialising } from '../src/tracked.js';
import { testDrivers } from './drivers.js';

const SIZE = 64 * 1024;
const RW = Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE;

async function setup() {
  const g = new Graph({ drivers: testDrivers });
  const a = await g.addNode({ driver: 'test-mem', nodeName: 'a', size: SIZE });
  const b = await g.addNode({ driver: 'test-mem', nodeName: 'b', size: SIZE });
  const src = g.backend(a, { perm: RW, shared: Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED });
  const dst = g.backend(b, { perm: RW, shared: Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED });
  await src.pwrite(0, new Uint8Array(SIZE).map((_, i) => (i * 3) & 0xff));
  return { g, a, b, src, dst };
}

describe('copy offloading through the pipeline', () => {
  it('copies, and the destination sees a write: dirty bitmaps marked, nothing left in flight', async () => {
    const { a, b, src, dst } = await setup();
    const bm = b.createDirtyBitmap({ granularity: 512 });
    await src.copyRange(1000, dst, 5000, 3000);
    expect(await dst.read(5000, 3000)).toEqual(await src.read(1000, 3000));
    expect((await dst.read(0, 5000)).every((x) => x === 0)).toBe(true);
    expect(bm.count()).toBe(512 * 7);
    expect(a.inFlight + b.inFlight).toBe(0);
  });

  it('waits for an overlapping serialising request at the destination', async () => {
    const { b, src, dst } = await setup();
    const blocker = trackRequest(b, 4096, 4096, 'write');
    makeSerialising(blocker, 4096);
    let done = false;
    const copy = src.copyRange(0, dst, 6000, 100).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(false);
    untrackRequest(blocker);
    await copy;
    expect(done).toBe(true);
  });

  it('a drain of both ends right after a copy starts waits for it, and a copy started while drained waits', async () => {
    const { g, a, b, src, dst } = await setup();
    const order: string[] = [];
    const copy = src.copyRange(0, dst, 0, 512).then(() => order.push('copy'));
    await g.drained([a, b], () => {
      order.push('drained');
    });
    await copy;
    expect(order).toEqual(['copy', 'drained']);
    let inner: Promise<unknown> | undefined;
    await g.drained([b], () => {
      inner = src.copyRange(0, dst, 4096, 512).then(() => order.push('second copy'));
      order.push('second drain');
    });
    await inner;
    expect(order).toEqual(['copy', 'drained', 'second drain', 'second copy']);
    expect(a.inFlight + b.inFlight).toBe(0);
    // A deadlock shows as a timeout: fail it quickly.
  }, 10_000);

  it('ZERO_WRITE in the write flags is a zero write at the destination; no source is needed', async () => {
    const { b, src, dst } = await setup();
    await dst.pwrite(0, new Uint8Array(8192).fill(9));
    await src.copyRange(0, dst, 1024, 2048, 0, ReqFlag.ZERO_WRITE);
    const got = await dst.read(0, 8192);
    expect(got.subarray(1024, 3072).every((x) => x === 0)).toBe(true);
    expect(got[1023]).toBe(9);
    expect(got[3072]).toBe(9);
    expect(b.inFlight).toBe(0);
  });

  it('refuses a read-only destination and an edge without WRITE; ENOTSUP through a node without callbacks', async () => {
    const { g, a, src } = await setup();
    const ro = await g.addNode({ driver: 'test-mem', nodeName: 'ro', size: SIZE, readOnly: true });
    const roBe = g.backend(ro, { perm: Perm.CONSISTENT_READ, shared: Perm.CONSISTENT_READ | Perm.WRITE });
    await expect(src.copyRange(0, roBe, 0, 512)).rejects.toMatchObject({ code: 'EPERM' });

    const c = await g.addNode({ driver: 'test-mem', nodeName: 'c', size: SIZE });
    const viewer = g.backend(c, { perm: Perm.CONSISTENT_READ, shared: Perm.CONSISTENT_READ | Perm.WRITE });
    await expect(a.parents[0]!.copyRangeFrom(0, viewer.root!, 0, 512)).rejects.toMatchObject({ code: 'EPERM' });
    expect((await viewer.read(0, 512)).every((x) => x === 0)).toBe(true);

    await g.addNode({ driver: 'test-mem', nodeName: 'd', size: SIZE });
    const f = await g.addNode({ driver: 'test-filter', nodeName: 'f', file: 'd' });
    const fBe = g.backend(f, { perm: RW, shared: Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED });
    await expect(src.copyRange(0, fBe, 0, 512)).rejects.toMatchObject({ code: 'ENOTSUP' });
    await expect(fBe.copyRange(0, src, 0, 512)).rejects.toMatchObject({ code: 'ENOTSUP' });
  });
});
