import { execFileSync } from 'node:child_process';
import { closeSync, fdatasync, fstatSync, ftruncateSync, openSync, read, readFileSync, readSync, writeSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  NATIVE_DISABLE_ENV,
  isNativeError,
  loadNative,
  nativeLoadError,
  setNativeDisabled,
  type NativeHelper,
} from '../src/node/native.js';
import { describeRequiring, makeTempDir, missingTools, runTool } from './helpers/qemu.js';

const KiB = 1024;
const MiB = 1024 * KiB;

const helper = loadNative();
const missingHelper = helper ? [] : [`native helper (${nativeLoadError()?.message ?? 'disabled'})`];

function native(): NativeHelper {
  if (!helper) throw new Error('native helper not loaded');
  return helper;
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected an exception');
}

function fill(length: number, byte: number): Uint8Array {
  return new Uint8Array(length).fill(byte);
}

function readAt(fd: number, offset: number, length: number): Uint8Array {
  const buf = new Uint8Array(length);
  expect(readSync(fd, buf, 0, length, offset)).toBe(length);
  return buf;
}

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

function qemuImgMap(path: string): MapEntry[] {
  const result = runTool('qemu-img', ['map', '--output=json', '-f', 'raw', path]);
  expect(result.stderr).toBe('');
  expect(result.status).toBe(0);
  return JSON.parse(result.stdout) as MapEntry[];
}

describe('loadNative', () => {
  const envAtStart = process.env[NATIVE_DISABLE_ENV];
  beforeEach(() => {
    delete process.env[NATIVE_DISABLE_ENV];
  });
  afterEach(() => {
    setNativeDisabled(false);
    if (envAtStart === undefined) delete process.env[NATIVE_DISABLE_ENV];
    else process.env[NATIVE_DISABLE_ENV] = envAtStart;
  });

  it('returns null while disabled by setNativeDisabled(true), and the helper again afterwards', () => {
    const enabled = loadNative();
    setNativeDisabled(true);
    expect(loadNative()).toBeNull();
    setNativeDisabled(false);
    expect(loadNative()).toBe(enabled);
  });

  it(`returns null when ${NATIVE_DISABLE_ENV}=1`, () => {
    const enabled = loadNative();
    process.env[NATIVE_DISABLE_ENV] = '1';
    expect(loadNative()).toBeNull();
    process.env[NATIVE_DISABLE_ENV] = '0';
    expect(loadNative()).toBe(enabled);
  });

  it('loads the helper once and hands out the same object', () => {
    const first = loadNative();
    expect(loadNative()).toBe(first);
    if (first === null) expect(nativeLoadError()).toBeInstanceOf(Error);
    else expect(nativeLoadError()).toBeNull();
  });
});

describeRequiring('native helper', missingHelper, () => {
  let dir: string;
  let cleanup: () => void;
  const openFds: number[] = [];

  function open(name: string, flags: string): number {
    const fd = openSync(join(dir, name), flags);
    openFds.push(fd);
    return fd;
  }

  beforeAll(() => {
    ({ dir, cleanup } = makeTempDir('native'));
  });
  afterEach(() => {
    for (const fd of openFds.splice(0)) closeSync(fd);
  });
  afterAll(() => cleanup());

  it('exposes a version and the linux/falloc.h mode bits', () => {
    const n = native();
    expect(n.version).toMatch(/^1\.\d+\.\d+$/);
    expect(n.FALLOC_FL_KEEP_SIZE).toBe(0x01);
    expect(n.FALLOC_FL_PUNCH_HOLE).toBe(0x02);
    expect(n.FALLOC_FL_ZERO_RANGE).toBe(0x10);
    expect(['ofd', 'posix']).toContain(n.lockKind());
  });

  describe('fallocateAsync', () => {
    it('punches holes on the thread pool and rejects with the errno', async () => {
      const n = native();
      const fd = open('fa.img', 'w+');
      writeSync(fd, fill(256 * KiB, 0x5e), 0, 256 * KiB, 0);
      await n.fallocateAsync!(fd, n.FALLOC_FL_PUNCH_HOLE | n.FALLOC_FL_KEEP_SIZE, 64 * KiB, 64 * KiB);
      const b = new Uint8Array(64 * KiB);
      readSync(fd, b, 0, b.length, 64 * KiB);
      expect(b.every((v) => v === 0)).toBe(true);
      expect(fstatSync(fd).size).toBe(256 * KiB);
      await expect(n.fallocateAsync!(-1, 0, 0, 1)).rejects.toMatchObject({ code: 'EBADF', syscall: 'fallocate' });
    });
  });

  describe('fdatasyncAsync', () => {
    it('flushes on a thread of its own: it completes while every thread of the pool is blocked', async () => {
      const n = native();
      const fd = open('flush.img', 'w+');
      writeSync(fd, fill(64 * KiB, 0x11), 0, 64 * KiB, 0);
      // A FIFO opened read-write has a writer, so a read on it blocks its pool thread until data arrives.
      const fifo = join(dir, 'block-the-pool.fifo');
      execFileSync('mkfifo', [fifo]);
      const pipe = openSync(fifo, 'r+');
      openFds.push(pipe);
      const poolSize = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
      const blocked = Array.from({ length: poolSize }, () => new Promise<void>((res) => read(pipe, new Uint8Array(1), 0, 1, null, () => res())));
      const settledWithin = (p: Promise<unknown>, ms: number) =>
        Promise.race([p.then(() => true), new Promise<boolean>((res) => setTimeout(() => res(false), ms))]);
      // The pool is really full: fs.fdatasync waits behind the blocked reads...
      const viaPool = new Promise<void>((res, rej) => fdatasync(fd, (e) => (e ? rej(e) : res())));
      expect(await settledWithin(viaPool, 300)).toBe(false);
      // ...while the helper's flush does not.
      expect(await settledWithin(n.fdatasyncAsync!(fd), 5000)).toBe(true);
      writeSync(pipe, new Uint8Array(poolSize));
      await Promise.all(blocked);
      await viaPool;
      await expect(n.fdatasyncAsync!(-1)).rejects.toMatchObject({ code: 'EBADF', syscall: 'fdatasync' });
    });
  });

  describe('side threads', () => {
    // In a child process of its own, so that only its flushes count: the side threads are named "blockgraph-side".
    const script = (addon: string, file: string) => `
      const m = require(${JSON.stringify(addon)});
      const fs = require('node:fs');
      const side = () => fs.readdirSync('/proc/self/task').filter((t) => {
        try { return fs.readFileSync('/proc/self/task/' + t + '/comm', 'utf8').trim() === 'blockgraph-side'; } catch { return false; }
      });
      (async () => {
        const fd = fs.openSync(${JSON.stringify(file)}, 'w');
        await m.fdatasyncAsync(fd);
        const first = side();
        for (let i = 0; i < 50; i++) await m.fdatasyncAsync(fd);
        const after = side();
        await Promise.all(Array.from({ length: 16 }, () => m.fdatasyncAsync(fd)));
        const burst = side().length;
        const mixed = await Promise.allSettled([m.fdatasyncAsync(-1), m.fdatasyncAsync(fd), m.startWritebackAsync(fd, 0, 0)]);
        console.log(JSON.stringify({ first, after, burst, mixed: mixed.map((r) => r.status) }));
        // Still in flight when the script ends: the process must wait for it, then exit although threads idle on.
        m.fdatasyncAsync(fd).then(() => console.log('settled'));
      })();
    `;

    it('are reused from call to call, grow for concurrent calls, and neither hold the process nor let it leave early', () => {
      if (process.platform !== 'linux') return;
      const addon = join(import.meta.dirname, '..', 'native', 'build', 'Release', 'blockgraph_native.node');
      // Side threads idle for 10 s before they end: a child that exits well within that was not held by them.
      const out = execFileSync(process.execPath, ['-e', script(addon, join(dir, 'side.img'))], { encoding: 'utf8', timeout: 8000 });
      const [line, settled] = out.trim().split('\n');
      const r = JSON.parse(line!) as { first: string[]; after: string[]; burst: number; mixed: string[] };
      expect(r.first).toHaveLength(1);
      expect(r.after).toEqual(r.first);
      expect(r.burst).toBeGreaterThanOrEqual(1);
      expect(r.burst).toBeLessThanOrEqual(16);
      expect(r.mixed).toEqual(['rejected', 'fulfilled', 'fulfilled']);
      expect(settled).toBe('settled');
    });
  });

  describe('pwritevQueued', () => {
    it('writes the queued writes of one file one after the other, in the order queued, each in full', async () => {
      const n = native();
      const fd = open('queued.img', 'w+');
      // 64 writes to the same 4 KiB, none awaited before the next is queued: the last one queued must win.
      const writes = Array.from({ length: 64 }, (_, i) => n.pwritevQueued!(fd, [fill(4 * KiB, i + 1)], 0));
      // Several buffers go out as one gathered write, here past the end of the file.
      const gathered = [fill(3, 0xa1), fill(MiB, 0xa2), new Uint8Array(0), fill(5, 0xa3)];
      writes.push(n.pwritevQueued!(fd, gathered, 8 * KiB));
      expect(await Promise.all(writes)).toEqual(Array(65).fill(undefined));
      expect(readAt(fd, 0, 4 * KiB)).toEqual(fill(4 * KiB, 64));
      expect(fstatSync(fd).size).toBe(8 * KiB + 3 + MiB + 5);
      const back = readAt(fd, 8 * KiB, 3 + MiB + 5);
      expect(back.subarray(0, 3)).toEqual(fill(3, 0xa1));
      // (every() rather than toEqual: a deep comparison of 1 MiB takes seconds)
      expect(back.subarray(3, 3 + MiB).every((b) => b === 0xa2)).toBe(true);
      expect(back.subarray(3 + MiB)).toEqual(fill(5, 0xa3));
    });

    it('rejects with the errno of the failed pwritev and goes on with the writes queued behind it', async () => {
      const n = native();
      writeSync(open('ro.img', 'w'), fill(4 * KiB, 1), 0, 4 * KiB, 0);
      const ro = open('ro.img', 'r');
      const failed = n.pwritevQueued!(ro, [fill(4 * KiB, 2)], 0);
      const next = n.pwritevQueued!(ro, [fill(KiB, 3)], 0);
      await expect(failed).rejects.toMatchObject({ code: 'EBADF', syscall: 'pwritev' });
      await expect(next).rejects.toMatchObject({ code: 'EBADF' });
      expect(readAt(ro, 0, 4 * KiB)).toEqual(fill(4 * KiB, 1));
      const rw = open('rw.img', 'w+');
      await n.pwritevQueued!(rw, [fill(KiB, 4)], 0);
      expect(readAt(rw, 0, KiB)).toEqual(fill(KiB, 4));
    });

    it('continues a short write where it stopped, and reports the error that ends it (EFBIG past RLIMIT_FSIZE)', () => {
      if (process.platform !== 'linux') return;
      const addon = join(import.meta.dirname, '..', 'native', 'build', 'Release', 'blockgraph_native.node');
      const file = join(dir, 'fsize.img');
      // bash's ulimit -f counts KiB: the child may write 8 KiB. Ignoring SIGXFSZ turns the signal into EFBIG.
      const script = `
        const m = require(${JSON.stringify(addon)});
        const fs = require('node:fs');
        process.on('SIGXFSZ', () => {});
        const fd = fs.openSync(${JSON.stringify(file)}, 'w+');
        const over = m.pwritevQueued(fd, [new Uint8Array(4096).fill(7), new Uint8Array(8192).fill(8)], 0);
        const after = m.pwritevQueued(fd, [new Uint8Array(512).fill(9)], 0);
        Promise.allSettled([over, after]).then((r) => console.log(JSON.stringify({
          r: r.map((x) => x.status === 'fulfilled' ? 'ok' : x.reason.code),
          size: fs.fstatSync(fd).size,
        })));
      `;
      const out = execFileSync('bash', ['-c', 'ulimit -f 8 && exec "$0" -e "$1"', process.execPath, script], { encoding: 'utf8', timeout: 8000 });
      expect(JSON.parse(out)).toEqual({ r: ['EFBIG', 'ok'], size: 8 * KiB });
      const back = readFileSync(file);
      expect(back.subarray(0, 512)).toEqual(Buffer.alloc(512, 9));
      expect(back.subarray(512, 4 * KiB)).toEqual(Buffer.alloc(4 * KiB - 512, 7));
      expect(back.subarray(4 * KiB)).toEqual(Buffer.alloc(4 * KiB, 8));
    });

    it('keeps the process alive while a write is queued, and not after', () => {
      if (process.platform !== 'linux') return;
      const addon = join(import.meta.dirname, '..', 'native', 'build', 'Release', 'blockgraph_native.node');
      const script = `
        const m = require(${JSON.stringify(addon)});
        const fd = require('node:fs').openSync(${JSON.stringify(join(dir, 'alive.img'))}, 'w');
        m.pwritevQueued(fd, [new Uint8Array(${MiB})], 0).then(() => console.log('written'));
      `;
      // The side thread idles for 10 s after the write: a child that exits well within that was not held by it.
      const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 8000 });
      expect(out.trim()).toBe('written');
    });

    it('rejects bad arguments with TypeError/RangeError before queueing anything', () => {
      const n = native();
      const fd = open('args.img', 'w+');
      expect(thrown(() => n.pwritevQueued!(fd, new Uint8Array(1) as unknown as Uint8Array[], 0))).toBeInstanceOf(TypeError);
      expect(thrown(() => n.pwritevQueued!(fd, [new Uint8Array(1), 'x' as unknown as Uint8Array], 0))).toBeInstanceOf(TypeError);
      expect(thrown(() => n.pwritevQueued!(fd, [new Uint8Array(1)], -1))).toBeInstanceOf(RangeError);
      expect(thrown(() => n.pwritevQueued!(fd, [new Uint8Array(1)], 0.5))).toBeInstanceOf(RangeError);
      expect(fstatSync(fd).size).toBe(0);
    });
  });

  describe('startWritebackAsync and pageCacheStat', () => {
    // cachestat(2) arrived in Linux 6.5; before it pageCacheStat throws ENOSYS and only the kick itself is checked.
    const [major = 0, minor = 0] = release().split('.').map((x) => Number.parseInt(x, 10));
    const hasCachestat = major > 6 || (major === 6 && minor >= 5);

    it('pageCacheStat counts the cached and dirty pages of a range', () => {
      const n = native();
      const fd = open('cachestat.img', 'w+');
      if (!hasCachestat) {
        expect(thrown(() => n.pageCacheStat!(fd, 0, 0))).toMatchObject({ code: 'ENOSYS', syscall: 'cachestat' });
        return;
      }
      writeSync(fd, fill(256 * KiB, 0x22), 0, 256 * KiB, 0);
      const pages = (256 * KiB) / 4096;
      const all = n.pageCacheStat!(fd, 0, 0);
      expect(all.cached).toBe(pages);
      expect(all.dirty + all.writeback).toBe(pages);
      expect(n.pageCacheStat!(fd, 0, 64 * KiB).cached).toBe(16);
      expect(n.pageCacheStat!(fd, MiB, 64 * KiB)).toMatchObject({ cached: 0, dirty: 0, writeback: 0 });
      expect(thrown(() => n.pageCacheStat!(-1, 0, 0))).toMatchObject({ code: 'EBADF', syscall: 'cachestat' });
      expect(thrown(() => n.pageCacheStat!(fd, -1, 0))).toBeInstanceOf(RangeError);
    });

    it('starts writeback of the dirty pages in the range only, and settles before they reach the disk', async () => {
      const n = native();
      const fd = open('writeback.img', 'w+');
      writeSync(fd, fill(8 * MiB, 0x33), 0, 8 * MiB, 0);
      await n.startWritebackAsync!(fd, 0, 4 * MiB);
      if (hasCachestat) {
        // Everything in the range has been submitted (dirty → writeback or clean); the rest is untouched.
        expect(n.pageCacheStat!(fd, 0, 4 * MiB).dirty).toBe(0);
        expect(n.pageCacheStat!(fd, 4 * MiB, 4 * MiB).dirty).toBe((4 * MiB) / 4096);
        // length 0 reaches to the end of the file.
        await n.startWritebackAsync!(fd, 0, 0);
        expect(n.pageCacheStat!(fd, 0, 0).dirty).toBe(0);
      }
      expect(readAt(fd, 8 * MiB - 4, 4)).toEqual(fill(4, 0x33));
      await expect(n.startWritebackAsync!(-1, 0, 0)).rejects.toMatchObject({ code: 'EBADF', syscall: 'sync_file_range' });
      expect(thrown(() => n.startWritebackAsync!(fd, 0, -1))).toBeInstanceOf(RangeError);
    });
  });

  describe('preadNoWait', () => {
    it('reads cached data on the calling thread and answers -1/-2 when it cannot', () => {
      const n = native();
      const fd = open('nowait.img', 'w+');
      writeSync(fd, fill(64 * KiB, 0x3c), 0, 64 * KiB, 0);
      const buf = new Uint8Array(4 * KiB);
      const got = n.preadNoWait!(fd, buf, 4 * KiB);
      // A page-cache hit (just written) is served at once; -1 would mean "would block".
      expect(got).toBe(4 * KiB);
      expect(buf.every((v) => v === 0x3c)).toBe(true);
      // Past the end of the file: nothing to read.
      expect(n.preadNoWait!(fd, buf, 10 * MiB)).toBe(0);
      expect(() => n.preadNoWait!(-1, buf, 0)).toThrow(expect.objectContaining({ code: 'EBADF' }));
      expect(() => n.preadNoWait!(fd, 'x' as unknown as Uint8Array, 0)).toThrow(/Uint8Array/);
    });
  });

  describe('seekData / seekHole', () => {
    it('find the data and holes of a sparse file, and answer -1 where there is no more', () => {
      const n = native();
      const fd = open('sparse.img', 'w+');
      writeSync(fd, fill(64 * KiB, 0xa5), 0, 64 * KiB, 1 * MiB);
      writeSync(fd, fill(64 * KiB, 0x5a), 0, 64 * KiB, 3 * MiB);
      const size = 4 * MiB + 512 * KiB;
      // Grow with a hole at the end: ftruncate does not allocate.
      ftruncateSync(fd, size);
      expect(fstatSync(fd).size).toBe(size);

      expect(n.seekData(fd, 0)).toBe(1 * MiB);
      expect(n.seekHole(fd, 0)).toBe(0);
      expect(n.seekHole(fd, 1 * MiB)).toBe(1 * MiB + 64 * KiB);
      expect(n.seekData(fd, 1 * MiB + 64 * KiB)).toBe(3 * MiB);
      expect(n.seekHole(fd, 3 * MiB)).toBe(3 * MiB + 64 * KiB);
      // No data after the last extent: ENXIO, reported as -1.
      expect(n.seekData(fd, 3 * MiB + 64 * KiB)).toBe(-1);
      // An offset inside a hole is its own answer; at and past EOF neither call has one.
      expect(n.seekHole(fd, 4 * MiB)).toBe(4 * MiB);
      expect(n.seekData(fd, size)).toBe(-1);
      expect(n.seekHole(fd, size)).toBe(-1);
      expect(n.seekHole(fd, size + 1)).toBe(-1);
    });

    it('see a fully written file as one data extent', () => {
      const n = native();
      const fd = open('dense.img', 'w+');
      writeSync(fd, fill(256 * KiB, 1), 0, 256 * KiB, 0);
      expect(n.seekData(fd, 0)).toBe(0);
      // EOF counts as a hole.
      expect(n.seekHole(fd, 0)).toBe(256 * KiB);
      expect(n.seekData(fd, 100)).toBe(100);
    });
  });

  describe('fallocate', () => {
    it('preallocates with mode 0: the size and the allocated blocks grow', () => {
      const n = native();
      const fd = open('prealloc.img', 'w+');
      expect(fstatSync(fd).blocks).toBe(0);
      n.fallocate(fd, 0, 0, 2 * MiB);
      const st = fstatSync(fd);
      expect(st.size).toBe(2 * MiB);
      expect(st.blocks * 512).toBeGreaterThanOrEqual(2 * MiB);
      // Preallocated (unwritten) extents read as zeroes.
      expect(readAt(fd, 0, 4 * KiB).every((b) => b === 0)).toBe(true);
    });

    it('preallocates past EOF with FALLOC_FL_KEEP_SIZE without changing the size', () => {
      const n = native();
      const fd = open('keep-size.img', 'w+');
      writeSync(fd, fill(4 * KiB, 7), 0, 4 * KiB, 0);
      n.fallocate(fd, n.FALLOC_FL_KEEP_SIZE, 4 * KiB, 1 * MiB);
      const st = fstatSync(fd);
      expect(st.size).toBe(4 * KiB);
      expect(st.blocks * 512).toBeGreaterThanOrEqual(1 * MiB + 4 * KiB);
    });

    it('punches a hole that reads back as zeroes and that qemu-img map reports as a hole', () => {
      const n = native();
      const fd = open('punch.img', 'w+');
      writeSync(fd, fill(1 * MiB, 0xee), 0, 1 * MiB, 0);
      const blocksBefore = fstatSync(fd).blocks;
      n.fallocate(fd, n.FALLOC_FL_PUNCH_HOLE | n.FALLOC_FL_KEEP_SIZE, 256 * KiB, 256 * KiB);

      const st = fstatSync(fd);
      expect(st.size).toBe(1 * MiB);
      expect(blocksBefore - st.blocks).toBe((256 * KiB) / 512);
      expect(readAt(fd, 256 * KiB, 256 * KiB).every((b) => b === 0)).toBe(true);
      expect(readAt(fd, 256 * KiB - 1, 1)[0]).toBe(0xee);
      expect(readAt(fd, 512 * KiB, 1)[0]).toBe(0xee);
      expect(n.seekHole(fd, 0)).toBe(256 * KiB);
      expect(n.seekData(fd, 256 * KiB)).toBe(512 * KiB);
    });

    it('punch hole without FALLOC_FL_KEEP_SIZE is refused by the kernel (EOPNOTSUPP)', () => {
      const n = native();
      const fd = open('punch-nokeep.img', 'w+');
      writeSync(fd, fill(64 * KiB, 1), 0, 64 * KiB, 0);
      const error = thrown(() => n.fallocate(fd, n.FALLOC_FL_PUNCH_HOLE, 0, 4 * KiB));
      expect(isNativeError(error) && error.code).toBe('EOPNOTSUPP');
    });

    it('zeroes a range with FALLOC_FL_ZERO_RANGE', () => {
      const n = native();
      const fd = open('zero-range.img', 'w+');
      writeSync(fd, fill(512 * KiB, 0x33), 0, 512 * KiB, 0);
      n.fallocate(fd, n.FALLOC_FL_ZERO_RANGE, 64 * KiB, 128 * KiB);
      expect(fstatSync(fd).size).toBe(512 * KiB);
      expect(readAt(fd, 64 * KiB, 128 * KiB).every((b) => b === 0)).toBe(true);
      expect(readAt(fd, 64 * KiB - 1, 1)[0]).toBe(0x33);
      expect(readAt(fd, 192 * KiB, 1)[0]).toBe(0x33);
      // Without KEEP_SIZE, zeroing past EOF extends the file.
      n.fallocate(fd, n.FALLOC_FL_ZERO_RANGE, 512 * KiB, 64 * KiB);
      expect(fstatSync(fd).size).toBe(576 * KiB);
    });
  });

  describeRequiring('fallocate as seen by qemu-img map', missingTools('qemu-img'), () => {
    it('reports the punched range as a zero hole between data', () => {
      const n = native();
      const fd = open('map.img', 'w+');
      writeSync(fd, fill(1 * MiB, 0x11), 0, 1 * MiB, 0);
      n.fallocate(fd, n.FALLOC_FL_PUNCH_HOLE | n.FALLOC_FL_KEEP_SIZE, 256 * KiB, 256 * KiB);
      const map = qemuImgMap(join(dir, 'map.img')).map(({ start, length, data, zero }) => ({
        start,
        length,
        data,
        zero,
      }));
      expect(map).toEqual([
        { start: 0, length: 256 * KiB, data: true, zero: false },
        { start: 256 * KiB, length: 256 * KiB, data: false, zero: true },
        { start: 512 * KiB, length: 512 * KiB, data: true, zero: false },
      ]);
    });
  });

  describe('errors', () => {
    it('carry the errno name as code, a negative errno and the syscall', () => {
      const n = native();
      const badFd = 1_000_000;
      const cases: Array<[() => unknown, string]> = [
        [() => n.seekData(badFd, 0), 'lseek(SEEK_DATA)'],
        [() => n.seekHole(badFd, 0), 'lseek(SEEK_HOLE)'],
        [() => n.fallocate(badFd, 0, 0, 4096), 'fallocate'],
        [() => n.ofdLock(badFd, 100, 1, 'r'), n.lockKind() === 'ofd' ? 'fcntl(F_OFD_SETLK)' : 'fcntl(F_SETLK)'],
        [() => n.ofdTest(badFd, 100, 1, 'w'), n.lockKind() === 'ofd' ? 'fcntl(F_OFD_GETLK)' : 'fcntl(F_GETLK)'],
      ];
      for (const [call, syscall] of cases) {
        const error = thrown(call);
        expect(isNativeError(error)).toBe(true);
        expect(error).toMatchObject({
          code: 'EBADF',
          errno: -9,
          syscall,
          description: 'Bad file descriptor',
          message: `EBADF: Bad file descriptor, ${syscall}`,
        });
      }
    });

    it('report what the kernel says about a valid fd used wrongly', () => {
      const n = native();
      const fd = open('ro.img', 'w+');
      const readOnly = open('ro.img', 'r');
      expect(thrown(() => n.fallocate(readOnly, 0, 0, 4096))).toMatchObject({ code: 'EBADF' });
      expect(thrown(() => n.fallocate(fd, 0, 0, 0))).toMatchObject({ code: 'EINVAL' });
      expect(thrown(() => n.fallocate(fd, 0, -1, 4096))).toMatchObject({ code: 'EINVAL' });
      // A write lock needs an fd open for writing.
      expect(thrown(() => n.ofdLock(readOnly, 100, 1, 'w'))).toMatchObject({ code: 'EBADF' });
    });

    it('reject bad arguments with TypeError/RangeError before any system call', () => {
      const n = native();
      const fd = open('args.img', 'w+');
      const call = n as unknown as Record<string, (...args: unknown[]) => unknown>;
      expect(thrown(() => call.seekData!(fd))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
      expect(thrown(() => call.seekData!('3', 0))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
      expect(thrown(() => n.seekData(fd, 0.5))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
      expect(thrown(() => n.seekData(fd, 2 ** 53))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
      expect(thrown(() => call.ofdLock!(fd, 100, 1, 'x'))).toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' });
      expect(thrown(() => call.ofdTest!(fd, 100, 1, 'u'))).toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' });
    });
  });

  describe('OFD locks', () => {
    it('conflict between two open file descriptions of one file, not within one', () => {
      const n = native();
      const a = open('locks.img', 'w+');
      const b = open('locks.img', 'r+');
      n.ofdLock(a, 100, 1, 'w');
      // The holder itself is never in conflict with its own lock.
      expect(n.ofdTest(a, 100, 1, 'w')).toBe(true);
      expect(n.ofdTest(b, 100, 1, 'r')).toBe(false);
      expect(n.ofdTest(b, 101, 1, 'w')).toBe(true);
      expect(thrown(() => n.ofdLock(b, 100, 1, 'r'))).toMatchObject({ code: 'EAGAIN' });

      n.ofdLock(a, 100, 1, 'r');
      expect(n.ofdTest(b, 100, 1, 'r')).toBe(true);
      expect(n.ofdTest(b, 100, 1, 'w')).toBe(false);
      n.ofdLock(b, 100, 1, 'r');
      expect(thrown(() => n.ofdLock(b, 100, 1, 'w'))).toMatchObject({ code: 'EAGAIN' });

      n.ofdLock(a, 100, 1, 'u');
      n.ofdLock(b, 100, 1, 'w');
      expect(n.ofdTest(a, 100, 1, 'r')).toBe(false);
    });

    it('are released when the fd is closed', () => {
      const n = native();
      const a = openSync(join(dir, 'close.img'), 'w+');
      const b = open('close.img', 'r+');
      n.ofdLock(a, 200, 4, 'r');
      expect(n.ofdTest(b, 201, 1, 'w')).toBe(false);
      closeSync(a);
      expect(n.ofdTest(b, 201, 1, 'w')).toBe(true);
    });

    it('can be switched to POSIX locks and back', () => {
      const n = native();
      const kind = n.lockKind();
      try {
        n.setLockKind('posix');
        expect(n.lockKind()).toBe('posix');
        const a = open('posix.img', 'w+');
        const b = open('posix.img', 'r+');
        // POSIX locks belong to the process: our second fd sees no conflict with our first.
        n.ofdLock(a, 100, 1, 'w');
        expect(n.ofdTest(b, 100, 1, 'w')).toBe(true);
        n.ofdLock(a, 100, 1, 'u');
        expect(thrown(() => (n.setLockKind as (kind: string) => void)('flock'))).toMatchObject({
          code: 'ERR_INVALID_ARG_VALUE',
        });
      } finally {
        n.setLockKind(kind);
      }
      expect(n.lockKind()).toBe(kind);
    });
  });
});
