/**
 * cache.direct=on (O_DIRECT): the kernel moves data straight between the device and the caller's memory, so
 * offsets, lengths *and buffer addresses* must be aligned. The core aligns offsets and lengths (the node's
 * request alignment); buffers that are not aligned in memory — anything not carved from
 * {@link allocAlignedBuffer} at an aligned offset — go through aligned bounce buffers from a small pool.
 *
 * Short transfers: an O_DIRECT read that stops early has reached EOF (the rest reads as zeroes; continuing at
 * an unaligned offset would fail with EINVAL, QEMU's handle_aiocb_rw_linear makes the same assumption); a
 * short write is an error.
 */
import * as fs from 'node:fs';
import { BlockError, allocAlignedBuffer, isAlignedBuffer, type IOVector } from '@blockgraph/block-core';
import { ioError, preadFull } from './fs-io.js';

/** Largest request in O_DIRECT mode (the node's max-transfer): bounce buffers are at most this big. */
export const DIRECT_MAX_TRANSFER = 16 * 1024 * 1024;
/** Bounce buffers are carved out of slabs of this size (each slab is one WebAssembly.Memory). */
const SLAB = 4 * 1024 * 1024;
/** Free buffers kept per size class. */
const KEEP_PER_CLASS = 16;

/** Aligned bounce buffers in power-of-two size classes. */
export class BouncePool {
  private readonly free = new Map<number, Uint8Array[]>();

  constructor(private readonly minSize: number) {}

  private classOf(bytes: number): number {
    let c = this.minSize;
    while (c < bytes) c *= 2;
    return c;
  }

  get(bytes: number): Uint8Array {
    const c = this.classOf(bytes);
    const list = this.free.get(c);
    const hit = list?.pop();
    if (hit) return hit;
    if (c >= SLAB) return allocAlignedBuffer(c);
    // Carve a slab into buffers of this class; keep the rest for later.
    const slab = allocAlignedBuffer(SLAB);
    const out: Uint8Array[] = [];
    for (let off = c; off + c <= SLAB && out.length < KEEP_PER_CLASS; off += c) out.push(slab.subarray(off, off + c));
    this.free.set(c, [...(list ?? []), ...out]);
    return slab.subarray(0, c);
  }

  put(buf: Uint8Array): void {
    const c = buf.byteLength;
    const list = this.free.get(c) ?? [];
    if (list.length < KEEP_PER_CLASS) list.push(buf);
    this.free.set(c, list);
  }
}

/** Every buffer of `iov` starts at an `align`-aligned address and is a multiple of `align` long. */
export function iovAligned(iov: readonly Uint8Array[], align: number): boolean {
  for (const b of iov) if (b.byteLength % align !== 0 || !isAlignedBuffer(b, align)) return false;
  return true;
}

function readOnce(fd: number, iov: readonly Uint8Array[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    if (iov.length === 1) {
      const b = iov[0]!;
      fs.read(fd, b, 0, b.byteLength, pos, (err, n) => (err ? reject(ioError(err)) : resolve(n)));
    } else {
      fs.readv(fd, iov as Uint8Array[], pos, (err, n) => (err ? reject(ioError(err)) : resolve(n)));
    }
  });
}

function writeOnce(fd: number, iov: readonly Uint8Array[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    if (iov.length === 1) {
      const b = iov[0]!;
      fs.write(fd, b, 0, b.byteLength, pos, (err, n) => (err ? reject(ioError(err)) : resolve(n)));
    } else {
      fs.writev(fd, iov as Uint8Array[], pos, (err, n) => (err ? reject(ioError(err)) : resolve(n)));
    }
  });
}

/** Zero everything of `iov` from byte `from` on. */
function zeroFrom(iov: readonly Uint8Array[], from: number): void {
  for (const b of iov) {
    if (from >= b.byteLength) {
      from -= b.byteLength;
      continue;
    }
    b.fill(0, from);
    from = 0;
  }
}

/** An O_DIRECT read into `qiov` (aligned offset and length), bouncing when its memory is not aligned. */
export async function directPreadv(fd: number, offset: number, bytes: number, qiov: IOVector, align: number, pool: BouncePool): Promise<void> {
  if (iovAligned(qiov.iov, align)) {
    const n = await readOnce(fd, qiov.iov, offset);
    if (n < bytes) zeroFrom(qiov.iov, n);
    return;
  }
  const bounce = pool.get(bytes);
  try {
    const view = bounce.subarray(0, bytes);
    const n = await readOnce(fd, [view], offset);
    if (n < bytes) view.fill(0, n);
    qiov.copyFrom(view, 0);
  } finally {
    pool.put(bounce);
  }
}

/** An O_DIRECT write of `qiov` (aligned offset and length), bouncing when its memory is not aligned. */
export async function directPwritev(fd: number, offset: number, bytes: number, qiov: IOVector, align: number, pool: BouncePool): Promise<void> {
  let n: number;
  if (iovAligned(qiov.iov, align)) {
    n = await writeOnce(fd, qiov.iov, offset);
  } else {
    const bounce = pool.get(bytes);
    try {
      const view = bounce.subarray(0, bytes);
      qiov.copyTo(view, 0, bytes);
      n = await writeOnce(fd, [view], offset);
    } finally {
      pool.put(bounce);
    }
  }
  if (n !== bytes) throw new BlockError('EIO', `Short O_DIRECT write: ${n} of ${bytes} bytes`);
}

// --- buffered reads into unaligned memory ---------------------------------------------------------------------

/**
 * The kernel's page-cache copy (copy_to_user, `rep movsb`) is several times slower into a destination that is not
 * cache-line aligned: 1 MiB reads from cached data, measured here, 0.75 s per GiB into a plain
 * `new Uint8Array(1 MiB)` (malloc puts it 16 bytes past a page boundary) against 0.13 s into page-aligned memory,
 * and 0.14 s when read into an aligned bounce buffer and copied out in user space (memcpy does not mind the
 * alignment). Large buffered reads into memory not known to be aligned therefore bounce. Below this size the
 * copy is short enough that the difference does not pay for the second copy.
 */
export const BUFFERED_BOUNCE_CHUNK = 4 * 1024 * 1024;
/** Alignment that the fast copy needs (a cache line). */
const COPY_ALIGN = 64;
const bufferedPool = new BouncePool(256 * 1024);

/** Does a big buffered read into `iov` need a bounce buffer (some buffer not known to be cache-line aligned)? */
export function bufferedBounceNeeded(iov: readonly Uint8Array[]): boolean {
  for (const b of iov) if (!isAlignedBuffer(b, COPY_ALIGN)) return true;
  return false;
}

/** Staging buffer of scatterCopy(), small enough to stay in the CPU cache. */
const stage = new Uint8Array(64 * 1024);
/** Pieces from this size on are copied straight (memcpy takes its non-temporal path, alignment does not matter). */
const DIRECT_COPY_MIN = 1024 * 1024;

/**
 * dst.set(src, at), fast also when `dst` is not cache-line aligned: memcpy (`rep movsb`) into memory that is not,
 * and not in the cache either, runs at ~1.6 GB/s for pieces of 64-256 KiB (measured here), against 5-7 GB/s when
 * the piece goes through a small buffer that stays in the cache; from 1 MiB on the plain copy is faster.
 */
function scatterCopy(dst: Uint8Array, at: number, src: Uint8Array): void {
  const n = src.byteLength;
  if (n >= DIRECT_COPY_MIN) {
    dst.set(src, at);
    return;
  }
  for (let o = 0; o < n; o += stage.byteLength) {
    const k = Math.min(stage.byteLength, n - o);
    const t = k === stage.byteLength ? stage : stage.subarray(0, k);
    t.set(src.subarray(o, o + k));
    dst.set(t, at + o);
  }
}

/** A buffered read of `size` bytes at `pos` into `iov` through aligned bounce buffers (past EOF: zeroes). */
export async function bouncedPreadv(fd: number, iov: readonly Uint8Array[], size: number, pos: number): Promise<void> {
  const chunk = Math.min(size, BUFFERED_BOUNCE_CHUNK);
  const bounce = bufferedPool.get(chunk);
  try {
    if (!isAlignedBuffer(bounce, COPY_ALIGN)) {
      // No aligned memory to be had (no WebAssembly, address space exhausted): read directly.
      for (let done = 0, i = 0, at = 0; done < size; ) {
        const b = iov[i]!;
        const n = Math.min(b.byteLength - at, size - done);
        await preadFull(fd, b.subarray(at, at + n), pos + done);
        done += n;
        at += n;
        if (at === b.byteLength) {
          i++;
          at = 0;
        }
      }
      return;
    }
    let i = 0;
    let at = 0;
    for (let done = 0; done < size; ) {
      const n = Math.min(chunk, size - done);
      const view = bounce.subarray(0, n);
      await preadFull(fd, view, pos + done);
      // Scatter the chunk into the caller's buffers.
      for (let from = 0; from < n; ) {
        const b = iov[i]!;
        const k = Math.min(b.byteLength - at, n - from);
        scatterCopy(b, at, view.subarray(from, from + k));
        from += k;
        at += k;
        if (at === b.byteLength) {
          i++;
          at = 0;
        }
      }
      done += n;
    }
  } finally {
    bufferedPool.put(bounce);
  }
}

/**
 * raw_probe_alignment() for a regular file: the smallest of 1, 512, 1024, 2048, 4096 that an O_DIRECT read
 * at offset 0 accepts; 1 means "could not tell" (an empty file reads 0 bytes at any size) and becomes 4096.
 */
export function probeDirectAlignment(fd: number): number {
  const buf = allocAlignedBuffer(4096);
  if (!isAlignedBuffer(buf)) return 4096;
  for (const align of [1, 512, 1024, 2048, 4096]) {
    try {
      fs.readSync(fd, buf, 0, align, 0);
      return align === 1 ? 4096 : align;
    } catch (e) {
      if ((e as { code?: string }).code !== 'EINVAL') return align === 1 ? 4096 : align;
    }
  }
  throw new BlockError('EINVAL', 'Could not find working O_DIRECT alignment\nTry cache.direct=off');
}
