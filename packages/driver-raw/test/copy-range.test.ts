/**
 * Copy offloading between files (BlockBackend.copyRange → raw → file → copy_file_range in the native helper):
 * the bytes arrive, the raw driver's window shifts both ends, the destination is a tracked write (dirty bitmaps,
 * permissions), and every end that cannot offload says ENOTSUP so that callers copy through a buffer.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, expect, it, vi } from 'vitest';
import { loadNative } from '../src/node/file.js';
import { describeRequiring, makeTempDir } from './helpers/qemu.js';
import { newGraph } from './helpers/holder.js';

const KiB = 1024;
const native = loadNative();

let tmp: { dir: string; cleanup: () => void };
beforeAll(() => {
  tmp = makeTempDir('copy-range');
});
afterAll(() => tmp.cleanup());

const graphs: { close(): Promise<void> }[] = [];
afterEach(async () => {
  vi.restoreAllMocks();
  for (const g of graphs.splice(0)) await g.close();
});

let seq = 0;
/** A file of `size` bytes where byte i is (i * 7 + seed) & 0xff. */
function patterned(size: number, seed: number): { path: string; bytes: Uint8Array } {
  const bytes = new Uint8Array(size).map((_, i) => (i * 7 + seed) & 0xff);
  const path = join(tmp.dir, `f${seq++}.raw`);
  writeFileSync(path, bytes);
  return { path, bytes };
}

async function openRaw(path: string, opts: { readOnly?: boolean; options?: Record<string, unknown> } = {}) {
  const graph = newGraph();
  graphs.push(graph);
  const node = await graph.openImage(path, { format: 'raw', readOnly: opts.readOnly ?? false, options: opts.options ?? {} });
  return { graph, node, be: graph.backend(node) };
}

describeRequiring('copy offloading between files', native?.copyFileRangeAsync ? [] : ['native helper 1.7+'], () => {
  it('copies in the kernel: the bytes arrive and no buffer is read or written', async () => {
    const src = patterned(256 * KiB, 1);
    const dst = patterned(256 * KiB, 99);
    const a = await openRaw(src.path, { readOnly: true });
    const b = await openRaw(dst.path);
    const copy = vi.spyOn(native!, 'copyFileRangeAsync');
    const read = vi.spyOn(a.node.file!.node.impl, 'preadv');
    const write = vi.spyOn(b.node.file!.node.impl, 'pwritev');
    await a.be.copyRange(10_000, b.be, 70_000, 100_000);
    expect(copy).toHaveBeenCalledTimes(1);
    expect(read).not.toHaveBeenCalled();
    expect(write).not.toHaveBeenCalled();
    const expected = dst.bytes.slice();
    expected.set(src.bytes.subarray(10_000, 110_000), 70_000);
    expect(Buffer.compare(readFileSync(dst.path), expected)).toBe(0);
    expect(Buffer.compare(await b.be.read(0, 256 * KiB), expected)).toBe(0);
  });

  it("shifts both ends by the raw driver's offset option", async () => {
    const src = patterned(64 * KiB, 3);
    const dst = patterned(64 * KiB, 50);
    const a = await openRaw(src.path, { readOnly: true, options: { offset: 4096, size: 32 * KiB } });
    const b = await openRaw(dst.path, { options: { offset: 8192, size: 16 * KiB } });
    await a.be.copyRange(100, b.be, 200, 5000);
    const expected = dst.bytes.slice();
    expected.set(src.bytes.subarray(4096 + 100, 4096 + 5100), 8192 + 200);
    expect(Buffer.compare(readFileSync(dst.path), expected)).toBe(0);
    // Past the destination's window: the raw driver refuses as it refuses a write there.
    await expect(a.node.file!.node.parents[0]!.copyRangeFrom(0, b.node.parents[0]!, 16 * KiB - 100, 200)).rejects.toMatchObject({ code: 'ENOSPC' });
  });

  it('is a write at the destination: its dirty bitmaps are marked', async () => {
    const src = patterned(128 * KiB, 5);
    const dst = patterned(128 * KiB, 6);
    const a = await openRaw(src.path, { readOnly: true });
    const b = await openRaw(dst.path);
    const bm = b.node.createDirtyBitmap({ granularity: 4096 });
    await a.be.copyRange(0, b.be, 65536, 8192);
    expect(bm.count()).toBe(8192);
    expect(bm.get(65536)).toBe(true);
    expect(bm.get(65536 + 8192)).toBe(false);
  });

  it('refuses a read-only destination, and an end that is no file (ENOTSUP: copy through a buffer)', async () => {
    const src = patterned(64 * KiB, 7);
    const dst = patterned(64 * KiB, 8);
    const a = await openRaw(src.path, { readOnly: true });
    const ro = await openRaw(dst.path, { readOnly: true });
    await expect(a.be.copyRange(0, ro.be, 0, 4096)).rejects.toMatchObject({ code: 'EPERM' });
    expect(Buffer.compare(readFileSync(dst.path), dst.bytes)).toBe(0);

    const mem = newGraph();
    graphs.push(mem);
    const m = await mem.addNode({ driver: 'memory', size: 64 * KiB });
    const memBe = mem.backend(m);
    await memBe.pwrite(0, new Uint8Array(4096).fill(0x5a));
    const dst2 = patterned(64 * KiB, 9);
    const b = await openRaw(dst2.path);
    await expect(memBe.copyRange(0, b.be, 0, 4096)).rejects.toMatchObject({ code: 'ENOTSUP' });
    await expect(a.be.copyRange(0, memBe, 0, 4096)).rejects.toMatchObject({ code: 'ENOTSUP' });
    expect(Buffer.compare(readFileSync(dst2.path), dst2.bytes)).toBe(0);
  });
});
