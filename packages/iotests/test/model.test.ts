import { describe, expect, it } from 'vitest';
import { ByteModel, ConformanceError, describeMismatch, deriveSeed, formatSeed, within, xorshift } from '../src/index.js';

describe('xorshift', () => {
  it('is deterministic per seed and differs between seeds', () => {
    const a = xorshift(42);
    const b = xorshift(42);
    const c = xorshift(43);
    const sa = Array.from({ length: 8 }, () => a.next());
    expect(Array.from({ length: 8 }, () => b.next())).toEqual(sa);
    expect(Array.from({ length: 8 }, () => c.next())).not.toEqual(sa);
    expect(xorshift(0).next()).not.toBe(0);
  });

  it('draws in range and fills bytes reproducibly', () => {
    const r = xorshift(7);
    for (let i = 0; i < 1000; i++) {
      const v = r.range(-3, 3);
      expect(v).toBeGreaterThanOrEqual(-3);
      expect(v).toBeLessThanOrEqual(3);
      const f = r.float();
      expect(f).toBeGreaterThanOrEqual(0);
      expect(f).toBeLessThan(1);
      expect(r.int(2 ** 40)).toBeLessThan(2 ** 40);
    }
    expect(xorshift(9).bytes(13)).toEqual(xorshift(9).bytes(13));
    expect(xorshift(9).fork('a').next()).toBe(xorshift(9).fork('a').next());
    expect(xorshift(9).fork('a').next()).not.toBe(xorshift(9).fork('b').next());
    expect(deriveSeed(1, 'x')).toBe(deriveSeed(1, 'x'));
    expect(formatSeed(255)).toBe('0x000000ff');
  });
});

describe('ByteModel', () => {
  it('tracks writes, zeroes and resizes exactly', () => {
    const m = new ByteModel(16);
    m.write(2, new Uint8Array([1, 2, 3]));
    m.fill(10, 2, 9);
    expect([...m.expected(0, 16)]).toEqual([0, 0, 1, 2, 3, 0, 0, 0, 0, 0, 9, 9, 0, 0, 0, 0]);
    m.zero(3, 1);
    expect(m.check(0, new Uint8Array([0, 0, 1, 0, 3, 0, 0, 0, 0, 0, 9, 9, 0, 0, 0, 0]))).toBeNull();
    const bad = m.check(0, new Uint8Array(16));
    expect(bad).toMatchObject({ offset: 2, actual: 0, expected: [1], count: 4, lastOffset: 11 });
    expect(describeMismatch(bad!)).toContain('byte at offset 2: expected 0x01, got 0x00 (4 bytes differ');
    m.resize(4);
    m.resize(8);
    expect([...m.expected(0, 8)]).toEqual([0, 0, 1, 0, 0, 0, 0, 0]);
    expect(() => m.write(7, new Uint8Array(2))).toThrow(RangeError);
  });

  it('allows old-or-zero after an advisory discard and settles on the first read', () => {
    const m = new ByteModel(8);
    m.write(0, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
    m.maybeZero(2, 4);
    expect(m.hasUncertainty).toBe(true);
    expect(m.candidates(3)).toEqual([4, 0]);
    expect(m.check(0, new Uint8Array([1, 2, 0, 4, 0, 6, 7, 8]))).toBeNull();
    expect(m.hasUncertainty).toBe(false);
    // Settled: byte 2 is now exactly 0, byte 3 exactly 4.
    expect(m.check(2, new Uint8Array([3]))).not.toBeNull();
    expect(m.check(3, new Uint8Array([0]))).not.toBeNull();
    // Garbage is never allowed.
    m.maybeZero(0, 8);
    expect(m.check(0, new Uint8Array([1, 2, 0, 4, 0, 6, 7, 0x55]))).toMatchObject({ offset: 7, expected: [8, 0] });
  });

  it('concurrent writes: each byte equals one of the writes covering it, never the old value', () => {
    const m = new ByteModel(8);
    m.fill(0, 8, 0xee);
    m.concurrentWrites([
      { offset: 0, data: new Uint8Array([1, 1, 1, 1]) },
      { offset: 2, data: new Uint8Array([2, 2, 2, 2]) },
      { offset: 3, zero: 2 },
    ]);
    expect(m.candidates(0)).toEqual([1]);
    expect(m.candidates(2).sort()).toEqual([1, 2]);
    expect(m.candidates(3).sort()).toEqual([0, 1, 2]);
    expect(m.candidates(6)).toEqual([0xee]);
    expect(m.check(0, new Uint8Array([1, 1, 2, 0, 2, 2, 0xee, 0xee]), false)).toBeNull();
    expect(m.check(0, new Uint8Array([1, 1, 1, 1, 0, 2, 0xee, 0xee]), false)).toBeNull();
    expect(m.check(0, new Uint8Array([1, 1, 0xee, 1, 2, 2, 0xee, 0xee]), false)).toMatchObject({ offset: 2 });
    const c = m.clone();
    expect(c.check(3, new Uint8Array([2]))).toBeNull();
    expect(c.candidates(3)).toEqual([2]);
    expect(m.candidates(3).length).toBe(3);
  });
});

describe('within', () => {
  it('passes results through and reports a hang', async () => {
    await expect(within(1000, Promise.resolve(5), 'x')).resolves.toBe(5);
    const never = new Promise<never>(() => undefined);
    await expect(within(20, never, 'closing')).rejects.toThrow(ConformanceError);
    await expect(within(20, never, 'closing')).rejects.toThrow(/closing did not settle within 20 ms/);
  });
});
