import { BlockStatus, Graph, ReqFlag } from '@blockgraph/block-core';
import { afterEach, describe, expect, it } from 'vitest';
import { deleteMemoryStore, getMemoryStore, MEMORY_CHUNK_SIZE, NULL_CO_DEFAULT_SIZE, rawDrivers } from '../src/index.js';
import { allocAlignedBuffer, isAlignedBuffer } from '../src/index.js';
import { describeRequiring, missingTools, runTool } from './helpers/qemu.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const CH = MEMORY_CHUNK_SIZE;
const graphs: Graph[] = [];
afterEach(async () => {
  for (const g of graphs.splice(0)) await g.close();
});
function graph(): Graph {
  const g = new Graph({ drivers: [...rawDrivers] });
  graphs.push(g);
  return g;
}

describe('memory', () => {
  it('is sparse: a 100 GiB node costs nothing until written, and chunks are allocated on first write', async () => {
    const g = graph();
    const n = await g.addNode({ driver: 'memory', size: 100 * GiB });
    expect(n.totalBytes).toBe(100 * GiB);
    expect(await n.impl.getAllocatedFileSize!()).toBe(0);
    const be = g.backend(n);
    await be.pwrite(50 * GiB + 100, new Uint8Array(CH).fill(7));
    expect(await n.impl.getAllocatedFileSize!()).toBe(2 * CH);
    const out = await be.read(50 * GiB, CH + 200);
    expect(out.subarray(0, 100).every((x) => x === 0)).toBe(true);
    expect(out.subarray(100, CH + 100).every((x) => x === 7)).toBe(true);
    expect(out.subarray(CH + 100).every((x) => x === 0)).toBe(true);
  });

  it('reports unallocated chunks as ZERO and written ones as DATA, quickly across a huge hole', async () => {
    const g = graph();
    const n = await g.addNode({ driver: 'memory', size: 100 * GiB });
    const be = g.backend(n);
    await be.pwrite(99 * GiB, new Uint8Array(3 * CH).fill(1));
    let r = await be.blockStatus(0, 100 * GiB);
    expect(r.ret & (BlockStatus.ZERO | BlockStatus.OFFSET_VALID)).toBe(BlockStatus.ZERO | BlockStatus.OFFSET_VALID);
    expect(r.pnum).toBe(99 * GiB);
    expect(r.file).toBe(n);
    r = await be.blockStatus(99 * GiB, GiB);
    expect(r.ret & BlockStatus.DATA).toBeTruthy();
    expect(r.pnum).toBe(3 * CH);
    r = await be.blockStatus(99 * GiB + 3 * CH, GiB);
    expect(r.ret & BlockStatus.ZERO).toBeTruthy();
    expect(r.ret & BlockStatus.EOF).toBeTruthy();
  });

  it('frees chunks on zero writes and discards, zeroes partial ones', async () => {
    const g = graph();
    const n = await g.addNode({ driver: 'memory', size: MiB, discard: 'unmap' });
    const be = g.backend(n);
    await be.pwrite(0, new Uint8Array(MiB).fill(5));
    expect(await n.impl.getAllocatedFileSize!()).toBe(MiB);
    await be.pwriteZeroes(CH, 2 * CH);
    await be.pdiscard(4 * CH + 10, CH);
    expect(await n.impl.getAllocatedFileSize!()).toBe(MiB - 2 * CH);
    const out = await be.read(0, MiB);
    expect(out.subarray(CH, 3 * CH).every((x) => x === 0)).toBe(true);
    expect(out.subarray(4 * CH, 4 * CH + 10).every((x) => x === 5)).toBe(true);
    expect(out.subarray(4 * CH + 10, 5 * CH + 10).every((x) => x === 0)).toBe(true);
    expect(out[5 * CH + 10]).toBe(5);
    await be.pwriteZeroes(0, MiB, ReqFlag.MAY_UNMAP);
    expect(await n.impl.getAllocatedFileSize!()).toBe(0);
  });

  it('grows on writes and zero writes past the end, truncates both ways', async () => {
    const g = graph();
    const n = await g.addNode({ driver: 'memory', size: 4096 });
    const be = g.backend(n, { allowBeyondEof: true });
    await be.pwrite(MiB, new Uint8Array(10).fill(1));
    expect(n.totalBytes).toBe(MiB + 512); // whole sectors, as QEMU
    await be.pwriteZeroes(2 * MiB, 100);
    expect(n.totalBytes).toBe(2 * MiB + 512);
    await be.truncate(MiB + 5);
    expect(n.totalBytes).toBe(MiB + 512);
    await be.truncate(4 * MiB);
    const out = await be.read(MiB, 10);
    expect([...out]).toEqual([1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
    await expect(be.truncate(5 * MiB, true, 'full')).rejects.toThrow('Unsupported preallocation mode: full');
  });

  it('shares a named store between nodes; create makes an empty one', async () => {
    const g = graph();
    await g.createImage('memory', { name: 'shared-test', size: MiB });
    const a = await g.addNode({ driver: 'memory', name: 'shared-test' });
    expect(a.totalBytes).toBe(MiB);
    await g.backend(a).pwrite(0, new Uint8Array([1, 2, 3]));
    const b = await g.addNode({ driver: 'memory', name: 'shared-test' });
    const be = g.backend(b, { perm: 1, shared: 0xf });
    expect([...(await be.read(0, 3))]).toEqual([1, 2, 3]);
    expect(getMemoryStore('shared-test')?.size).toBe(MiB);
    expect(deleteMemoryStore('shared-test')).toBe(true);
    expect(a.filename).toBe('memory:shared-test');
  });

  it('has no node: imports (runs in a browser)', async () => {
    const { readFileSync } = await import('node:fs');
    for (const f of ['index.ts', 'raw.ts', 'memory.ts', 'null-co.ts']) {
      const src = readFileSync(new URL(`../src/${f}`, import.meta.url), 'utf8');
      expect(src).not.toMatch(/from ['"](node:|fs|path|os)/);
    }
  });
});

describe('null-co', () => {
  it("defaults like QEMU 7.2: 1 GiB, read-zeroes off (buffers untouched), writes dropped", async () => {
    const g = graph();
    const n = await g.addNode({ driver: 'null-co' });
    expect(n.totalBytes).toBe(NULL_CO_DEFAULT_SIZE);
    expect(NULL_CO_DEFAULT_SIZE).toBe(2 ** 30);
    expect(n.capabilities).toMatchObject({ storesData: false, write: true, blockStatus: false });
    const be = g.backend(n);
    await be.pwrite(0, new Uint8Array(512).fill(9));
    const buf = new Uint8Array(512).fill(0xab);
    await be.pread(0, buf);
    expect(buf.every((x) => x === 0xab)).toBe(true);
    const r = await be.blockStatus(0, 4096);
    expect(r.ret & (BlockStatus.DATA | BlockStatus.ZERO | BlockStatus.ALLOCATED)).toBe(0);
    expect(r.ret & BlockStatus.OFFSET_VALID).toBeTruthy();
    expect(await n.impl.getAllocatedFileSize!()).toBe(0);
    await be.flush();
  });

  it('reads zeroes with read-zeroes=on and reports ZERO', async () => {
    const g = graph();
    const n = await g.addNode({ driver: 'null-co', 'read-zeroes': 'on', size: '1M' });
    expect(n.totalBytes).toBe(MiB);
    expect(n.capabilities.blockStatus).toBe(true);
    const be = g.backend(n);
    const buf = new Uint8Array(4096).fill(0xab);
    await be.pread(100, buf);
    expect(buf.every((x) => x === 0)).toBe(true);
    expect((await be.blockStatus(0, MiB)).ret & BlockStatus.ZERO).toBeTruthy();
  });

  it('delays requests by latency-ns', async () => {
    const g = graph();
    const n = await g.addNode({ driver: 'null-co', latencyNs: 30_000_000 });
    const be = g.backend(n);
    let t = performance.now();
    await be.read(0, 512);
    expect(performance.now() - t).toBeGreaterThanOrEqual(25);
    t = performance.now();
    await be.pwrite(0, new Uint8Array(512));
    expect(performance.now() - t).toBeGreaterThanOrEqual(25);
    const fast = await g.addNode({ driver: 'null-co' });
    const fbe = g.backend(fast);
    t = performance.now();
    for (let i = 0; i < 100; i++) await fbe.read(0, 512);
    // No latency by default: far below even 10 ms a read, with room for a stalled machine.
    expect(performance.now() - t).toBeLessThan(1000);
  });

  it("checks its options as QEMU does", async () => {
    const g = graph();
    await expect(g.addNode({ driver: 'null-co', latencyNs: -1 })).rejects.toThrow('latency-ns is invalid');
    await expect(g.addNode({ driver: 'null-co', filename: 'null-co://x' })).rejects.toThrow(
      "The only allowed filename for this driver is 'null-co://'",
    );
    const n = await g.addNode({ driver: 'null-co', filename: 'null-co://' });
    expect(n.filename).toBe('null-co://');
  });
});

describeRequiring('null-co: same defaults as QEMU 7.2', missingTools('qemu-io', 'qemu-img'), () => {
  it('qemu-io leaves the buffer untouched without read-zeroes; qemu-img map agrees on allocation', async () => {
    const r = runTool('qemu-io', ['-c', 'read -v 0 16', 'null-co://']);
    expect(r.stdout).toContain('ab ab ab ab');
    const map = JSON.parse(runTool('qemu-img', ['map', '--output=json', '--image-opts', 'driver=null-co,size=1M']).stdout) as {
      present: boolean;
      zero: boolean;
      data: boolean;
    }[];
    expect(map[0]).toMatchObject({ present: false, zero: false, data: false });
    const g = graph();
    const n = await g.addNode({ driver: 'null-co', size: MiB });
    const s = await g.backend(n).blockStatus(0, MiB);
    expect((s.ret & BlockStatus.ALLOCATED) !== 0).toBe(map[0]!.present);
  });
});

describe('aligned buffers', () => {
  it('come from WebAssembly memory, page-aligned', () => {
    const b = allocAlignedBuffer(10000);
    expect(b.byteLength).toBe(10000);
    expect(isAlignedBuffer(b)).toBe(true);
    expect(isAlignedBuffer(b.subarray(4096))).toBe(true);
    expect(isAlignedBuffer(b.subarray(16))).toBe(false);
    expect(isAlignedBuffer(new Uint8Array(4096))).toBe(false);
  });
});
