import { BlockError } from './errors.js';

export interface DirtyBitmapOptions {
  granularity?: number;
  name?: string;
  /** Created disabled: writes don't mark it; only explicit set/reset change it. */
  disabled?: boolean;
  persistent?: boolean;
}

function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Bit index of the lowest set bit of a non-zero 32-bit word. */
function lowestBit(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/**
 * A dirty bitmap (BdrvDirtyBitmap): one bit per `granularity` bytes. A second level with one bit per 32-bit
 * word lets next-dirty searches skip clean regions of large disks quickly.
 */
export class DirtyBitmap {
  readonly granularity: number;
  readonly name: string | undefined;
  enabled: boolean;
  busy = false;
  persistent: boolean;
  private size: number;
  private nbits = 0;
  private words = new Uint32Array(0);
  private summary = new Uint32Array(0);
  private setBits = 0;

  constructor(size: number, granularity: number, opts: DirtyBitmapOptions = {}) {
    if (!(granularity >= 512 && granularity <= 2 ** 31 && (granularity & (granularity - 1)) === 0)) {
      throw new BlockError('EINVAL', 'Granularity must be power of 2, and at least 512');
    }
    if (opts.name !== undefined && (opts.name.length === 0 || opts.name.length > 1023)) {
      throw new BlockError('EINVAL', 'Bitmap name must be between 1 and 1023 characters');
    }
    this.granularity = granularity;
    this.name = opts.name;
    this.enabled = !opts.disabled;
    this.persistent = opts.persistent ?? false;
    this.size = 0;
    this.resize(size);
  }

  get byteSize(): number {
    return this.size;
  }

  resize(size: number): void {
    const nbits = Math.ceil(size / this.granularity);
    const words = new Uint32Array(Math.ceil(nbits / 32));
    words.set(this.words.subarray(0, Math.min(words.length, this.words.length)));
    // Clear bits beyond the new end in the last word.
    if (nbits % 32 && words.length) words[words.length - 1]! &= (1 << nbits % 32) - 1 || 0xffffffff;
    this.words = words;
    this.nbits = nbits;
    this.size = size;
    this.summary = new Uint32Array(Math.ceil(words.length / 32));
    this.setBits = 0;
    for (let w = 0; w < words.length; w++) {
      if (words[w]) {
        this.summary[w >>> 5]! |= 1 << (w & 31);
        this.setBits += popcount32(words[w]!);
      }
    }
  }

  private checkMutable(): void {
    if (this.busy) {
      throw new BlockError('EBUSY', `Bitmap '${this.name ?? ''}' is currently in use by another operation and cannot be used`);
    }
  }

  private updateRange(first: number, last: number, value: boolean): void {
    // bits [first, last)
    if (first >= last) return;
    const w0 = first >>> 5;
    const w1 = (last - 1) >>> 5;
    for (let w = w0; w <= w1; w++) {
      const lo = w === w0 ? first & 31 : 0;
      const hi = w === w1 ? ((last - 1) & 31) + 1 : 32;
      const mask = hi - lo === 32 ? 0xffffffff : (((1 << (hi - lo)) - 1) << lo) >>> 0;
      const old = this.words[w]!;
      const nw = (value ? old | mask : old & ~mask) >>> 0;
      if (nw !== old) {
        this.setBits += popcount32(nw) - popcount32(old);
        this.words[w] = nw;
        if (nw) this.summary[w >>> 5]! |= 1 << (w & 31);
        else this.summary[w >>> 5]! &= ~(1 << (w & 31));
      }
    }
  }

  /** Mark [offset, offset+bytes) dirty: every chunk touched. */
  set(offset: number, bytes: number): void {
    if (bytes <= 0) return;
    const first = Math.floor(offset / this.granularity);
    const last = Math.min(this.nbits, Math.ceil((offset + bytes) / this.granularity));
    this.updateRange(first, last, true);
  }

  /** Clear [offset, offset+bytes): only chunks it covers completely (a partial chunk at the end of the disk counts). */
  reset(offset: number, bytes: number): void {
    if (bytes <= 0) return;
    const first = Math.ceil(offset / this.granularity);
    const end = offset + bytes;
    const last = end >= this.size ? this.nbits : Math.floor(end / this.granularity);
    this.updateRange(first, last, false);
  }

  /** User-level set/reset/clear respect `busy` (QMP refuses them while a job owns the bitmap). */
  userSet(offset: number, bytes: number): void {
    this.checkMutable();
    this.set(offset, bytes);
  }

  userReset(offset: number, bytes: number): void {
    this.checkMutable();
    this.reset(offset, bytes);
  }

  clear(): void {
    this.words.fill(0);
    this.summary.fill(0);
    this.setBits = 0;
  }

  get(offset: number): boolean {
    const bit = Math.floor(offset / this.granularity);
    if (bit >= this.nbits || bit < 0) return false;
    return ((this.words[bit >>> 5]! >>> (bit & 31)) & 1) === 1;
  }

  /** Dirty bytes (whole chunks, the last one clipped at the end of the disk). */
  count(): number {
    let n = this.setBits * this.granularity;
    if (this.nbits && this.getBit(this.nbits - 1)) n -= this.nbits * this.granularity - this.size;
    return n;
  }

  private getBit(bit: number): boolean {
    return ((this.words[bit >>> 5]! >>> (bit & 31)) & 1) === 1;
  }

  private nextSetBit(from: number, limit: number): number {
    if (from >= limit) return -1;
    let w = from >>> 5;
    let word = this.words[w]! & (0xffffffff << (from & 31));
    for (;;) {
      if (word) {
        const bit = (w << 5) + lowestBit(word);
        return bit < limit ? bit : -1;
      }
      // Jump to the next non-empty word using the summary level.
      w++;
      const wl = (limit + 31) >>> 5;
      if (w >= wl) return -1;
      let s = w >>> 5;
      let sword = this.summary[s]! & (0xffffffff << (w & 31));
      while (!sword) {
        s++;
        if (s << 5 >= wl) return -1;
        sword = this.summary[s]!;
      }
      w = (s << 5) + lowestBit(sword);
      if (w >= wl) return -1;
      word = this.words[w]!;
    }
  }

  private nextClearBit(from: number, limit: number): number {
    for (let bit = from; bit < limit; ) {
      const w = bit >>> 5;
      const inv = ~this.words[w]! & (0xffffffff << (bit & 31));
      if (inv) {
        const b = (w << 5) + lowestBit(inv);
        return b < limit ? b : -1;
      }
      bit = (w + 1) << 5;
    }
    return -1;
  }

  /** First dirty byte offset in [offset, end), or -1. */
  nextDirty(offset: number, end = this.size): number {
    const first = Math.floor(offset / this.granularity);
    const limit = Math.min(this.nbits, Math.ceil(end / this.granularity));
    const bit = this.nextSetBit(first, limit);
    return bit < 0 ? -1 : Math.max(bit * this.granularity, offset);
  }

  /** First clean byte offset in [offset, end), or -1. */
  nextZero(offset: number, end = this.size): number {
    const first = Math.floor(offset / this.granularity);
    const limit = Math.min(this.nbits, Math.ceil(end / this.granularity));
    const bit = this.nextClearBit(first, limit);
    return bit < 0 ? -1 : Math.max(bit * this.granularity, offset);
  }

  /** The next dirty run starting at or after `offset`, at most `maxBytes` long and ending before `end`. */
  nextDirtyArea(offset: number, end = this.size, maxBytes = Number.MAX_SAFE_INTEGER): { offset: number; bytes: number } | null {
    end = Math.min(end, this.size);
    const start = this.nextDirty(offset, end);
    if (start < 0) return null;
    const limit = Math.min(end, start + maxBytes);
    const z = this.nextZero(start, limit);
    return { offset: start, bytes: (z < 0 ? limit : z) - start };
  }

  /** OR `src` into this bitmap (block-dirty-bitmap-merge). */
  merge(src: DirtyBitmap): void {
    this.checkMutable();
    if (src.size !== this.size) throw new BlockError('EINVAL', 'Bitmaps are incompatible and can\'t be merged');
    if (src.granularity === this.granularity) {
      for (let w = 0; w < src.words.length; w++) {
        const v = src.words[w]!;
        if (v) this.orWord(w, v);
      }
      return;
    }
    for (let off = src.nextDirty(0); off >= 0; ) {
      const area = src.nextDirtyArea(off)!;
      this.set(area.offset, area.bytes);
      off = src.nextDirty(area.offset + area.bytes);
    }
  }

  private orWord(w: number, v: number): void {
    const old = this.words[w]!;
    const nw = (old | v) >>> 0;
    if (nw !== old) {
      this.setBits += popcount32(nw) - popcount32(old);
      this.words[w] = nw;
      this.summary[w >>> 5]! |= 1 << (w & 31);
    }
  }

  enable(): void {
    this.checkMutable();
    this.enabled = true;
  }

  disable(): void {
    this.checkMutable();
    this.enabled = false;
  }
}
