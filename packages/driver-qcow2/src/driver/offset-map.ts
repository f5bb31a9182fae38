/**
 * A hash map from image-file offsets (non-negative integers below 2^53) to values, for the metadata caches' lookup
 * of a table by its offset. Open addressing with linear probing and backward-shift deletion, in preallocated
 * arrays: inserting and deleting allocate nothing.
 *
 * Why not a Map: a cache that misses on every request (a small l2-cache-size over a large disk) sets and deletes a
 * key per request, and the Map rebuilds its hash table every few dozen of those. Under a high request rate the
 * discarded tables outlived minor GCs and filled the old generation (measured with the sampling heap profiler:
 * 5.4 MiB of them over 100000 random reads).
 */

const EMPTY = -1;
const TWO_POW_32 = 4294967296;
const MIN_CAPACITY = 16;

export class OffsetMap<V> {
  private keys: Float64Array;
  private values: (V | undefined)[];
  /** 32 - log2(capacity): the hash keeps the top bits of a multiplicative mix (offsets are aligned, low bits 0). */
  private shift: number;
  size = 0;

  constructor(expected = 0) {
    let capacity = MIN_CAPACITY;
    while (capacity < expected * 2) capacity *= 2;
    this.keys = new Float64Array(capacity).fill(EMPTY);
    this.values = new Array<V | undefined>(capacity).fill(undefined);
    this.shift = 32 - Math.log2(capacity);
  }

  private home(key: number): number {
    const x = (key >>> 0) ^ Math.imul(Math.floor(key / TWO_POW_32), 0x85ebca6b);
    return Math.imul(x ^ (x >>> 15), 0x9e3779b1) >>> this.shift;
  }

  private find(key: number): number {
    const mask = this.keys.length - 1;
    for (let i = this.home(key); ; i = (i + 1) & mask) {
      const k = this.keys[i]!;
      if (k === key) return i;
      if (k === EMPTY) return -1;
    }
  }

  get(key: number): V | undefined {
    const i = this.find(key);
    return i < 0 ? undefined : this.values[i];
  }

  has(key: number): boolean {
    return this.find(key) >= 0;
  }

  set(key: number, value: V): void {
    if (!(key >= 0 && Number.isSafeInteger(key))) throw new RangeError(`OffsetMap: invalid key ${key}`);
    if ((this.size + 1) * 2 > this.keys.length) this.grow();
    const mask = this.keys.length - 1;
    let i = this.home(key);
    while (this.keys[i] !== EMPTY && this.keys[i] !== key) i = (i + 1) & mask;
    if (this.keys[i] === EMPTY) this.size++;
    this.keys[i] = key;
    this.values[i] = value;
  }

  delete(key: number): boolean {
    let i = this.find(key);
    if (i < 0) return false;
    const mask = this.keys.length - 1;
    // Backward shift: move later members of the probe run into the hole, so lookups never need tombstones.
    for (let j = (i + 1) & mask; this.keys[j] !== EMPTY; j = (j + 1) & mask) {
      const h = this.home(this.keys[j]!);
      const between = i <= j ? h > i && h <= j : h > i || h <= j;
      if (between) continue;
      this.keys[i] = this.keys[j]!;
      this.values[i] = this.values[j];
      i = j;
    }
    this.keys[i] = EMPTY;
    this.values[i] = undefined;
    this.size--;
    return true;
  }

  *entries(): IterableIterator<[number, V]> {
    const keys = this.keys;
    const values = this.values;
    for (let i = 0; i < keys.length; i++) if (keys[i] !== EMPTY) yield [keys[i]!, values[i]!];
  }

  private grow(): void {
    const oldKeys = this.keys;
    const oldValues = this.values;
    this.keys = new Float64Array(oldKeys.length * 2).fill(EMPTY);
    this.values = new Array<V | undefined>(oldKeys.length * 2).fill(undefined);
    this.shift--;
    this.size = 0;
    for (let i = 0; i < oldKeys.length; i++) if (oldKeys[i] !== EMPTY) this.set(oldKeys[i]!, oldValues[i]!);
  }
}
