import { describe, expect, it } from 'vitest';
import { OffsetMap } from '../../src/driver/offset-map.js';
import { prng } from './helpers-prng.js';

describe('OffsetMap', () => {
  it('behaves like a Map under random sets, gets and deletes of aligned offsets (growth and wrap-around included)', () => {
    for (const seed of [1, 2, 3, 4]) {
      const rnd = prng(seed);
      const ours = new OffsetMap<number>();
      const ref = new Map<number, number>();
      // Few distinct keys, spread up to 2^52 and aligned as tables are: long probe runs and wrap-around.
      const keys = Array.from({ length: 200 }, (_, i) => (i % 3 === 0 ? i * 65536 : Math.floor(rnd() * 2 ** 43) * 512));
      for (let step = 0; step < 20000; step++) {
        const k = keys[Math.floor(rnd() * keys.length)]!;
        const op = rnd();
        if (op < 0.45) {
          ours.set(k, step);
          ref.set(k, step);
        } else if (op < 0.8) {
          expect(ours.delete(k)).toBe(ref.delete(k));
        } else {
          expect(ours.get(k)).toBe(ref.get(k));
          expect(ours.has(k)).toBe(ref.has(k));
        }
        expect(ours.size).toBe(ref.size);
      }
      for (const k of keys) expect(ours.get(k)).toBe(ref.get(k));
      expect(new Map(ours.entries())).toEqual(ref);
    }
  });

  it('refuses keys that are not offsets', () => {
    const m = new OffsetMap<string>();
    expect(() => m.set(-512, 'x')).toThrow(RangeError);
    expect(() => m.set(0.5, 'x')).toThrow(RangeError);
    expect(() => m.set(2 ** 53, 'x')).toThrow(RangeError);
    m.set(2 ** 53 - 1, 'max');
    expect(m.get(2 ** 53 - 1)).toBe('max');
    expect(m.get(0)).toBeUndefined();
  });
});
