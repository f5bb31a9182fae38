import { describe, expect, it } from 'vitest';
import { isZeroBuffer } from '../src/index.js';

describe('isZeroBuffer', () => {
  it('looks at every byte: word-aligned or not, in the words and in the tail', () => {
    const b = new Uint8Array(4096 + 7);
    expect(isZeroBuffer(b)).toBe(true);
    for (const at of [0, 63, 64, 4095, 4096, 4102]) {
      b[at] = 1;
      expect(isZeroBuffer(b), `byte ${at}`).toBe(false);
      expect(isZeroBuffer(b.subarray(1)), `byte ${at}, unaligned view`).toBe(at === 0);
      b[at] = 0;
    }
  });

  it('a buffer of 2 GiB or more: the word count times four does not overflow into a negative tail index', () => {
    // Untouched pages of a fresh buffer map the kernel's zero page: this costs address space, not memory.
    const b = new Uint8Array(2 ** 31 + 8);
    expect(isZeroBuffer(b)).toBe(true);
    b[2 ** 31 + 5] = 1;
    expect(isZeroBuffer(b)).toBe(false);
  });
});
