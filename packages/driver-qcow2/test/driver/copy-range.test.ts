/**
 * Copy offloading through qcow2 (qcow2_co_copy_range_from / _to): as the source, data clusters are copied from
 * their host offsets, unallocated ones from the backing file (zeroes past its end), zero clusters become zero
 * writes, and compressed clusters refuse (ENOTSUP); as the destination, clusters are allocated as for a write,
 * with copy-on-write of partial clusters, and linked after the copy. Checked against what the same ranges read.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IOVector, ReqFlag, isAllocated, isBlockError, type BlockBackend, type BlockNode, type Graph } from '@blockgraph/block-core';
import { loadNative } from '@blockgraph/driver-raw/file';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { firstDiff, hasQemu, newGraph, openQcow2, qemuCheck, readAll } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const native = loadNative();

function pattern(n: number, seed: number): Uint8Array {
  return new Uint8Array(n).map((_, i) => ((i >> 9) * 13 + seed) & 0xff || 1);
}

// Required under CI=true, as the helper is built there; elsewhere skipped with a reason when it is missing.
if (!native?.copyFileRangeAsync && process.env.CI === 'true') throw new Error('the native helper (1.7+) is required when CI=true');

describe.skipIf(!native?.copyFileRangeAsync)('qcow2 copy offloading', () => {
  let dir: string;
  let g: Graph;
  let src: { node: BlockNode; be: BlockBackend };

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qcow2-copy-range-'));
    g = newGraph();
    // A 1 MiB raw backing file under a 3 MiB image: from 1 MiB on, unallocated clusters read as zeroes.
    await g.createImage('file', { filename: join(dir, 'base.raw'), size: MiB });
    const base = g.backend(await g.openImage(join(dir, 'base.raw'), { format: 'raw' }));
    await base.pwrite(0, pattern(MiB, 1));
    base.remove();
    await g.createImage('qcow2', { filename: join(dir, 'src.qcow2'), size: 3 * MiB, backingFile: 'base.raw', backingFmt: 'raw' });
    src = await openQcow2(g, join(dir, 'src.qcow2'));
    await src.be.pwrite(256 * KiB, pattern(128 * KiB, 2));
    await src.be.pwriteZeroes(512 * KiB, 64 * KiB);
    await src.be.pwrite(2 * MiB, pattern(64 * KiB, 3));
    await src.be.pwritevCompressed(2 * MiB + 512 * KiB, 64 * KiB, IOVector.of(pattern(64 * KiB, 4)));
  });

  afterEach(async () => {
    vi.restoreAllMocks();
    await g.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function newTarget(format: 'raw' | 'qcow2', name: string, size: number): Promise<{ node: BlockNode; be: BlockBackend }> {
    const filename = join(dir, name);
    await g.createImage(format === 'raw' ? 'file' : 'qcow2', { filename, size });
    if (format === 'qcow2') return openQcow2(g, filename);
    const node = await g.openImage(filename, { format: 'raw' });
    return { node, be: g.backend(node) };
  }

  test('qcow2 to raw: data from the file, backing data, zeroes past the backing file, zero clusters', async () => {
    const dst = await newTarget('raw', 'dst.raw', 3 * MiB);
    await dst.be.pwrite(0, new Uint8Array(3 * MiB).fill(0xee));
    const copy = vi.spyOn(native!, 'copyFileRangeAsync');
    const read = vi.spyOn(src.node.file!.node.impl, 'preadv');
    // Everything but the compressed cluster: [0, 2.5 MiB).
    await src.be.copyRange(0, dst.be, 0, 2 * MiB + 512 * KiB);
    expect(read).not.toHaveBeenCalled();
    // Backing [0, 256K), data, backing up to the zero cluster, backing after it, then the data cluster at 2 MiB.
    expect(copy.mock.calls.length).toBeGreaterThanOrEqual(5);
    const want = await src.be.read(0, 2 * MiB + 512 * KiB);
    const got = await dst.be.read(0, 2 * MiB + 512 * KiB);
    expect(firstDiff(got, want)).toBe(-1);
    // The zeroes came as zero writes over the 0xee filler, not as copied bytes.
    expect(got.subarray(512 * KiB, 576 * KiB).every((b) => b === 0)).toBe(true);
    expect(got.subarray(MiB, 2 * MiB).every((b) => b === 0)).toBe(true);
  });

  test('a compressed cluster cannot be offloaded: ENOTSUP, and the destination is left as it was', async () => {
    const dst = await newTarget('qcow2', 'dst.qcow2', 3 * MiB);
    const e = await src.be.copyRange(2 * MiB + 512 * KiB, dst.be, 0, 64 * KiB).catch((x: unknown) => x);
    expect(isBlockError(e, 'ENOTSUP')).toBe(true);
    expect((await isAllocated(dst.node, 0, 64 * KiB)).allocated).toBe(false);
  });

  test('raw to qcow2 at unaligned offsets: the new clusters get their copy-on-write head and tail', async () => {
    const raw = await newTarget('raw', 'in.raw', MiB);
    const data = pattern(MiB, 9);
    await raw.be.pwrite(0, data);
    const dst = await newTarget('qcow2', 'dst.qcow2', 3 * MiB);
    await dst.be.pwrite(0, new Uint8Array(256 * KiB).fill(0x77));
    const write = vi.spyOn(dst.node.file!.node.impl, 'pwritev');
    // Starts inside the 0x77 cluster at 100K and ends inside a new cluster.
    await raw.be.copyRange(1000, dst.be, 100 * KiB, 500 * KiB + 123);
    // Only the copy-on-write pieces, metadata and refcounts go through buffers.
    for (const call of write.mock.calls) expect(call[1]).toBeLessThan(64 * KiB);
    const got = await readAll(dst.be, 3 * MiB);
    const want = new Uint8Array(3 * MiB);
    want.fill(0x77, 0, 256 * KiB);
    want.set(data.subarray(1000, 1000 + 500 * KiB + 123), 100 * KiB);
    expect(firstDiff(got, want)).toBe(-1);
    await g.close();
    g = newGraph();
    if (hasQemu) expect(qemuCheck(join(dir, 'dst.qcow2')).status).toBe(0);
  });

  test('a cluster written in place stays out of reuse while the copy into it runs, even when a discard frees it', async () => {
    const raw = await newTarget('raw', 'in.raw', 64 * KiB);
    await raw.be.pwrite(0, new Uint8Array(64 * KiB).fill(0x11));
    const dst = await newTarget('qcow2', 'dst.qcow2', 3 * MiB);
    await dst.be.pwrite(0, new Uint8Array(64 * KiB).fill(0x22));
    // Hold the copy in the kernel's place until the discard and a new allocation have run.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let issued!: () => void;
    const started = new Promise<void>((r) => (issued = r));
    const real = native!.copyFileRangeAsync!.bind(native);
    vi.spyOn(native!, 'copyFileRangeAsync').mockImplementation(async (...a) => {
      issued();
      await gate;
      return real(...a);
    });
    const copy = raw.be.copyRange(0, dst.be, 0, 64 * KiB);
    await started;
    await dst.be.pdiscard(0, 64 * KiB);
    await dst.be.pwrite(128 * KiB, new Uint8Array(64 * KiB).fill(0xaa));
    release();
    await copy;
    // The new data did not get the cluster the copy was writing into.
    expect((await dst.be.read(128 * KiB, 64 * KiB)).every((b) => b === 0xaa)).toBe(true);
    expect((await dst.be.read(0, 64 * KiB)).every((b) => b === 0)).toBe(true);
  });

  test('qcow2 to qcow2 with ZERO_WRITE in the write flags writes zeroes without a source', async () => {
    const dst = await newTarget('qcow2', 'dst.qcow2', 3 * MiB);
    await dst.be.pwrite(0, pattern(128 * KiB, 5));
    await src.be.copyRange(0, dst.be, 0, 64 * KiB, 0, ReqFlag.ZERO_WRITE);
    expect((await dst.be.read(0, 64 * KiB)).every((b) => b === 0)).toBe(true);
    await src.be.copyRange(256 * KiB, dst.be, 64 * KiB, 64 * KiB);
    expect(firstDiff(await dst.be.read(64 * KiB, 64 * KiB), await src.be.read(256 * KiB, 64 * KiB))).toBe(-1);
  });
});
