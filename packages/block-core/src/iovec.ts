/**
 * A scatter/gather list of byte slices. Layers pad, split and offset requests by building new vectors over the
 * same memory instead of copying.
 */
export class IOVector {
  readonly iov: readonly Uint8Array[];
  readonly size: number;

  constructor(iov: readonly Uint8Array[]) {
    this.iov = iov;
    let n = 0;
    for (const b of iov) n += b.byteLength;
    this.size = n;
  }

  static of(buf: Uint8Array): IOVector {
    return new IOVector([buf]);
  }

  static zeroed(bytes: number): IOVector {
    return new IOVector([new Uint8Array(bytes)]);
  }

  static concat(parts: readonly (IOVector | Uint8Array)[]): IOVector {
    const iov: Uint8Array[] = [];
    for (const p of parts) {
      if (p instanceof Uint8Array) {
        if (p.byteLength) iov.push(p);
      } else {
        for (const b of p.iov) if (b.byteLength) iov.push(b);
      }
    }
    return new IOVector(iov);
  }

  /** A view of `bytes` bytes starting at `offset`; shares memory with this vector. */
  slice(offset: number, bytes: number = this.size - offset): IOVector {
    if (offset === 0 && bytes === this.size) return this;
    if (offset < 0 || bytes < 0 || offset + bytes > this.size) {
      throw new RangeError(`IOVector slice [${offset}, +${bytes}) outside ${this.size}`);
    }
    const out: Uint8Array[] = [];
    let pos = 0;
    let left = bytes;
    for (const b of this.iov) {
      if (left === 0) break;
      const end = pos + b.byteLength;
      if (end > offset) {
        const start = Math.max(0, offset - pos);
        const n = Math.min(b.byteLength - start, left);
        out.push(start === 0 && n === b.byteLength ? b : b.subarray(start, start + n));
        left -= n;
      }
      pos = end;
    }
    return new IOVector(out);
  }

  /** Copy `src` into the vector at `offset`. */
  copyFrom(src: Uint8Array, offset = 0): void {
    let pos = 0;
    let si = 0;
    for (const b of this.iov) {
      if (si >= src.byteLength) break;
      const end = pos + b.byteLength;
      if (end > offset) {
        const start = Math.max(0, offset - pos);
        const n = Math.min(b.byteLength - start, src.byteLength - si);
        b.set(src.subarray(si, si + n), start);
        si += n;
      }
      pos = end;
    }
  }

  /** Copy `bytes` bytes starting at `offset` out of the vector into `dst` (at `dstOffset`). */
  copyTo(dst: Uint8Array, offset = 0, bytes = this.size - offset, dstOffset = 0): void {
    let pos = 0;
    let di = dstOffset;
    const stop = dstOffset + bytes;
    for (const b of this.iov) {
      if (di >= stop) break;
      const end = pos + b.byteLength;
      if (end > offset) {
        const start = Math.max(0, offset - pos);
        const n = Math.min(b.byteLength - start, stop - di);
        dst.set(b.subarray(start, start + n), di);
        di += n;
      }
      pos = end;
    }
  }

  fill(value: number, offset = 0, bytes = this.size - offset): void {
    let pos = 0;
    const stop = offset + bytes;
    for (const b of this.iov) {
      const end = pos + b.byteLength;
      if (end > offset && pos < stop) {
        b.fill(value, Math.max(0, offset - pos), Math.min(b.byteLength, stop - pos));
      }
      pos = end;
    }
  }

  /** One contiguous buffer with the vector's content (the buffer itself when there is only one). */
  toBuffer(): Uint8Array {
    if (this.iov.length === 1) return this.iov[0]!;
    const out = new Uint8Array(this.size);
    this.copyTo(out);
    return out;
  }

  isZero(): boolean {
    for (const b of this.iov) if (!isZeroBuffer(b)) return false;
    return true;
  }
}

/** True if every byte is zero; compares four bytes at a time where alignment allows. */
export function isZeroBuffer(b: Uint8Array): boolean {
  const len = b.byteLength;
  let i = 0;
  if ((b.byteOffset & 3) === 0 && len >= 64) {
    const words = new Uint32Array(b.buffer, b.byteOffset, len >>> 2);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0) return false;
    i = words.length * 4;
  }
  for (; i < len; i++) if (b[i] !== 0) return false;
  return true;
}
