import { BlockError } from './errors.js';

export interface DirtyBitmapOptions {
  granularity?: number;
  name?: string;
  /** Created disabled: writes don't mark it; only explicit set/reset change it. */
  disabled?: boolean;
  persistent?: boolean;
}

/** BDRV_BITMAP_MAX_NAME_SIZE (bytes of UTF-8). */
const MAX_NAME_BYTES = 1023;

function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Bit index of the lowest set bit of a non-zero 32-bit word. */
function lowestBit(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/** Bits [lo, hi) of a word, 0 <= lo < hi <= 32. */
function maskRange(lo: number, hi: number): number {
  return hi - lo === 32 ? 0xffffffff : (((1 << (hi - lo)) - 1) << lo) >>> 0;
}

/** 32-bit word index of a bit index (bit indices may exceed 2^31 on big disks: no `>>>`). */
function wordOf(bit: number): number {
  return Math.floor(bit / 32);
}

function utf8Length(s: string): number {
  return new TextEncoder().encode(s).length;
}

/**
 * A dirty bitmap (BdrvDirtyBitmap): one bit per `granularity` bytes. A second level with one bit per 32-bit
 * word lets next-dirty searches skip clean regions of large disks quickly.
 *
 * Byte ranges follow hbitmap: `set` marks every chunk it touches, `reset` clears only chunks it covers
 * completely (the partial chunk at the end of the disk counts as covered when the range reaches the end).
 */
export class DirtyBitmap {
  readonly granularity: number;
  readonly name: string | undefined;
  enabled: boolean;
  /** In use by a job or operation: user commands (userSet/userReset/userClear/merge/enable/disable) refuse it. */
  busy = false;
  persistent: boolean;
  private size: number;
  private nbits = 0;
  private words = new Uint32Array(0);
  private summary = new Uint32Array(0);
  private setBits = 0;

  constructor(size: number, granularity: number, opts: DirtyBitmapOptions = {}) {
    if (!(Number.isInteger(granularity) && granularity >= 512 && granularity <= 2 ** 31 && (granularity & (granularity - 1)) === 0)) {
      throw new BlockError('EINVAL', 'Granularity must be power of 2 and at least 512');
    }
    if (opts.name !== undefined) {
      if (opts.name.length === 0) throw new BlockError('EINVAL', 'Bitmap name cannot be empty');
      if (utf8Length(opts.name) > MAX_NAME_BYTES) throw new BlockError('EINVAL', 'Bitmap name is too long');
    }
    this.granularity = granularity;
    this.name = opts.name;
    this.enabled = !opts.disabled;
    this.persistent = opts.persistent ?? false;
    this.size = 0;
    this.resize(size);
  }

  /** The size of the disk the bitmap covers, in bytes. */
  get byteSize(): number {
    return this.size;
  }

  /** hbitmap_truncate(): grow (new chunks clean) or shrink (bits past the new end dropped). */
  resize(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0) throw new BlockError('EINVAL', `Invalid bitmap size ${size}`);
    const nbits = Math.ceil(size / this.granularity);
    const words = new Uint32Array(Math.ceil(nbits / 32));
    words.set(this.words.subarray(0, Math.min(words.length, this.words.length)));
    // Clear bits beyond the new end in the last word.
    const tail = nbits % 32;
    if (tail && words.length) words[words.length - 1] = (words[words.length - 1]! & maskRange(0, tail)) >>> 0;
    this.words = words;
    this.nbits = nbits;
    this.size = size;
    this.summary = new Uint32Array(Math.ceil(words.length / 32));
    this.setBits = 0;
    for (let w = 0; w < words.length; w++) {
      if (words[w]) {
        this.summary[wordOf(w)]! |= 1 << (w & 31);
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
    const w0 = wordOf(first);
    const w1 = wordOf(last - 1);
    for (let w = w0; w <= w1; w++) {
      const lo = w === w0 ? first - w0 * 32 : 0;
      const hi = w === w1 ? last - 1 - w1 * 32 + 1 : 32;
      const mask = maskRange(lo, hi);
      const old = this.words[w]!;
      const nw = (value ? old | mask : old & ~mask) >>> 0;
      if (nw !== old) {
        this.setBits += popcount32(nw) - popcount32(old);
        this.words[w] = nw;
        if (nw) this.summary[wordOf(w)]! |= 1 << (w & 31);
        else this.summary[wordOf(w)]! &= ~(1 << (w & 31));
      }
    }
  }

  /** Mark [offset, offset+bytes) dirty: every chunk touched. */
  set(offset: number, bytes: number): void {
    if (bytes <= 0) return;
    const first = Math.max(0, Math.floor(offset / this.granularity));
    const last = Math.min(this.nbits, Math.ceil((offset + bytes) / this.granularity));
    this.updateRange(first, last, true);
  }

  /** Clear [offset, offset+bytes): only chunks it covers completely (a partial chunk at the end of the disk counts). */
  reset(offset: number, bytes: number): void {
    if (bytes <= 0) return;
    const first = Math.max(0, Math.ceil(offset / this.granularity));
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

  /** block-dirty-bitmap-clear. */
  userClear(): void {
    this.checkMutable();
    this.clear();
  }

  clear(): void {
    this.words.fill(0);
    this.summary.fill(0);
    this.setBits = 0;
  }

  /** Is the chunk holding byte `offset` dirty? Bytes outside the disk are clean. */
  get(offset: number): boolean {
    if (!(offset >= 0 && offset < this.size)) return false;
    return this.getBit(Math.floor(offset / this.granularity));
  }

  /**
   * Dirty bytes: whole chunks, the last one clipped at the end of the disk (so count() <= byteSize).
   * QEMU's hbitmap_count() does not clip: it reports set bits × granularity.
   */
  count(): number {
    let n = this.setBits * this.granularity;
    if (this.nbits && this.getBit(this.nbits - 1)) n -= this.nbits * this.granularity - this.size;
    return n;
  }

  /** No dirty chunk at all. */
  isEmpty(): boolean {
    return this.setBits === 0;
  }

  private getBit(bit: number): boolean {
    const w = wordOf(bit);
    return ((this.words[w]! >>> (bit - w * 32)) & 1) === 1;
  }

  /** First set bit in [from, limit), or -1. */
  private nextSetBit(from: number, limit: number): number {
    if (from >= limit) return -1;
    const wl = wordOf(limit + 31); // words that hold bits below limit
    let w = wordOf(from);
    let word = this.words[w]! & (0xffffffff << (from - w * 32));
    for (;;) {
      if (word) {
        const bit = w * 32 + lowestBit(word);
        return bit < limit ? bit : -1;
      }
      // Jump to the next non-empty word using the summary level.
      w++;
      if (w >= wl) return -1;
      let s = wordOf(w);
      let sword = this.summary[s]! & (0xffffffff << (w & 31));
      while (!sword) {
        s++;
        if (s * 32 >= wl) return -1;
        sword = this.summary[s]!;
      }
      w = s * 32 + lowestBit(sword);
      if (w >= wl) return -1;
      word = this.words[w]!;
    }
  }

  /** First clear bit in [from, limit), or -1. */
  private nextClearBit(from: number, limit: number): number {
    for (let bit = from; bit < limit; ) {
      const w = wordOf(bit);
      const inv = ~this.words[w]! & (0xffffffff << (bit - w * 32));
      if (inv) {
        const b = w * 32 + lowestBit(inv);
        return b < limit ? b : -1;
      }
      bit = (w + 1) * 32;
    }
    return -1;
  }

  /** Chunk range [first, limit) for byte range [offset, end) clipped to the disk; null when empty. */
  private chunkRange(offset: number, end: number): [number, number] | null {
    offset = Math.max(0, offset);
    end = Math.min(end, this.size);
    if (offset >= end) return null;
    return [Math.floor(offset / this.granularity), Math.ceil(end / this.granularity)];
  }

  /** First dirty byte offset in [offset, end), or -1 (hbitmap_next_dirty). */
  nextDirty(offset: number, end = this.size): number {
    const r = this.chunkRange(offset, end);
    if (!r) return -1;
    const bit = this.nextSetBit(r[0], r[1]);
    return bit < 0 ? -1 : Math.max(bit * this.granularity, offset);
  }

  /** First clean byte offset in [offset, end), or -1 (hbitmap_next_zero). */
  nextZero(offset: number, end = this.size): number {
    const r = this.chunkRange(offset, end);
    if (!r) return -1;
    const bit = this.nextClearBit(r[0], r[1]);
    return bit < 0 ? -1 : Math.max(bit * this.granularity, offset);
  }

  /** The next dirty run starting at or after `offset`, at most `maxBytes` long and ending before `end`. */
  nextDirtyArea(offset: number, end = this.size, maxBytes = Number.MAX_SAFE_INTEGER): { offset: number; bytes: number } | null {
    if (maxBytes <= 0) return null;
    end = Math.min(end, this.size);
    const start = this.nextDirty(offset, end);
    if (start < 0) return null;
    const limit = Math.min(end, start + maxBytes);
    const z = this.nextZero(start, limit);
    return { offset: start, bytes: (z < 0 ? limit : z) - start };
  }

  /**
   * OR `src` into this bitmap (block-dirty-bitmap-merge). Sizes must match; granularities may differ (a
   * source chunk marks every chunk of this bitmap it touches). Both bitmaps must not be busy.
   */
  merge(src: DirtyBitmap): void {
    this.checkMutable();
    src.checkMutable();
    if (src.size !== this.size) {
      throw new BlockError(
        'EINVAL',
        `Bitmaps are of different sizes (destination size is ${this.size}, source size is ${src.size}) and can't be merged`,
      );
    }
    if (src.granularity === this.granularity) {
      for (let w = 0; w < src.words.length; w++) {
        const v = src.words[w]!;
        if (v) this.orWord(w, v);
      }
      return;
    }
    for (let area = src.nextDirtyArea(0); area; area = src.nextDirtyArea(area.offset + area.bytes)) {
      this.set(area.offset, area.bytes);
    }
  }

  private orWord(w: number, v: number): void {
    const old = this.words[w]!;
    const nw = (old | v) >>> 0;
    if (nw !== old) {
      this.setBits += popcount32(nw) - popcount32(old);
      this.words[w] = nw;
      this.summary[wordOf(w)]! |= 1 << (w & 31);
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
