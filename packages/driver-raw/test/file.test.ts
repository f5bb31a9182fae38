import { closeSync, mkdirSync, openSync, readFileSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { Buffer } from 'node:buffer';
import { join } from 'node:path';
import { BlockStatus, IOVector, Perm, ReqFlag } from '@blockgraph/block-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { allocAlignedBuffer, DIRECT_MAX_TRANSFER, FILE_MAX_TRANSFER, loadNative } from '../src/node/file.js';
import { describeRequiring, lockedBytes, makeTempDir, missingTools, runTool } from './helpers/qemu.js';
import { newGraph } from './helpers/holder.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const native = loadNative();
const missingHelper = native ? [] : ['native helper'];

let tmp: { dir: string; cleanup: () => void };
beforeAll(() => {
  tmp = makeTempDir('file');
});
afterAll(() => tmp.cleanup());

let seq = 0;
function path(name = 'img'): string {
  return join(tmp.dir, `${name}-${seq++}.raw`);
}

function pattern(len: number, byte: number): Uint8Array {
  return new Uint8Array(len).fill(byte);
}

const graphs: { close(): Promise<void> }[] = [];
afterEach(async () => {
  for (const g of graphs.splice(0)) await g.close();
});

/** A graph with raw over file on `filename` (created with `size` first unless it exists) and a backend. */
async function openRaw(filename: string, opts: { size?: number; readOnly?: boolean; allowBeyondEof?: boolean; discard?: 'unmap' | 'ignore' } = {}) {
  const graph = newGraph();
  graphs.push(graph);
  if (opts.size !== undefined) await graph.createImage('file', { filename, size: opts.size });
  const node = await graph.openImage(filename, {
    format: 'raw',
    readOnly: opts.readOnly ?? false,
    options: { discard: opts.discard ?? 'unmap' },
  });
  const be = graph.backend(node, { allowBeyondEof: opts.allowBeyondEof ?? false });
  const file = node.file!.node;
  return { graph, node, file, be };
}

describe('file: open and options', () => {
  it("reports a missing file as QEMU does: Could not open 'x': No such file or directory", async () => {
    const graph = newGraph();
    const p = join(tmp.dir, 'missing.raw');
    await expect(graph.addNode({ driver: 'file', filename: p })).rejects.toMatchObject({
      code: 'ENOENT',
      message: `Could not open '${p}': No such file or directory`,
    });
  });

  it('requires a regular file and a filename', async () => {
    const graph = newGraph();
    const d = join(tmp.dir, 'a-dir');
    mkdirSync(d);
    await expect(graph.addNode({ driver: 'file', filename: d, readOnly: true })).rejects.toMatchObject({
      message: `'file' driver requires '${d}' to be a regular file`,
    });
    await expect(graph.addNode({ driver: 'file' })).rejects.toMatchObject({ message: "Parameter 'filename' is required" });
  });

  it('refuses aio=native/io_uring and unknown options; accepts aio=threads', async () => {
    const graph = newGraph();
    graphs.push(graph);
    const p = path();
    await graph.createImage('file', { filename: p, size: MiB });
    await expect(graph.addNode({ driver: 'file', filename: p, aio: 'native', cache: { direct: true } })).rejects.toThrow(
      'aio=native was specified, but is not supported in this build.',
    );
    await expect(graph.addNode({ driver: 'file', filename: p, aio: 'native' })).rejects.toThrow(
      'aio=native was specified, but it requires cache.direct=on, which was not specified.',
    );
    await expect(graph.addNode({ driver: 'file', filename: p, aio: 'io_uring' })).rejects.toThrow(/aio=io_uring/);
    await expect(graph.addNode({ driver: 'file', filename: p, 'x-check-cache-dropped': true })).rejects.toThrow(
      "Block protocol 'file' doesn't support the option 'x-check-cache-dropped'",
    );
    await expect(graph.addNode({ driver: 'file', filename: p, locking: 'maybe' })).rejects.toThrow(
      "Parameter 'locking' does not accept value 'maybe'",
    );
    const n = await graph.addNode({ driver: 'file', filename: p, aio: 'threads', locking: 'off' });
    expect(n.totalBytes).toBe(MiB);
    expect(n.limits.requestAlignment).toBe(1);
    expect(n.limits.maxTransfer).toBe(FILE_MAX_TRANSFER);
  });

  it('creates like qemu-img create -f raw: size rounded up to 512, first block allocated, existing file emptied', async () => {
    const graph = newGraph();
    const p = path();
    writeFileSync(p, pattern(8192, 0x11));
    await graph.createImage('file', { filename: p, size: 1000 });
    expect(statSync(p).size).toBe(1024);
    expect([...readFileSync(p)].every((b) => b === 0)).toBe(true);
    await graph.createImage('file', { filename: p, size: 4 * MiB });
    expect(statSync(p).size).toBe(4 * MiB);
    // allocate_first_block(): 4 KiB at offset 0
    expect(statSync(p).blocks * 512).toBeLessThanOrEqual(8 * KiB);
    await expect(graph.createImage('file', { filename: join(tmp.dir, 'no/such/dir.raw'), size: 1 })).rejects.toMatchObject({
      code: 'ENOENT',
      message: `Could not create '${join(tmp.dir, 'no/such/dir.raw')}': No such file or directory`,
    });
    await expect(graph.createImage('file', { filename: p, size: MiB, preallocation: 'metadata' })).rejects.toThrow(
      "Parameter 'preallocation' does not accept value 'metadata'",
    );
  });

  it('creates through the raw format too (raw_co_create_opts → file)', async () => {
    const graph = newGraph();
    const p = path();
    await graph.createImage('raw', { filename: p, size: 3 * MiB, preallocation: 'full' });
    expect(statSync(p).size).toBe(3 * MiB);
    expect(statSync(p).blocks * 512).toBeGreaterThanOrEqual(3 * MiB);
  });
});

describe('file: data path', () => {
  it('reads back writes, scattered and gathered, at odd offsets', async () => {
    const { be } = await openRaw(path(), { size: 4 * MiB });
    await be.pwrite(12345, pattern(100_000, 0x5a));
    const parts = [pattern(3000, 1), pattern(1, 2), pattern(70_000, 3)];
    await be.pwritev(2 * MiB + 7, 73_001, new IOVector(parts));
    const out = await be.read(12340, 100_010);
    expect(out.subarray(0, 5).every((b) => b === 0)).toBe(true);
    expect(out.subarray(5, 100_005).every((b) => b === 0x5a)).toBe(true);
    expect(out.subarray(100_005).every((b) => b === 0)).toBe(true);
    const a = new Uint8Array(1000);
    const b = new Uint8Array(72_001);
    await be.preadv(2 * MiB + 2007, 73_001, new IOVector([a, b]));
    expect(a.every((x) => x === 1)).toBe(true);
    expect(b[0]).toBe(2);
    expect(b.subarray(1, 70_001).every((x) => x === 3)).toBe(true);
    expect(b.subarray(70_001).every((x) => x === 0)).toBe(true);
  });

  it('zero-fills reads past the end of the file (file shrunk behind our back)', async () => {
    const p = path();
    const { be, file } = await openRaw(p, { size: MiB });
    await be.pwrite(0, pattern(MiB, 0x77));
    truncateSync(p, 4096);
    expect(file.totalBytes).toBe(MiB);
    const out = await be.read(0, 64 * KiB);
    expect(out.subarray(0, 4096).every((x) => x === 0x77)).toBe(true);
    expect(out.subarray(4096).every((x) => x === 0)).toBe(true);
    // scattered read crossing EOF
    const a = new Uint8Array(4000);
    const b = new Uint8Array(4000);
    await file.impl.preadv!(2000, 8000, new IOVector([a, b]), 0);
    expect(a.subarray(0, 2096).every((x) => x === 0x77)).toBe(true);
    expect(a.subarray(2096).every((x) => x === 0)).toBe(true);
    expect(b.every((x) => x === 0)).toBe(true);
  });

  it('big reads into plain (unaligned) memory bounce: scattered, across the bounce chunk size, and past EOF', async () => {
    const p = path();
    const size = 12 * MiB;
    const { be, file } = await openRaw(p, { size });
    // A different byte in every 64 KiB block, so that a misplaced copy shows.
    const data = new Uint8Array(size);
    for (let off = 0; off < size; off += 64 * KiB) data.fill((off / (64 * KiB)) % 251 + 1, off, off + 64 * KiB);
    await be.pwrite(0, data);
    // One plain buffer, bigger than the bounce chunk (4 MiB), at an odd offset.
    const one = new Uint8Array(9 * MiB + 333);
    await be.preadv(777, one.byteLength, IOVector.of(one));
    expect(Buffer.compare(one, data.subarray(777, 777 + one.byteLength))).toBe(0);
    // Several plain buffers of odd sizes, one of them empty, one an aligned buffer (the vector still bounces).
    const parts = [new Uint8Array(5000), new Uint8Array(0), allocAlignedBuffer(MiB), new Uint8Array(5 * MiB + 17)];
    const total = parts.reduce((n, b) => n + b.byteLength, 0);
    await be.preadv(123, total, new IOVector(parts));
    expect(Buffer.compare(Buffer.concat(parts), data.subarray(123, 123 + total))).toBe(0);
    // An aligned buffer does not bounce and reads the same.
    const al = allocAlignedBuffer(2 * MiB);
    await be.preadv(MiB, 2 * MiB, IOVector.of(al));
    expect(Buffer.compare(al, data.subarray(MiB, 3 * MiB))).toBe(0);
    // The file shrinks behind our back: what lies past its end reads as zeroes, through the bounce path too.
    truncateSync(p, 3 * MiB + 100);
    const tail = new Uint8Array(6 * MiB).fill(0xee);
    await file.impl.preadv!(MiB, 6 * MiB, IOVector.of(tail), 0);
    expect(Buffer.compare(tail.subarray(0, 2 * MiB + 100), data.subarray(MiB, 3 * MiB + 100))).toBe(0);
    expect(tail.subarray(2 * MiB + 100).every((x) => x === 0)).toBe(true);
  });

  it('grows on writes past the end', async () => {
    const p = path();
    const { be, node, file } = await openRaw(p, { size: MiB, allowBeyondEof: true });
    expect(file.capabilities.growOnWrite).toBe(true);
    await be.pwrite(2 * MiB, pattern(1000, 9));
    expect(statSync(p).size).toBe(2 * MiB + 1000);
    // The file holds exactly what was written; nodes count whole sectors, as QEMU.
    expect(file.totalBytes).toBe(2 * MiB + 1024);
    expect(node.totalBytes).toBe(2 * MiB + 1024);
    const out = await be.read(MiB, MiB + 1000);
    expect(out.subarray(0, MiB).every((x) => x === 0)).toBe(true);
    expect(out.subarray(MiB).every((x) => x === 9)).toBe(true);
  });

  it('truncates: grow with off/falloc/full, shrink, and refuses preallocation when shrinking', async () => {
    const p = path();
    const { be } = await openRaw(p, { size: MiB });
    await be.pwrite(0, pattern(MiB, 1));
    await be.truncate(2 * MiB, true, 'off');
    expect(statSync(p).size).toBe(2 * MiB);
    await be.truncate(3 * MiB, true, 'falloc');
    expect(statSync(p).size).toBe(3 * MiB);
    await be.truncate(4 * MiB, true, 'full');
    expect(statSync(p).size).toBe(4 * MiB);
    expect(statSync(p).blocks * 512).toBeGreaterThanOrEqual(2 * MiB);
    expect(be.getLength()).toBe(4 * MiB);
    const tail = await be.read(MiB, 3 * MiB);
    expect(tail.every((x) => x === 0)).toBe(true);
    await expect(be.truncate(MiB, true, 'full')).rejects.toMatchObject({
      code: 'ENOTSUP',
      message: 'Cannot use preallocation for shrinking files',
    });
    await expect(be.truncate(5 * MiB, true, 'metadata')).rejects.toThrow('Unsupported preallocation mode: metadata');
    await be.truncate(MiB / 2);
    expect(statSync(p).size).toBe(MiB / 2);
    expect(be.getLength()).toBe(MiB / 2);
  });

  it('opens read-only (O_RDONLY): reads work, writes are refused', async () => {
    const p = path();
    const g = newGraph();
    await g.createImage('file', { filename: p, size: MiB });
    const { be, file } = await openRaw(p, { readOnly: true });
    expect(file.readOnly).toBe(true);
    expect((await be.read(0, 10)).length).toBe(10);
    await expect(be.pwrite(0, pattern(10, 1))).rejects.toMatchObject({ code: 'EPERM' });
    // Even the driver itself can't write: the fd is read-only.
    await expect(file.impl.pwritev!(0, 10, IOVector.of(pattern(10, 1)), 0)).rejects.toMatchObject({ code: 'EIO' });
  });

  it('flushes with fdatasync and reports allocated size from st_blocks', async () => {
    const p = path();
    const { be, file } = await openRaw(p, { size: 8 * MiB });
    await be.pwrite(MiB, pattern(MiB, 3));
    await be.flush();
    const allocated = await file.impl.getAllocatedFileSize!();
    expect(allocated).toBe(statSync(p).blocks * 512);
    expect(allocated).toBeGreaterThanOrEqual(MiB);
    expect(allocated).toBeLessThan(4 * MiB);
    expect(file.impl.hasZeroInit!()).toBe(true);
  });

  it('reopens read-only ↔ read-write with a new fd', async () => {
    const p = path();
    const { graph, be, node, file } = await openRaw(p, { size: MiB, readOnly: true });
    be.remove();
    await graph.reopen(node, { readOnly: false });
    expect(file.readOnly).toBe(false);
    const rw = graph.backend(node);
    await rw.pwrite(0, pattern(512, 0x42));
    rw.remove();
    await graph.reopen(node, { readOnly: true });
    expect(node.readOnly).toBe(true);
    const ro = graph.backend(node);
    expect((await ro.read(0, 512)).every((x) => x === 0x42)).toBe(true);
    await expect(ro.pwrite(0, pattern(1, 1))).rejects.toMatchObject({ code: 'EPERM' });
    await expect(file.impl.pwritev!(0, 1, IOVector.of(pattern(1, 1)), 0)).rejects.toMatchObject({ code: 'EIO' });
  });
});

/** The open flags of one of our fds, from /proc/self/fdinfo (octal). */
function fdFlags(fd: number): number {
  const m = /flags:\s*([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return m ? parseInt(m[1]!, 8) : -1;
}
const O_DIRECT = 0o40000;

describe('file: cache.direct=on (O_DIRECT)', () => {
  it('opens with O_DIRECT and the probed alignment; unaligned requests and unaligned memory still work', async () => {
    const p = path();
    const graph = newGraph();
    graphs.push(graph);
    await graph.createImage('file', { filename: p, size: 4 * MiB });
    const node = await graph.openImage(p, { format: 'raw', options: { cache: { direct: true }, discard: 'unmap' } });
    const file = node.file!.node;
    expect(file.common.cacheDirect).toBe(true);
    const fd = (file.impl as unknown as { fd: number }).fd;
    expect(fdFlags(fd) & O_DIRECT).toBe(O_DIRECT);
    expect([512, 1024, 2048, 4096]).toContain(file.limits.requestAlignment);
    expect(file.limits.maxTransfer).toBe(DIRECT_MAX_TRANSFER);
    const be = graph.backend(node);
    // unaligned offset, length and memory: padding in the core, bounce buffers in the driver
    await be.pwrite(1000, pattern(70_001, 0x3d));
    const out = await be.read(900, 70_201);
    expect(out.subarray(0, 100).every((x) => x === 0)).toBe(true);
    expect(out.subarray(100, 70_101).every((x) => x === 0x3d)).toBe(true);
    expect(out.subarray(70_101).every((x) => x === 0)).toBe(true);
    // aligned memory goes straight to the kernel, also scattered
    const buf = allocAlignedBuffer(3 * 65536);
    buf.fill(0x71);
    await be.pwritev(MiB, 3 * 65536, new IOVector([buf.subarray(0, 65536), buf.subarray(65536)]));
    const back = allocAlignedBuffer(3 * 65536);
    await be.preadv(MiB, 3 * 65536, new IOVector([back.subarray(0, 4096), back.subarray(4096)]));
    expect(back.every((x) => x === 0x71)).toBe(true);
    // a request bigger than max-transfer is split by the core
    const big = pattern(DIRECT_MAX_TRANSFER + 4096, 0x12);
    await be.truncate(20 * MiB, true, 'full');
    await be.pwrite(0, big);
    expect((await be.read(DIRECT_MAX_TRANSFER - 10, 4106)).every((x) => x === 0x12)).toBe(true);
    await be.flush();
    // the data is in the file for a buffered reader
    const raw = readFileSync(p);
    expect(raw[DIRECT_MAX_TRANSFER + 4095]).toBe(0x12);
    expect(raw.length).toBe(20 * MiB);
  });

  it('reads past an unaligned end of file as zeroes, keeps O_DIRECT across reopen', async () => {
    const p = path();
    writeFileSync(p, pattern(5000, 0x44));
    const graph = newGraph();
    graphs.push(graph);
    const node = await graph.addNode({ driver: 'file', filename: p, cache: { direct: true }, readOnly: true });
    const be = graph.backend(node, { perm: Perm.CONSISTENT_READ, shared: 0xf });
    const out = await be.read(0, 5000);
    expect(out.every((x) => x === 0x44)).toBe(true);
    const tail = new Uint8Array(8192).fill(0xff);
    await node.impl.preadv!(0, 8192, IOVector.of(tail), 0);
    expect(tail.subarray(0, 5000).every((x) => x === 0x44)).toBe(true);
    expect(tail.subarray(5000).every((x) => x === 0)).toBe(true);
    be.remove();
    await graph.reopen(node, { readOnly: false });
    const fd = (node.impl as unknown as { fd: number }).fd;
    expect(fdFlags(fd) & O_DIRECT).toBe(O_DIRECT);
    expect(fdFlags(fd) & 3).toBe(2); // O_RDWR
  });
});

describeRequiring('file: holes, discard and zero writes (native helper)', missingHelper, () => {
  it('declares the native capabilities and reports data and holes like file-posix', async () => {
    const p = path();
    const { be, file } = await openRaw(p, { size: 4 * MiB });
    expect(file.capabilities).toMatchObject({ blockStatus: true, discard: true, zeroWrite: true, discardZeroes: true });
    await be.pwrite(MiB, pattern(64 * KiB, 1));
    let r = await be.blockStatus(0, 4 * MiB);
    expect(r.ret & (BlockStatus.DATA | BlockStatus.OFFSET_VALID)).toBe(BlockStatus.DATA | BlockStatus.OFFSET_VALID);
    expect(r.pnum).toBe(4096);
    r = await be.blockStatus(4096, 4 * MiB);
    expect(r.ret & BlockStatus.ZERO).toBeTruthy();
    expect(r.ret & BlockStatus.DATA).toBe(0);
    expect(r.pnum).toBe(MiB - 4096);
    expect(r.map).toBe(4096);
    expect(r.file).toBe(file);
    r = await be.blockStatus(MiB, 4 * MiB);
    expect(r.ret & BlockStatus.DATA).toBeTruthy();
    expect(r.pnum).toBe(64 * KiB);
    // trailing hole
    r = await be.blockStatus(MiB + 64 * KiB, 4 * MiB);
    expect(r.ret & BlockStatus.ZERO).toBeTruthy();
    expect(r.ret & BlockStatus.EOF).toBeTruthy();
    expect(r.pnum).toBe(3 * MiB - 64 * KiB);
    // want_zero=false: everything is data
    r = await be.blockStatus(4096, MiB, false);
    expect(r.ret & BlockStatus.DATA).toBeTruthy();
  });

  it('discard punches a hole (discard=unmap), and is dropped with discard=ignore', async () => {
    const p = path();
    const { be } = await openRaw(p, { size: 2 * MiB });
    await be.pwrite(0, pattern(2 * MiB, 0xee));
    await be.pdiscard(256 * KiB, 256 * KiB);
    expect((await be.read(256 * KiB, 256 * KiB)).every((x) => x === 0)).toBe(true);
    const r = await be.blockStatus(256 * KiB, MiB);
    expect(r.ret & BlockStatus.ZERO).toBeTruthy();
    expect(r.pnum).toBe(256 * KiB);
    const ignoring = await openRaw(path(), { size: MiB, discard: 'ignore' });
    await ignoring.be.pwrite(0, pattern(MiB, 1));
    await ignoring.be.pdiscard(0, MiB);
    expect((await ignoring.be.read(0, MiB)).every((x) => x === 1)).toBe(true);
  });

  it('zero writes: MAY_UNMAP punches, plain ones zero the range; both extend the file past EOF', async () => {
    const p = path();
    const { be, file } = await openRaw(p, { size: 2 * MiB, allowBeyondEof: true });
    await be.pwrite(0, pattern(2 * MiB, 0xcc));
    await be.pwriteZeroes(64 * KiB, 128 * KiB, ReqFlag.MAY_UNMAP);
    expect((await be.read(64 * KiB, 128 * KiB)).every((x) => x === 0)).toBe(true);
    expect((await be.blockStatus(64 * KiB, MiB)).pnum).toBe(128 * KiB);
    expect((await be.blockStatus(64 * KiB, MiB)).ret & BlockStatus.ZERO).toBeTruthy();
    await be.pwriteZeroes(MiB + 100, 5000);
    const out = await be.read(MiB, 8192);
    expect(out.subarray(0, 100).every((x) => x === 0xcc)).toBe(true);
    expect(out.subarray(100, 5100).every((x) => x === 0)).toBe(true);
    expect(out.subarray(5100).every((x) => x === 0xcc)).toBe(true);
    await be.pwriteZeroes(3 * MiB, MiB, ReqFlag.MAY_UNMAP);
    expect(statSync(p).size).toBe(4 * MiB);
    expect(file.totalBytes).toBe(4 * MiB);
    await be.pwriteZeroes(5 * MiB, MiB);
    expect(statSync(p).size).toBe(6 * MiB);
    expect((await be.read(2 * MiB, 4 * MiB)).every((x) => x === 0)).toBe(true);
    // NO_FALLBACK is fine: the file system zeroes efficiently
    await be.pwriteZeroes(0, 4096, ReqFlag.NO_FALLBACK);
  });
});

describeRequiring('file: interoperability with qemu-img / qemu-io', [...missingTools('qemu-img', 'qemu-io'), ...missingHelper], () => {
  const qemuIo = (p: string, cmd: string, extra: string[] = []) => runTool('qemu-io', ['-f', 'raw', ...extra, '-c', cmd, p]);

  it('qemu-io reads what blockgraph wrote, blockgraph reads what qemu-io wrote', async () => {
    const p = path();
    const { be, graph } = await openRaw(p, { size: 4 * MiB });
    await be.pwrite(MiB + 512, pattern(3 * 65536, 0xa7));
    await be.pwrite(3 * MiB, pattern(4096, 0x3c));
    await be.flush();
    be.remove();
    await graph.close();
    let r = qemuIo(p, `read -P 0xa7 ${MiB + 512} ${3 * 65536}`);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    expect(r.status).toBe(0);
    r = qemuIo(p, `read -P 0x3c ${3 * MiB} 4096`);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    r = qemuIo(p, `read -P 0 0 ${MiB + 512}`);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);

    r = qemuIo(p, `write -P 0x61 ${2 * MiB + 100} 70000`);
    expect(r.status).toBe(0);
    const again = await openRaw(p);
    const out = await again.be.read(2 * MiB, 70200);
    expect(out.subarray(0, 100).every((x) => x === 0)).toBe(true);
    expect(out.subarray(100, 70100).every((x) => x === 0x61)).toBe(true);
    expect(out.subarray(70100).every((x) => x === 0)).toBe(true);
  });

  it('a discard shows as a hole in qemu-img map --output=json -f raw', async () => {
    const p = path();
    const { be, graph } = await openRaw(p, { size: 4 * MiB });
    await be.pwrite(0, pattern(4 * MiB, 0x10));
    await be.pdiscard(MiB, 2 * MiB);
    await graph.close();
    const r = runTool('qemu-img', ['map', '--output=json', '-f', 'raw', p]);
    expect(r.status).toBe(0);
    const map = JSON.parse(r.stdout) as { start: number; length: number; data: boolean; zero: boolean }[];
    expect(map.map(({ start, length, data, zero }) => ({ start, length, data, zero }))).toEqual([
      { start: 0, length: MiB, data: true, zero: false },
      { start: MiB, length: 2 * MiB, data: false, zero: true },
      { start: 3 * MiB, length: MiB, data: true, zero: false },
    ]);
  });

  it('blockgraph block status agrees with qemu-img map on an image qemu-io wrote', async () => {
    const p = path();
    expect(runTool('qemu-img', ['create', '-f', 'raw', p, '8M']).status).toBe(0);
    qemuIo(p, 'write -P 1 1M 64k');
    qemuIo(p, 'write -P 2 5M 1M');
    const q = JSON.parse(runTool('qemu-img', ['map', '--output=json', '-f', 'raw', p]).stdout) as { start: number; length: number; data: boolean }[];
    const { be } = await openRaw(p);
    const ours: { start: number; length: number; data: boolean }[] = [];
    for (let off = 0; off < 8 * MiB; ) {
      const r = await be.blockStatus(off, 8 * MiB - off);
      const data = (r.ret & BlockStatus.DATA) !== 0;
      const last = ours[ours.length - 1];
      if (last && last.data === data) last.length += r.pnum;
      else ours.push({ start: off, length: r.pnum, data });
      off += r.pnum;
    }
    expect(ours).toEqual(q.map(({ start, length, data }) => ({ start, length, data })));
  });

  for (const prealloc of ['off', 'falloc', 'full'] as const) {
    it(`preallocation=${prealloc}: same size and allocation as qemu-img create -o preallocation=${prealloc}`, async () => {
      const ours = path(`ours-${prealloc}`);
      const theirs = path(`qemu-${prealloc}`);
      const graph = newGraph();
      await graph.createImage('file', { filename: ours, size: 3 * MiB + 1000, preallocation: prealloc });
      expect(runTool('qemu-img', ['create', '-f', 'raw', '-o', `preallocation=${prealloc}`, theirs, String(3 * MiB + 1000)]).status).toBe(0);
      expect(statSync(ours).size).toBe(statSync(theirs).size);
      expect(statSync(ours).blocks).toBe(statSync(theirs).blocks);
      const mo = runTool('qemu-img', ['map', '--output=json', '-f', 'raw', ours]).stdout;
      const mt = runTool('qemu-img', ['map', '--output=json', '-f', 'raw', theirs]).stdout;
      expect(mo).toBe(mt);
    });
  }

  it('truncate with preallocation matches qemu-img resize --preallocation', async () => {
    const ours = path('rs-ours');
    const theirs = path('rs-qemu');
    const graph = newGraph();
    await graph.createImage('file', { filename: ours, size: MiB });
    expect(runTool('qemu-img', ['create', '-f', 'raw', theirs, '1M']).status).toBe(0);
    const { be } = await openRaw(ours);
    await be.truncate(5 * MiB, true, 'falloc');
    expect(runTool('qemu-img', ['resize', '-f', 'raw', '--preallocation=falloc', theirs, '5M']).status).toBe(0);
    expect(statSync(ours).size).toBe(statSync(theirs).size);
    expect(statSync(ours).blocks).toBe(statSync(theirs).blocks);
  });

  it('qemu-io -t none reads what blockgraph wrote with cache.direct=on, and the other way round', async () => {
    const p = path();
    const { graph } = await openRaw(p, { size: 2 * MiB });
    await graph.close();
    const g = newGraph();
    graphs.push(g);
    const node = await g.openImage(p, { format: 'raw', options: { cache: { direct: true } } });
    const be = g.backend(node);
    await be.pwrite(4096 + 7, pattern(9000, 0x5e));
    await be.flush();
    be.remove();
    await g.close();
    let r = runTool('qemu-io', ['-f', 'raw', '-t', 'none', '-c', `read -P 0x5e ${4096 + 7} 9000`, p]);
    expect(r.status).toBe(0);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    r = runTool('qemu-io', ['-f', 'raw', '-t', 'none', '-c', 'write -P 0x6f 65536 65536', p]);
    expect(r.status).toBe(0);
    const again = await openRaw(p);
    expect((await again.be.read(65536, 65536)).every((x) => x === 0x6f)).toBe(true);
  });

  it('takes the lock bytes QEMU would for a writer (checked in /proc/locks)', async () => {
    const p = path();
    const { be, graph } = await openRaw(p, { size: MiB });
    // default backend: consistent read + write + resize, shares consistent read + write unchanged
    expect(lockedBytes(p)).toEqual([100, 101, 103, 201, 203]);
    be.setPerm(Perm.CONSISTENT_READ, 0xf);
    expect(lockedBytes(p)).toEqual([100]);
    be.remove();
    expect(lockedBytes(p)).toEqual([]);
    await graph.close();
    const fd = openSync(p, 'r+');
    writeSync(fd, 'x');
    closeSync(fd);
  });
});

describeRequiring('file: writeback-ahead (native helper)', missingHelper, () => {
  const cachestat = native?.pageCacheStat;
  /** Dirty pages of the file of `node` in a range, or null on kernels without cachestat(2). */
  function dirtyPages(fd: number, offset: number, length: number): number | null {
    try {
      return cachestat!(fd, offset, length).dirty;
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOSYS') return null;
      throw e;
    }
  }

  it('starts the writeback of what was written once the given amount has accumulated', async () => {
    const graph = newGraph();
    graphs.push(graph);
    const p = path('wb');
    await graph.createImage('file', { filename: p, size: 4 * MiB });
    const node = await graph.addNode({ driver: 'file', filename: p, 'writeback-ahead': '1M' });
    const be = graph.backend(node);
    const impl = node.impl as unknown as { fd: number; writebackAhead: { threshold: number; settled(): Promise<void> } | null };
    expect(impl.writebackAhead?.threshold).toBe(MiB);
    for (let i = 0; i < 3; i++) await be.pwrite(i * 512 * KiB, pattern(512 * KiB, i + 1));
    await impl.writebackAhead!.settled();
    // The first MiB has gone to writeback (dirty → writeback/clean); the last 512 KiB waits for the next MiB.
    // SYNC_FILE_RANGE_WRITE is best effort (WB_SYNC_NONE): ext4 may leave a page it cannot write just now dirty
    // (1 of the 256 once, in a full suite run beside a fuzz run), so a few are allowed; without the kick all
    // 256 would be.
    const firstMiB = dirtyPages(impl.fd, 0, MiB);
    if (firstMiB !== null) {
      expect(firstMiB).toBeLessThanOrEqual(16);
      expect(dirtyPages(impl.fd, MiB, 512 * KiB)).toBeGreaterThan(0);
    }
    const back = new Uint8Array(1536 * KiB);
    await be.pread(0, back);
    for (let i = 0; i < 3; i++) expect(back.subarray(i * 512 * KiB, (i + 1) * 512 * KiB).every((b) => b === i + 1)).toBe(true);
    await be.flush();
  });

  it('is off by default and with cache.direct=on (nothing is left dirty there), and refuses negative sizes', async () => {
    const graph = newGraph();
    graphs.push(graph);
    const p = path('wb-off');
    await graph.createImage('file', { filename: p, size: MiB });
    const plain = await graph.addNode({ driver: 'file', filename: p });
    expect((plain.impl as unknown as { writebackAhead: unknown }).writebackAhead).toBeNull();
    await graph.closeNode(plain);
    const direct = await graph.addNode({ driver: 'file', filename: p, cache: { direct: true }, writebackAhead: MiB });
    expect((direct.impl as unknown as { writebackAhead: unknown }).writebackAhead).toBeNull();
    await graph.closeNode(direct);
    await expect(graph.addNode({ driver: 'file', filename: p, 'writeback-ahead': -1 })).rejects.toMatchObject({
      code: 'EINVAL',
      message: "Parameter 'writeback-ahead' must be at least 0",
    });
  });
});
