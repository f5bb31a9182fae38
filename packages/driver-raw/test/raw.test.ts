/**
 * The raw format over the memory protocol (platform-neutral) and over file: window, probing, block status
 * pass-through, child role and perms, flags.
 */
import { BlockStatus, ChildRole, Graph, IOVector, Perm, ReqFlag, type BlockNode } from '@blockgraph/block-core';
import { afterEach, describe, expect, it } from 'vitest';
import { memoryDriver, nullCoDriver, rawDriver, rawDrivers } from '../src/index.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const graphs: Graph[] = [];
afterEach(async () => {
  for (const g of graphs.splice(0)) await g.close();
});

function graph(): Graph {
  const g = new Graph({ drivers: [...rawDrivers] });
  graphs.push(g);
  return g;
}

async function memWith(g: Graph, size: number, fill?: (i: number) => number): Promise<BlockNode> {
  const mem = await g.addNode({ driver: 'memory', nodeName: 'mem', size });
  if (fill) {
    const buf = new Uint8Array(size);
    for (let i = 0; i < size; i++) buf[i] = fill(i);
    const be = g.backend(mem);
    await be.pwrite(0, buf);
    be.remove();
  }
  return mem;
}

describe('raw: probing and options', () => {
  it('probes with the lowest score (1), so any other format wins', () => {
    expect(rawDriver.probe!(new Uint8Array(512), 'x.img')).toBe(1);
    expect(rawDriver.kind).toBe('format');
    const g = graph();
    expect(g.registry.probe(new Uint8Array(512))).toBe(rawDriver);
  });

  it('opens a probed image as raw', async () => {
    const g = graph();
    const mem = await memWith(g, 64 * KiB, (i) => i & 0xff);
    expect((await g.probeFormat(mem)).name).toBe('raw');
  });

  it("gives its child the FILTERED|PRIMARY role without a window, DATA|PRIMARY with one (QEMU's raw_open)", async () => {
    const g = graph();
    await memWith(g, MiB);
    const plain = await g.addNode({ driver: 'raw', nodeName: 'plain', file: 'mem' });
    expect(plain.file!.role).toBe(ChildRole.FILTERED | ChildRole.PRIMARY);
    const win = await g.addNode({ driver: 'raw', nodeName: 'win', file: 'mem', offset: 4096 });
    expect(win.file!.role).toBe(ChildRole.DATA | ChildRole.PRIMARY);
    const sized = await g.addNode({ driver: 'raw', nodeName: 'sized', file: 'mem', size: 8192 });
    expect(sized.file!.role).toBe(ChildRole.DATA | ChildRole.PRIMARY);
    expect(plain.totalBytes).toBe(MiB);
    expect(win.totalBytes).toBe(MiB - 4096);
    expect(sized.totalBytes).toBe(8192);
  });

  it("refuses bad windows with QEMU's messages", async () => {
    const g = graph();
    await memWith(g, 64 * KiB);
    await expect(g.addNode({ driver: 'raw', file: 'mem', offset: 128 * KiB })).rejects.toThrow(
      'Offset (131072) cannot be greater than size of the containing file (65536)',
    );
    await expect(g.addNode({ driver: 'raw', file: 'mem', offset: 0, size: 128 * KiB })).rejects.toThrow(
      'The sum of offset (0) and size (131072) has to be smaller or equal to the  actual size of the containing file (65536)',
    );
    await expect(g.addNode({ driver: 'raw', file: 'mem', size: 1000 })).rejects.toThrow('Specified size is not multiple of 512');
    await expect(g.addNode({ driver: 'raw', file: 'mem', bogus: 1 })).rejects.toThrow("Block format 'raw' does not support the option 'bogus'");
  });
});

describe('raw: the offset/size window', () => {
  it('reads and writes inside the window at the shifted offset', async () => {
    const g = graph();
    const mem = await memWith(g, 64 * KiB, (i) => (i >> 8) & 0xff);
    const win = await g.addNode({ driver: 'raw', nodeName: 'win', file: 'mem', offset: 4096, size: 16 * KiB });
    const be = g.backend(win);
    const out = await be.read(0, 512);
    expect(out[0]).toBe(16);
    await be.pwrite(16 * KiB - 100, new Uint8Array(100).fill(0xfe));
    const raw = await g.backend(mem, { perm: Perm.CONSISTENT_READ, shared: 0xf }).read(20 * KiB - 100, 101);
    expect(raw.subarray(0, 100).every((x) => x === 0xfe)).toBe(true);
    expect(raw[100]).toBe(20 * 4);
  });

  it('refuses requests outside the window as QEMU does (writes ENOSPC, reads EINVAL)', async () => {
    const g = graph();
    await memWith(g, 64 * KiB);
    const win = await g.addNode({ driver: 'raw', nodeName: 'win', file: 'mem', offset: 4096, size: 16 * KiB });
    const be = g.backend(win, { allowBeyondEof: true });
    // reads past the end through the pipeline are stopped before raw: the backend refuses them
    await expect(be.read(16 * KiB - 10, 20)).rejects.toMatchObject({ code: 'EIO' });
    await expect(be.pwrite(16 * KiB - 10, new Uint8Array(20))).rejects.toMatchObject({ code: 'ENOSPC' });
    await expect(be.pwriteZeroes(16 * KiB, 512)).rejects.toMatchObject({ code: 'ENOSPC' });
    await expect(win.impl.preadv!(16 * KiB - 10, 20, IOVector.zeroed(20), 0)).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(win.impl.pdiscard!(16 * KiB + 512, 512)).rejects.toMatchObject({ code: 'ENOSPC' });
    await expect(be.truncate(8 * KiB)).rejects.toThrow('Cannot resize fixed-size raw disks');
    expect(win.capabilities).toMatchObject({ resize: false, shrink: false, growOnWrite: false });
  });

  it('forwards block status: RAW at offset + window offset, answered by the child', async () => {
    const g = graph();
    const mem = await g.addNode({ driver: 'memory', nodeName: 'mem', size: MiB });
    const wbe = g.backend(mem);
    await wbe.pwrite(128 * KiB, new Uint8Array(64 * KiB).fill(1));
    wbe.remove();
    const win = await g.addNode({ driver: 'raw', nodeName: 'win', file: 'mem', offset: 64 * KiB });
    const direct = win.impl.blockStatus!(true, 4096, 8192) as { status: number; pnum: number; map: number; file: BlockNode };
    expect(direct).toEqual({ status: BlockStatus.RAW | BlockStatus.OFFSET_VALID, pnum: 8192, map: 64 * KiB + 4096, file: mem });
    const be = g.backend(win);
    let r = await be.blockStatus(0, MiB);
    expect(r.ret & BlockStatus.ZERO).toBeTruthy();
    expect(r.pnum).toBe(64 * KiB);
    expect(r.map).toBe(64 * KiB);
    expect(r.file).toBe(mem);
    r = await be.blockStatus(64 * KiB, MiB);
    expect(r.ret & BlockStatus.DATA).toBeTruthy();
    expect(r.pnum).toBe(64 * KiB);
    expect(r.map).toBe(128 * KiB);
    expect(win.impl.passthroughChild!(100)).toEqual({ child: win.file, offset: 64 * KiB + 100 });
  });
});

describe('raw: pass-through', () => {
  it('passes FUA, WRITE_UNCHANGED, MAY_UNMAP and NO_FALLBACK through', async () => {
    const g = graph();
    await memWith(g, MiB);
    const raw = await g.addNode({ driver: 'raw', nodeName: 'r', file: 'mem', discard: 'unmap' });
    expect(raw.supportedWriteFlags & (ReqFlag.FUA | ReqFlag.WRITE_UNCHANGED)).toBe(ReqFlag.FUA | ReqFlag.WRITE_UNCHANGED);
    expect(raw.supportedZeroFlags).toBe(ReqFlag.FUA | ReqFlag.WRITE_UNCHANGED | ReqFlag.MAY_UNMAP | ReqFlag.NO_FALLBACK);
    const be = g.backend(raw);
    await be.pwrite(0, new Uint8Array(4096).fill(3), ReqFlag.FUA);
    await be.pwriteZeroes(0, 4096, ReqFlag.MAY_UNMAP | ReqFlag.NO_FALLBACK);
    expect((await be.read(0, 4096)).every((x) => x === 0)).toBe(true);
    const unchanged = g.backend(raw, { perm: Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED, shared: 0xf });
    await unchanged.pwrite(8192, new Uint8Array(512), ReqFlag.WRITE_UNCHANGED);
  });

  it('asks its child only for the write and resize permissions its parents use (raw_child_perm)', async () => {
    const g = graph();
    const mem = await memWith(g, MiB);
    const win = await g.addNode({ driver: 'raw', nodeName: 'win', file: 'mem', offset: 512 });
    const reader = g.backend(win, { perm: Perm.CONSISTENT_READ, shared: 0xf });
    expect(win.file!.perm).toBe(Perm.CONSISTENT_READ);
    reader.remove();
    const cor = g.backend(win, { perm: Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED, shared: 0xf });
    expect(win.file!.perm & (Perm.WRITE | Perm.WRITE_UNCHANGED)).toBe(Perm.WRITE_UNCHANGED);
    cor.remove();
    g.backend(win);
    expect(win.file!.perm).toBe(Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE);
    // DATA role: resizing the file under a windowed raw is not shared
    expect(win.file!.shared & Perm.RESIZE).toBe(0);
    expect(mem.perms.perm).toBe(Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE);
  });

  it('resizes and grows through its child without a window; inherits capabilities from it', async () => {
    const g = graph();
    await memWith(g, MiB);
    const raw = await g.addNode({ driver: 'raw', nodeName: 'r', file: 'mem' });
    expect(raw.capabilities).toMatchObject({ blockStatus: true, discard: true, zeroWrite: true, flush: false, growOnWrite: true });
    const be = g.backend(raw, { allowBeyondEof: true });
    await be.truncate(2 * MiB);
    expect(raw.totalBytes).toBe(2 * MiB);
    await be.pwrite(3 * MiB, new Uint8Array(10).fill(1));
    expect(raw.totalBytes).toBe(3 * MiB + 512); // whole sectors, as QEMU
    expect(raw.file!.node.totalBytes).toBe(3 * MiB + 512);
    expect(await raw.impl.getAllocatedFileSize!()).toBe(64 * KiB);
    expect(raw.impl.hasZeroInit!()).toBe(true);
    expect(raw.filename).toBe('memory:mem');
  });

  it('over null-co takes its capabilities (stores nothing)', async () => {
    const g = new Graph({ drivers: [rawDriver, nullCoDriver, memoryDriver] });
    graphs.push(g);
    const raw = await g.addNode({ driver: 'raw', file: { driver: 'null-co', size: MiB, readZeroes: true } });
    expect(raw.capabilities.storesData).toBe(false);
    expect(raw.totalBytes).toBe(MiB);
  });
});
