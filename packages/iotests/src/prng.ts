/**
 * A small seeded PRNG (xorshift32, seeded through a splitmix32 step so that nearby seeds diverge at once).
 * Every randomized check in the suite draws from one of these, and every failure message prints the seed, so a
 * failure reproduces by running again with the same seed.
 */
export interface Prng {
  /** The seed this generator started from (unsigned 32-bit). */
  readonly seed: number;
  /** Next unsigned 32-bit value. */
  next(): number;
  /** Uniform float in [0, 1). */
  float(): number;
  /** Uniform integer in [0, maxExclusive); maxExclusive ≤ 2^53. */
  int(maxExclusive: number): number;
  /** Uniform integer in [min, maxInclusive]. */
  range(min: number, maxInclusive: number): number;
  /** True with probability `p`. */
  bool(p?: number): boolean;
  pick<T>(items: readonly T[]): T;
  /** Fill `buf` with random bytes and return it. */
  fill(buf: Uint8Array): Uint8Array;
  /** `n` random bytes. */
  bytes(n: number): Uint8Array;
  /** An independent generator derived from this one's seed and `label` (stable across runs). */
  fork(label: string): Prng;
}

/** splitmix32 finaliser: spreads any 32-bit input over the whole state space. */
function mix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** FNV-1a over a string, 32-bit. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Derive a seed from a base seed and a label (a test name): stable, well spread. */
export function deriveSeed(base: number, label: string): number {
  return mix32((base >>> 0) ^ hashString(label)) >>> 0;
}

/** Hex form used in messages: `0x0badf00d`. */
export function formatSeed(seed: number): string {
  return '0x' + (seed >>> 0).toString(16).padStart(8, '0');
}

class Xorshift32 implements Prng {
  private state: number;

  constructor(readonly seed: number) {
    this.seed = seed >>> 0;
    this.state = mix32(this.seed) || 0x6d2b79f5;
  }

  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }

  float(): number {
    // 53 bits from two draws.
    return ((this.next() >>> 5) * 67108864 + (this.next() >>> 6)) / 9007199254740992;
  }

  int(maxExclusive: number): number {
    if (!(maxExclusive > 0)) throw new RangeError(`Prng.int: bound must be > 0, got ${maxExclusive}`);
    if (maxExclusive <= 0x100000000) return Math.floor((this.next() / 0x100000000) * maxExclusive);
    return Math.floor(this.float() * maxExclusive);
  }

  range(min: number, maxInclusive: number): number {
    if (maxInclusive < min) throw new RangeError(`Prng.range: empty range [${min}, ${maxInclusive}]`);
    return min + this.int(maxInclusive - min + 1);
  }

  bool(p = 0.5): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('Prng.pick: no items');
    return items[this.int(items.length)]!;
  }

  fill(buf: Uint8Array): Uint8Array {
    let i = 0;
    for (; i + 4 <= buf.length; i += 4) {
      const v = this.next();
      buf[i] = v;
      buf[i + 1] = v >>> 8;
      buf[i + 2] = v >>> 16;
      buf[i + 3] = v >>> 24;
    }
    if (i < buf.length) {
      let v = this.next();
      for (; i < buf.length; i++, v >>>= 8) buf[i] = v;
    }
    return buf;
  }

  bytes(n: number): Uint8Array {
    return this.fill(new Uint8Array(n));
  }

  fork(label: string): Prng {
    return new Xorshift32(deriveSeed(this.seed, label));
  }
}

/** A seeded xorshift32 generator. The same seed always yields the same sequence. */
export function xorshift(seed: number): Prng {
  return new Xorshift32(seed);
}
