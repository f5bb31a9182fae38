import { BlockError } from '@blockgraph/block-core';

/**
 * The byte access `checkImage` needs: the image file itself, independent of any driver cache.
 *
 * Reads past the end of the file: an implementation may return a short buffer (only the bytes that exist) or a
 * zero-filled one of the requested length; the check treats every missing byte as zero, which is what QEMU's
 * file driver does for reads beyond EOF. `length()` must follow writes past EOF (the rebuild appends
 * clusters). `truncate` is used to grow the file when a refcount block lies beyond its end (`-r all`); without
 * it the check writes a zero cluster there instead, which has the same effect.
 *
 * `discard` is advisory: a repair that frees a cluster (its refcount drops to 0) discards it, as QEMU's repair
 * does (on a regular file QEMU punches a hole, so the cluster then reads as zeros). Without it freed clusters
 * keep their old bytes, which is harmless but leaves the file different from QEMU's.
 */
export interface ImageIO {
  readAt(offset: number, length: number): Promise<Uint8Array>;
  writeAt(offset: number, data: Uint8Array): Promise<void>;
  flush(): Promise<void>;
  length(): Promise<number>;
  truncate?(length: number): Promise<void>;
  discard?(offset: number, length: number): Promise<void>;
}

/**
 * QEMU's BDRV_MAX_LENGTH: the block layer fails requests reaching beyond it with EIO (offsets from corrupted
 * 64-bit entries can be that large).
 */
const REQUEST_MAX_BYTES = 4194303n * 512n;
const BDRV_MAX_LENGTH = (((1n << 63n) - 1n) / REQUEST_MAX_BYTES) * REQUEST_MAX_BYTES;

/**
 * Exactly `length` bytes from `offset`; whatever lies beyond EOF (offsets past 2^53 included) reads as
 * zeros. Offsets beyond what QEMU's block layer accepts fail with EIO, as in QEMU.
 */
export async function readFull(io: ImageIO, offset: number | bigint, length: number): Promise<Uint8Array> {
  return (await readFullOrBeyondEof(io, offset, length)) ?? new Uint8Array(length);
}

/**
 * {@link readFull}, except that a range lying wholly beyond the end of the file gives null instead of a zeroed
 * buffer. A table full of zeroes references nothing, so the table walks skip it; a corrupt L1 table can point
 * tens of thousands of entries past EOF, and allocating and scanning a zero table for each took most of `check`'s
 * time on such an image.
 */
export async function readFullOrBeyondEof(io: ImageIO, offset: number | bigint, length: number): Promise<Uint8Array | null> {
  if (length <= 0) return new Uint8Array(0);
  if (typeof offset === 'bigint' || !(offset >= 0 && offset + length <= Number.MAX_SAFE_INTEGER)) {
    const off = BigInt(offset);
    if (off < 0n || off > BDRV_MAX_LENGTH || BigInt(length) > BDRV_MAX_LENGTH - off) throw new BlockError('EIO');
    return null;
  }
  const got = await io.readAt(offset, length);
  if (got.length === length) return got;
  if (got.length === 0) return null;
  const out = new Uint8Array(length);
  out.set(got.subarray(0, Math.min(got.length, length)));
  return out;
}

/**
 * The file length as QEMU's block layer sees it: bdrv_getlength() counts whole 512-byte sectors, so a file
 * whose last sector is partial (compressed data at EOF) is rounded up.
 */
export async function fileLengthInSectors(io: ImageIO): Promise<number> {
  const len = await io.length();
  return Math.ceil(len / 512) * 512;
}
