/**
 * The file driver without the native helper (forced off before anything opens): no hole detection, no
 * efficient zeroing or discard, no locks — and capabilities that say so — but correct data.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { BlockStatus, ReqFlag } from '@blockgraph/block-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setNativeDisabled, loadNative } from '../src/node/file.js';
import { lockedBytes, makeTempDir } from './helpers/qemu.js';
import { newGraph } from './helpers/holder.js';

const MiB = 1024 * 1024;
let tmp: { dir: string; cleanup: () => void };
beforeAll(() => {
  setNativeDisabled(true);
  tmp = makeTempDir('no-native');
});
afterAll(() => {
  setNativeDisabled(false);
  tmp.cleanup();
});

describe('file driver without the native helper', () => {
  it('is really off', () => {
    expect(loadNative()).toBeNull();
  });

  it('declares no block status, discard or zero write, and reports everything as data', async () => {
    const p = join(tmp.dir, 'a.raw');
    const graph = newGraph();
    await graph.createImage('file', { filename: p, size: 4 * MiB });
    const node = await graph.openImage(p, { format: 'raw', options: { discard: 'unmap' } });
    const file = node.file!.node;
    expect(file.capabilities).toMatchObject({ blockStatus: false, discard: false, discardZeroes: false, zeroWrite: false, write: true, flush: true });
    expect(file.impl.blockStatus).toBeUndefined();
    expect(file.impl.pwriteZeroes).toBeUndefined();
    expect(file.impl.pdiscard).toBeUndefined();
    expect(node.capabilities.blockStatus).toBe(false);
    const be = graph.backend(node, { allowBeyondEof: true });
    const r = await be.blockStatus(MiB, 3 * MiB);
    expect(r.ret & BlockStatus.DATA).toBeTruthy();
    expect(r.ret & BlockStatus.ZERO).toBe(0);
    expect(r.pnum).toBe(3 * MiB);
    // no locks without the helper
    expect(lockedBytes(p)).toEqual([]);
    await graph.close();
  });

  it('still reads and writes correctly; zero writes still read as zero; discard is a no-op', async () => {
    const p = join(tmp.dir, 'b.raw');
    const graph = newGraph();
    await graph.createImage('file', { filename: p, size: 2 * MiB, preallocation: 'falloc' });
    expect(statSync(p).size).toBe(2 * MiB);
    const node = await graph.openImage(p, { format: 'raw', options: { discard: 'unmap' } });
    const be = graph.backend(node, { allowBeyondEof: true });
    await be.pwrite(0, new Uint8Array(2 * MiB).fill(0x99));
    await be.pwriteZeroes(1000, 70000, ReqFlag.MAY_UNMAP);
    await be.pwriteZeroes(MiB, 4096);
    const out = await be.read(0, 2 * MiB);
    expect(out.subarray(0, 1000).every((x) => x === 0x99)).toBe(true);
    expect(out.subarray(1000, 71000).every((x) => x === 0)).toBe(true);
    expect(out.subarray(71000, MiB).every((x) => x === 0x99)).toBe(true);
    expect(out.subarray(MiB, MiB + 4096).every((x) => x === 0)).toBe(true);
    // NO_FALLBACK zero writes can't be done efficiently
    await expect(be.pwriteZeroes(0, 512, ReqFlag.NO_FALLBACK)).rejects.toMatchObject({ code: 'ENOTSUP' });
    await be.pdiscard(MiB + MiB / 2, 4096);
    expect((await be.read(MiB + MiB / 2, 4096)).every((x) => x === 0x99)).toBe(true);
    // growth by zero writes past EOF
    await be.pwriteZeroes(3 * MiB, MiB);
    expect(statSync(p).size).toBe(4 * MiB);
    await be.truncate(6 * MiB, true, 'falloc');
    expect(statSync(p).size).toBe(6 * MiB);
    expect(statSync(p).blocks * 512).toBeGreaterThanOrEqual(2 * MiB);
    await be.flush();
    await graph.close();
  });

  it('has no copy offloading: ENOTSUP, the caller copies through a buffer', async () => {
    const graph = newGraph();
    const a = join(tmp.dir, 'cr-a.raw');
    const b = join(tmp.dir, 'cr-b.raw');
    await graph.createImage('file', { filename: a, size: MiB });
    await graph.createImage('file', { filename: b, size: MiB });
    const src = graph.backend(await graph.openImage(a, { format: 'raw' }));
    const dst = graph.backend(await graph.openImage(b, { format: 'raw' }));
    await src.pwrite(0, new Uint8Array(4096).fill(0x3c));
    await expect(src.copyRange(0, dst, 0, 4096)).rejects.toMatchObject({ code: 'ENOTSUP' });
    expect((await dst.read(0, 4096)).every((x) => x === 0)).toBe(true);
    await graph.close();
  });

  it("locking=on fails clearly without the helper; auto and off don't lock", async () => {
    const p = join(tmp.dir, 'c.raw');
    const graph = newGraph();
    await graph.createImage('file', { filename: p, size: MiB });
    await expect(graph.addNode({ driver: 'file', filename: p, locking: 'on' })).rejects.toThrow(
      'File lock requested but the blockgraph native helper is unavailable',
    );
    const n = await graph.addNode({ driver: 'file', filename: p, locking: 'auto' });
    graph.backend(n);
    expect(lockedBytes(p)).toEqual([]);
    await graph.close();
  });
});
