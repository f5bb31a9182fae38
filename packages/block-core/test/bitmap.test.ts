import { describe, expect, it } from 'vitest';
import { BlockError, DirtyBitmap } from '../src/index.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

function errorOf(fn: () => unknown): BlockError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    return e as BlockError;
  }
  throw new Error('expected a BlockError');
}

/** All dirty areas, walked with nextDirtyArea. */
function areas(bm: DirtyBitmap, start = 0, end = bm.byteSize, max?: number): [number, number][] {
  const out: [number, number][] = [];
  for (let a = bm.nextDirtyArea(start, end, max); a; a = bm.nextDirtyArea(a.offset + a.bytes, end, max)) {
    out.push([a.offset, a.bytes]);
    // an empty or out-of-range area would loop forever
    if (a.bytes <= 0 || a.offset < start || a.offset + a.bytes > end || out.length > 10_000) throw new Error(`bad area ${a.offset}+${a.bytes}`);
  }
  return out;
}

describe('DirtyBitmap: construction', () => {
  it('checks granularity and name with QEMU messages', () => {
    expect(errorOf(() => new DirtyBitmap(MiB, 256)).message).toBe('Granularity must be power of 2 and at least 512');
    expect(errorOf(() => new DirtyBitmap(MiB, 3 * 1024)).message).toBe('Granularity must be power of 2 and at least 512');
    expect(errorOf(() => new DirtyBitmap(MiB, 0)).code).toBe('EINVAL');
    expect(errorOf(() => new DirtyBitmap(MiB, 65536, { name: '' })).message).toBe('Bitmap name cannot be empty');
    expect(errorOf(() => new DirtyBitmap(MiB, 65536, { name: 'x'.repeat(1024) })).message).toBe('Bitmap name is too long');
    // the limit is 1023 bytes of UTF-8, not UTF-16 code units
    expect(errorOf(() => new DirtyBitmap(MiB, 65536, { name: 'é'.repeat(512) })).message).toBe('Bitmap name is too long');
    expect(new DirtyBitmap(MiB, 65536, { name: 'x'.repeat(1023) }).name).toHaveLength(1023);
    expect(new DirtyBitmap(MiB, 512).granularity).toBe(512);
    expect(new DirtyBitmap(MiB, 2 ** 31).granularity).toBe(2 ** 31);
  });

  it('starts clean, enabled unless asked otherwise', () => {
    const bm = new DirtyBitmap(10 * MiB, 64 * KiB, { name: 'b0', persistent: true });
    expect(bm.count()).toBe(0);
    expect(bm.isEmpty()).toBe(true);
    expect(bm.enabled).toBe(true);
    expect(bm.persistent).toBe(true);
    expect(bm.byteSize).toBe(10 * MiB);
    expect(bm.nextDirty(0)).toBe(-1);
    expect(bm.nextZero(0)).toBe(0);
    expect(new DirtyBitmap(MiB, 65536, { disabled: true }).enabled).toBe(false);
  });
});

describe('DirtyBitmap: set / reset / get / count', () => {
  it('set marks every chunk it touches', () => {
    const bm = new DirtyBitmap(MiB, 4096);
    bm.set(4095, 2); // touches chunks 0 and 1
    expect(bm.get(0)).toBe(true);
    expect(bm.get(4096)).toBe(true);
    expect(bm.get(8191)).toBe(true);
    expect(bm.get(8192)).toBe(false);
    expect(bm.count()).toBe(8192);
    bm.set(100_000, 1);
    expect(bm.get(98_304)).toBe(true); // chunk 24 = [98304, 102400)
    expect(bm.count()).toBe(3 * 4096);
    bm.set(0, 0); // empty range: nothing
    bm.set(2 * MiB, 4096); // past the end: nothing
    expect(bm.count()).toBe(3 * 4096);
  });

  it('reset clears only chunks it covers completely', () => {
    const bm = new DirtyBitmap(MiB, 4096);
    bm.set(0, MiB);
    expect(bm.count()).toBe(MiB);
    bm.reset(100, 8192); // covers chunk 1 only ([4096, 8192)); chunks 0 and 2 partially
    expect(bm.get(0)).toBe(true);
    expect(bm.get(4096)).toBe(false);
    expect(bm.get(8192)).toBe(true);
    expect(bm.count()).toBe(MiB - 4096);
    bm.reset(8192, 4095); // one byte short of a chunk: nothing
    expect(bm.get(8192)).toBe(true);
    bm.reset(0, MiB);
    expect(bm.count()).toBe(0);
    expect(bm.isEmpty()).toBe(true);
  });

  it('get outside the disk is clean', () => {
    const bm = new DirtyBitmap(MiB, 65536);
    bm.set(0, MiB);
    expect(bm.get(-1)).toBe(false);
    expect(bm.get(MiB)).toBe(false);
    expect(bm.get(MiB - 1)).toBe(true);
  });

  it('counts the partial last chunk clipped at the end of the disk', () => {
    const size = MiB + 512; // 17 chunks of 64 KiB, the last one holds 512 bytes
    const bm = new DirtyBitmap(size, 64 * KiB);
    bm.set(size - 1, 1);
    expect(bm.count()).toBe(512);
    expect(bm.nextDirty(0)).toBe(MiB);
    expect(bm.nextDirtyArea(0)).toEqual({ offset: MiB, bytes: 512 });
    bm.set(0, 1);
    expect(bm.count()).toBe(64 * KiB + 512);
    bm.set(0, size);
    expect(bm.count()).toBe(size);
    // a reset that reaches the end clears the partial chunk even though it is not 64 KiB long
    bm.reset(MiB, 512);
    expect(bm.get(MiB)).toBe(false);
    expect(bm.count()).toBe(MiB);
    // a reset that stops short of the end does not
    bm.set(MiB, 1);
    bm.reset(MiB, 511);
    expect(bm.get(MiB)).toBe(true);
  });

  it('clear drops everything', () => {
    const bm = new DirtyBitmap(GiB, 65536);
    bm.set(0, 1);
    bm.set(GiB - 1, 1);
    bm.set(500 * MiB, 3 * MiB);
    bm.clear();
    expect(bm.count()).toBe(0);
    expect(bm.nextDirty(0)).toBe(-1);
    expect(bm.nextZero(0)).toBe(0);
  });
});

describe('DirtyBitmap: searching', () => {
  it('nextDirty / nextZero respect offset and end', () => {
    const bm = new DirtyBitmap(MiB, 4096);
    bm.set(40960, 3 * 4096); // chunks 10, 11, 12
    expect(bm.nextDirty(0)).toBe(40960);
    expect(bm.nextDirty(40960)).toBe(40960);
    expect(bm.nextDirty(45000)).toBe(45000); // inside a dirty chunk: the offset itself
    expect(bm.nextDirty(53248)).toBe(-1);
    expect(bm.nextDirty(0, 40960)).toBe(-1); // end is exclusive
    expect(bm.nextDirty(0, 40961)).toBe(40960);
    expect(bm.nextDirty(50000, 40000)).toBe(-1); // empty range
    expect(bm.nextDirty(MiB)).toBe(-1);
    expect(bm.nextZero(40960)).toBe(53248);
    expect(bm.nextZero(45000)).toBe(53248);
    expect(bm.nextZero(0)).toBe(0);
    expect(bm.nextZero(100)).toBe(100);
    expect(bm.nextZero(40960, 53248)).toBe(-1);
    expect(bm.nextZero(40960, 53249)).toBe(53248);
    expect(bm.nextZero(MiB)).toBe(-1);
  });

  it('nextDirtyArea splits at maxBytes and stops at end', () => {
    const bm = new DirtyBitmap(MiB, 4096);
    bm.set(8192, 5 * 4096); // [8192, 28672)
    bm.set(65536, 4096); // [65536, 69632)
    expect(areas(bm)).toEqual([
      [8192, 20480],
      [65536, 4096],
    ]);
    expect(areas(bm, 0, MiB, 8192)).toEqual([
      [8192, 8192],
      [16384, 8192],
      [24576, 4096],
      [65536, 4096],
    ]);
    expect(areas(bm, 10000, 20000)).toEqual([[10000, 10000]]);
    expect(bm.nextDirtyArea(28672, 65536)).toBeNull();
    expect(bm.nextDirtyArea(0, MiB, 0)).toBeNull();
  });

  it('finds bits across word and summary-level boundaries of a 1 TiB bitmap', () => {
    const g = 64 * KiB;
    const bm = new DirtyBitmap(TiB, g); // 2^24 bits, 2^19 words, 2^14 summary words
    const chunks = [0, 31, 32, 63, 64, 1023, 1024, 1025, 32 * 32 * 7 - 1, 32 * 32 * 7, 5_000_000, 2 ** 24 - 33, 2 ** 24 - 1];
    for (const c of chunks) bm.set(c * g, 1);
    expect(bm.count()).toBe(chunks.length * g);
    const found: number[] = [];
    for (let off = bm.nextDirty(0); off >= 0; off = bm.nextDirty(off + g)) found.push(off / g);
    expect(found).toEqual(chunks);
    // nextZero next to dirty bits, across word boundaries
    expect(bm.nextZero(31 * g)).toBe(33 * g);
    expect(bm.nextZero(63 * g)).toBe(65 * g);
    expect(bm.nextZero(1023 * g)).toBe(1026 * g);
    expect(bm.nextZero((2 ** 24 - 1) * g)).toBe(-1);
    // a search limited below the next dirty bit finds nothing
    expect(bm.nextDirty(1026 * g, (32 * 32 * 7 - 1) * g)).toBe(-1);
    expect(bm.nextDirty(1026 * g, (32 * 32 * 7 - 1) * g + 1)).toBe((32 * 32 * 7 - 1) * g);
    expect(bm.nextDirtyArea(1022 * g)).toEqual({ offset: 1023 * g, bytes: 3 * g });
    expect(bm.nextDirtyArea((2 ** 24 - 2) * g)).toEqual({ offset: (2 ** 24 - 1) * g, bytes: g });
    // clearing one bit keeps the others reachable (summary bit stays for a non-empty word)
    bm.reset(32 * g, g);
    expect(bm.nextDirty(2 * g)).toBe(31 * g);
    expect(bm.nextDirty(32 * g)).toBe(63 * g);
    // clearing a whole word clears its summary bit
    bm.reset(5_000_000 * g, g);
    expect(bm.nextDirty((32 * 32 * 7 + 1) * g)).toBe((2 ** 24 - 33) * g);
  });

  it('walks a long dirty run across many words in one area', () => {
    const g = 512;
    const bm = new DirtyBitmap(64 * MiB, g);
    bm.set(1000 * g, 70_000 * g);
    expect(bm.nextDirtyArea(0)).toEqual({ offset: 1000 * g, bytes: 70_000 * g });
    expect(bm.nextZero(1000 * g)).toBe(71_000 * g);
    expect(bm.count()).toBe(70_000 * g);
  });

  it('handles a bitmap with more than 2^31 chunks', () => {
    // 2^31 + 64 bits of 512 bytes: bit indices past 2^31 must not overflow 32-bit shifts
    const g = 512;
    const size = (2 ** 31 + 64) * g;
    const bm = new DirtyBitmap(size, g);
    const hi = (2 ** 31 + 40) * g;
    bm.set(hi, 3 * g);
    expect(bm.get(hi)).toBe(true);
    expect(bm.get(hi - g)).toBe(false);
    expect(bm.count()).toBe(3 * g);
    expect(bm.nextDirty(0)).toBe(hi);
    expect(bm.nextDirtyArea(2 ** 31 * g)).toEqual({ offset: hi, bytes: 3 * g });
    expect(bm.nextZero(hi)).toBe(hi + 3 * g);
    bm.reset(hi, 3 * g);
    expect(bm.count()).toBe(0);
    expect(bm.nextDirty(0)).toBe(-1);
  });
});

describe('DirtyBitmap: merge', () => {
  it('ORs a bitmap of the same granularity', () => {
    const a = new DirtyBitmap(16 * MiB, 65536);
    const b = new DirtyBitmap(16 * MiB, 65536);
    a.set(0, 65536);
    b.set(65536, 65536);
    b.set(10 * MiB, 1);
    a.merge(b);
    expect(areas(a)).toEqual([
      [0, 131072],
      [10 * MiB, 65536],
    ]);
    expect(a.count()).toBe(3 * 65536);
    expect(b.count()).toBe(2 * 65536); // source unchanged
  });

  it('merges a finer source into a coarser bitmap: every touched chunk', () => {
    const coarse = new DirtyBitmap(MiB, 65536);
    const fine = new DirtyBitmap(MiB, 512);
    fine.set(65536 - 512, 1024); // straddles chunks 0 and 1 of the coarse bitmap
    fine.set(5 * 65536 + 1000, 1);
    coarse.merge(fine);
    expect(areas(coarse)).toEqual([
      [0, 131072],
      [5 * 65536, 65536],
    ]);
  });

  it('merges a coarser source into a finer bitmap, clipping the last chunk at the disk end', () => {
    const size = MiB + 4096;
    const coarse = new DirtyBitmap(size, 65536);
    const fine = new DirtyBitmap(size, 4096);
    coarse.set(65536, 1);
    coarse.set(size - 1, 1);
    fine.merge(coarse);
    expect(areas(fine)).toEqual([
      [65536, 65536],
      [MiB, 4096],
    ]);
    expect(fine.count()).toBe(65536 + 4096);
  });

  it('refuses different sizes and busy bitmaps with QEMU messages', () => {
    const a = new DirtyBitmap(MiB, 65536, { name: 'a' });
    const b = new DirtyBitmap(2 * MiB, 65536, { name: 'b' });
    expect(errorOf(() => a.merge(b)).message).toBe(
      "Bitmaps are of different sizes (destination size is 1048576, source size is 2097152) and can't be merged",
    );
    const c = new DirtyBitmap(MiB, 65536, { name: 'c' });
    c.set(0, 1);
    a.busy = true;
    expect(errorOf(() => a.merge(c)).message).toBe("Bitmap 'a' is currently in use by another operation and cannot be used");
    a.busy = false;
    c.busy = true;
    expect(errorOf(() => a.merge(c)).message).toBe("Bitmap 'c' is currently in use by another operation and cannot be used");
    expect(a.count()).toBe(0);
  });
});

describe('DirtyBitmap: resize', () => {
  it('grows keeping bits; the new part is clean', () => {
    const bm = new DirtyBitmap(MiB + 512, 65536);
    bm.set(0, 1);
    bm.set(MiB, 512); // the partial last chunk
    bm.resize(4 * MiB);
    expect(bm.byteSize).toBe(4 * MiB);
    expect(bm.get(0)).toBe(true);
    expect(bm.get(MiB)).toBe(true);
    // the formerly partial chunk is a whole chunk now
    expect(bm.count()).toBe(2 * 65536);
    expect(bm.nextDirty(MiB + 65536)).toBe(-1);
    bm.set(4 * MiB - 1, 1);
    expect(bm.nextDirty(MiB + 65536)).toBe(4 * MiB - 65536);
  });

  it('shrinks dropping bits past the new end, keeping the rest', () => {
    const bm = new DirtyBitmap(8 * MiB, 4096);
    bm.set(0, 8 * MiB);
    bm.resize(MiB + 100);
    expect(bm.byteSize).toBe(MiB + 100);
    expect(bm.count()).toBe(MiB + 100);
    expect(bm.get(MiB)).toBe(true);
    expect(bm.get(MiB + 4096)).toBe(false);
    expect(areas(bm)).toEqual([[0, MiB + 100]]);
    // growing again does not resurrect dropped bits
    bm.resize(8 * MiB);
    expect(bm.count()).toBe(MiB + 4096);
    expect(areas(bm)).toEqual([[0, MiB + 4096]]);
  });

  it('shrinks inside a word and across the summary level', () => {
    const g = 512;
    const bm = new DirtyBitmap(4096 * g, g); // 4096 bits = 128 words = 4 summary words
    bm.set(10 * g, 1);
    bm.set(3000 * g, 1);
    bm.set(4095 * g, 1);
    bm.resize(3001 * g); // keeps bit 3000, drops 4095
    expect(bm.count()).toBe(2 * g);
    expect(bm.nextDirty(11 * g)).toBe(3000 * g);
    bm.resize(2999 * g);
    expect(bm.count()).toBe(g);
    expect(bm.nextDirty(11 * g)).toBe(-1);
    bm.resize(0);
    expect(bm.count()).toBe(0);
    expect(bm.nextDirty(0)).toBe(-1);
    expect(bm.nextZero(0)).toBe(-1);
  });
});

describe('DirtyBitmap: busy and enabled', () => {
  it('refuses user changes while busy; internal marking still works', () => {
    const bm = new DirtyBitmap(MiB, 65536, { name: 'bm0' });
    bm.busy = true;
    const msg = "Bitmap 'bm0' is currently in use by another operation and cannot be used";
    for (const fn of [() => bm.userSet(0, 1), () => bm.userReset(0, MiB), () => bm.userClear(), () => bm.enable(), () => bm.disable()]) {
      const e = errorOf(fn);
      expect(e.code).toBe('EBUSY');
      expect(e.message).toBe(msg);
    }
    expect(bm.count()).toBe(0);
    expect(bm.enabled).toBe(true);
    bm.set(0, 1); // the job owning it (and the write path) may still change it
    expect(bm.count()).toBe(65536);
    bm.busy = false;
    bm.userReset(0, 65536);
    expect(bm.count()).toBe(0);
    bm.userSet(65536, 1);
    expect(bm.count()).toBe(65536);
    bm.userClear();
    expect(bm.count()).toBe(0);
  });

  it('enable / disable toggle the flag', () => {
    const bm = new DirtyBitmap(MiB, 65536);
    bm.disable();
    expect(bm.enabled).toBe(false);
    bm.set(0, 1); // explicit set still works on a disabled bitmap
    expect(bm.count()).toBe(65536);
    bm.enable();
    expect(bm.enabled).toBe(true);
  });
});

/** mulberry32: a small seeded PRNG so failures replay. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The reference model: one boolean per chunk, written the slow obvious way. */
class Model {
  bits: boolean[];
  constructor(
    public size: number,
    public g: number,
  ) {
    this.bits = new Array<boolean>(Math.ceil(size / g)).fill(false);
  }
  set(off: number, n: number): void {
    if (n <= 0) return;
    for (let c = Math.floor(off / this.g); c * this.g < off + n && c < this.bits.length; c++) this.bits[c] = true;
  }
  reset(off: number, n: number): void {
    if (n <= 0) return;
    const end = off + n;
    for (let c = 0; c < this.bits.length; c++) {
      const cs = c * this.g;
      const ce = Math.min(cs + this.g, this.size);
      if (cs >= off && (ce <= end || end >= this.size)) this.bits[c] = false;
    }
  }
  resize(size: number): void {
    const n = Math.ceil(size / this.g);
    const nb = new Array<boolean>(n).fill(false);
    for (let c = 0; c < Math.min(n, this.bits.length); c++) nb[c] = this.bits[c]!;
    this.bits = nb;
    this.size = size;
  }
  count(): number {
    let n = 0;
    for (let c = 0; c < this.bits.length; c++) if (this.bits[c]) n += Math.min(this.g, this.size - c * this.g);
    return n;
  }
  /** First byte in [off, end) whose chunk has the value `v`, chunk by chunk. */
  private find(off: number, end: number, v: boolean): number {
    end = Math.min(end, this.size);
    off = Math.max(0, off);
    if (off >= end) return -1;
    for (let c = Math.floor(off / this.g); c * this.g < end; c++) if (this.bits[c] === v) return Math.max(off, c * this.g);
    return -1;
  }
  nextDirty(off: number, end: number): number {
    return this.find(off, end, true);
  }
  nextZero(off: number, end: number): number {
    return this.find(off, end, false);
  }
}

describe('DirtyBitmap: randomized against a boolean-array model', () => {
  for (const [seed, g, chunks] of [
    [1, 512, 700],
    [2, 512, 70],
    [3, 4096, 1100],
    [4, 65536, 33],
    [5, 512, 5000], // several summary words
    [6, 1024, 3333],
  ] as const) {
    it(`seed ${seed}, granularity ${g}, ~${chunks} chunks`, () => {
      const rnd = prng(seed);
      const ri = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));
      let size = chunks * g - (seed % 2 ? 0 : ri(1, g - 1)); // odd seeds aligned, even seeds with a partial last chunk
      const bm = new DirtyBitmap(size, g);
      const m = new Model(size, g);
      for (let op = 0; op < 3000; op++) {
        const r = rnd();
        // offsets at byte level in a slightly larger range than the disk
        const off = ri(0, size + g);
        const len = rnd() < 0.3 ? ri(0, 3 * g) : ri(0, Math.floor(size / 3));
        if (r < 0.35) {
          bm.set(off, len);
          m.set(off, len);
        } else if (r < 0.65) {
          bm.reset(off, len);
          m.reset(off, len);
        } else if (r < 0.7) {
          const ns = Math.max(0, size + ri(-Math.floor(size / 2), Math.floor(size / 2)));
          bm.resize(ns);
          m.resize(ns);
          size = ns;
        } else if (r < 0.73) {
          // merge a random bitmap of the same size (same or coarser/finer granularity)
          const og = [g, g * 2, Math.max(512, g / 2)][ri(0, 2)]!;
          const src = new DirtyBitmap(size, og);
          const sm = new Model(size, og);
          for (let k = 0; k < 3; k++) {
            const o = ri(0, size);
            const l = ri(0, 4 * og);
            src.set(o, l);
            sm.set(o, l);
          }
          bm.merge(src);
          // expected: every chunk of ours that overlaps a dirty source chunk (clipped to the disk)
          for (let c = 0; c < sm.bits.length; c++) if (sm.bits[c]) m.set(c * og, Math.min(og, size - c * og));
        } else {
          // queries
          const end = rnd() < 0.5 ? size : ri(0, size + g);
          expect(bm.nextDirty(off, end)).toBe(m.nextDirty(off, end));
          expect(bm.nextZero(off, end)).toBe(m.nextZero(off, end));
          const max = rnd() < 0.5 ? Number.MAX_SAFE_INTEGER : ri(1, 5 * g);
          const a = bm.nextDirtyArea(off, end, max);
          const ds = m.nextDirty(off, end);
          if (ds < 0) expect(a).toBeNull();
          else {
            const lim = Math.min(Math.min(end, size), ds + max);
            const z = m.nextZero(ds, lim);
            expect(a).toEqual({ offset: ds, bytes: (z < 0 ? lim : z) - ds });
          }
          const probe = ri(0, size + g);
          expect(bm.get(probe)).toBe(probe < size ? m.bits[Math.floor(probe / g)] : false);
        }
        expect(bm.count()).toBe(m.count());
        expect(bm.byteSize).toBe(size);
      }
      // full sweep at the end
      for (let c = 0; c < m.bits.length; c++) expect(bm.get(c * g)).toBe(m.bits[c]);
    });
  }
});
