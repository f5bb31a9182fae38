/**
 * An in-memory model of a block device's content that knows what the block layer guarantees and what it does
 * not. Each byte has one definite value, or a small set of candidates when the semantics allow several outcomes:
 *
 * - an advisory discard leaves each byte either as it was or zero (`maybeZero`);
 * - overlapping writes in flight at the same time leave each byte equal to one of the writes (`concurrentWrites`);
 * - a read racing a write sees, per byte, the old or the new data (`maybe` on a clone).
 *
 * `check()` compares what the device returned with the model; bytes that had several candidates are then settled
 * to what the device actually holds, so later checks are exact again.
 */
export interface ModelMismatch {
  /** Device offset of the first byte that matches no candidate. */
  offset: number;
  actual: number;
  /** The values the model allowed there. */
  expected: number[];
  /** Number of mismatching bytes in the checked range. */
  count: number;
  /** Device offset of the last mismatching byte. */
  lastOffset: number;
}

export interface ModelWrite {
  offset: number;
  /** The bytes written; a zero write is a zero-filled buffer (or use `zero: bytes`). */
  data?: Uint8Array;
  /** Length of a zero write (instead of `data`). */
  zero?: number;
}

function hex(v: number): string {
  return '0x' + v.toString(16).padStart(2, '0');
}

export function describeMismatch(m: ModelMismatch): string {
  const exp = m.expected.map(hex).join(' or ');
  const more = m.count > 1 ? ` (${m.count} bytes differ in all, the last at offset ${m.lastOffset})` : '';
  return `byte at offset ${m.offset}: expected ${exp}, got ${hex(m.actual)}${more}`;
}

export class ByteModel {
  private buf: Uint8Array;
  private len: number;
  /** Per byte: 1 if zero is also a valid value. Allocated on first use. */
  private altZero: Uint8Array | null = null;
  /** Per byte: further candidate values besides `buf[i]` (and zero when flagged in altZero). */
  private alts = new Map<number, number[]>();
  /** Number of bytes that may currently have more than one value. */
  private uncertain = 0;

  constructor(size: number, initial?: Uint8Array) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`ByteModel: invalid size ${size}`);
    this.buf = new Uint8Array(size);
    this.len = size;
    if (initial) this.buf.set(initial.subarray(0, size));
  }

  get size(): number {
    return this.len;
  }

  /** True if some byte may currently have more than one value. */
  get hasUncertainty(): boolean {
    return this.uncertain > 0;
  }

  clone(): ByteModel {
    const m = new ByteModel(this.len, this.buf.subarray(0, this.len));
    if (this.altZero) m.altZero = this.altZero.slice();
    for (const [k, v] of this.alts) m.alts.set(k, [...v]);
    m.uncertain = this.uncertain;
    return m;
  }

  private checkRange(offset: number, bytes: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset < 0 || bytes < 0 || offset + bytes > this.len) {
      throw new RangeError(`ByteModel: range [${offset}, +${bytes}) outside [0, ${this.len})`);
    }
  }

  private isUncertain(i: number): boolean {
    return (this.altZero !== null && this.altZero[i] === 1) || this.alts.has(i);
  }

  private clearAlts(offset: number, bytes: number): void {
    if (this.uncertain === 0) return;
    const az = this.altZero;
    for (let i = offset; i < offset + bytes; i++) {
      const z = az !== null && az[i] === 1;
      const a = this.alts.delete(i);
      if (z) az[i] = 0;
      if (z || a) this.uncertain--;
    }
  }

  private addCandidate(i: number, v: number): void {
    if (this.buf[i] === v) return;
    const was = this.isUncertain(i);
    if (v === 0) {
      this.altZero ??= new Uint8Array(this.buf.length);
      this.altZero[i] = 1;
    } else {
      const a = this.alts.get(i);
      if (!a) this.alts.set(i, [v]);
      else if (!a.includes(v)) a.push(v);
    }
    if (!was) this.uncertain++;
  }

  /** A write: the range now holds exactly `data`. */
  write(offset: number, data: Uint8Array): void {
    this.checkRange(offset, data.byteLength);
    this.clearAlts(offset, data.byteLength);
    this.buf.set(data, offset);
  }

  fill(offset: number, bytes: number, value: number): void {
    this.checkRange(offset, bytes);
    this.clearAlts(offset, bytes);
    this.buf.fill(value, offset, offset + bytes);
  }

  /** A zero write, or a discard that is guaranteed to read back as zeroes. */
  zero(offset: number, bytes: number): void {
    this.fill(offset, bytes, 0);
  }

  /** Each byte in the range may (also) be zero from now on — an advisory discard. */
  maybeZero(offset: number, bytes: number): void {
    this.checkRange(offset, bytes);
    for (let i = offset; i < offset + bytes; i++) this.addCandidate(i, 0);
  }

  /** Each byte in the range may (also) hold the corresponding byte of `alt` (a number: that value everywhere). */
  maybe(offset: number, alt: Uint8Array | number, bytes?: number): void {
    const n = typeof alt === 'number' ? (bytes ?? 0) : alt.byteLength;
    this.checkRange(offset, n);
    for (let i = 0; i < n; i++) this.addCandidate(offset + i, typeof alt === 'number' ? alt : alt[i]!);
  }

  /**
   * Writes that were all in flight at once and have all completed: each byte covered by at least one of them
   * equals the value of one of the writes that cover it (which one is not specified); other bytes are unchanged.
   */
  concurrentWrites(ops: readonly ModelWrite[]): void {
    const touched = new Uint8Array(this.len);
    for (const op of ops) {
      const n = op.data ? op.data.byteLength : (op.zero ?? 0);
      this.checkRange(op.offset, n);
      for (let j = 0; j < n; j++) {
        const i = op.offset + j;
        const v = op.data ? op.data[j]! : 0;
        if (!touched[i]) {
          touched[i] = 1;
          this.clearAlts(i, 1);
          this.buf[i] = v;
        } else {
          this.addCandidate(i, v);
        }
      }
    }
  }

  /** The device grew or shrank; a grown area reads as zeroes. */
  resize(newSize: number): void {
    if (!Number.isSafeInteger(newSize) || newSize < 0) throw new RangeError(`ByteModel: invalid size ${newSize}`);
    if (newSize < this.len) this.clearAlts(newSize, this.len - newSize);
    if (newSize > this.buf.length) {
      const n = new Uint8Array(Math.max(newSize, this.buf.length * 2));
      n.set(this.buf.subarray(0, this.len));
      this.buf = n;
      if (this.altZero) {
        const z = new Uint8Array(n.length);
        z.set(this.altZero.subarray(0, this.len));
        this.altZero = z;
      }
    } else if (newSize > this.len) {
      this.buf.fill(0, this.len, newSize);
    }
    this.len = newSize;
  }

  /** The model's preferred value for each byte (the definite value, or the first candidate). */
  expected(offset: number, bytes: number): Uint8Array {
    this.checkRange(offset, bytes);
    return this.buf.slice(offset, offset + bytes);
  }

  /** Every value byte `offset` may hold. */
  candidates(offset: number): number[] {
    this.checkRange(offset, 1);
    const out = [this.buf[offset]!];
    if (this.altZero?.[offset] && out[0] !== 0) out.push(0);
    for (const v of this.alts.get(offset) ?? []) if (!out.includes(v)) out.push(v);
    return out;
  }

  /** True if every byte of the range can only be zero. */
  isZero(offset: number, bytes: number): boolean {
    this.checkRange(offset, bytes);
    for (let i = offset; i < offset + bytes; i++) {
      if (this.buf[i] !== 0 || this.alts.has(i)) return false;
    }
    return true;
  }

  /**
   * Compare `actual` (read from the device at `offset`) with the model. Returns null when every byte matches one
   * of its candidates; bytes with several candidates are then settled to the actual value (unless `settle` is
   * false). On a mismatch nothing changes.
   */
  check(offset: number, actual: Uint8Array, settle = true): ModelMismatch | null {
    const n = actual.byteLength;
    this.checkRange(offset, n);
    let mismatch: ModelMismatch | null = null;
    const buf = this.buf;
    if (this.uncertain === 0) {
      for (let j = 0; j < n; j++) {
        const a = actual[j]!;
        if (a === buf[offset + j]) continue;
        if (!mismatch) mismatch = { offset: offset + j, actual: a, expected: [buf[offset + j]!], count: 0, lastOffset: offset + j };
        mismatch.count++;
        mismatch.lastOffset = offset + j;
      }
      return mismatch;
    }
    const az = this.altZero;
    for (let j = 0; j < n; j++) {
      const i = offset + j;
      const a = actual[j]!;
      if (a === buf[i]) continue;
      if (a === 0 && az?.[i]) continue;
      const alt = this.alts.get(i);
      if (alt?.includes(a)) continue;
      if (!mismatch) mismatch = { offset: i, actual: a, expected: this.candidates(i), count: 0, lastOffset: i };
      mismatch.count++;
      mismatch.lastOffset = i;
    }
    if (!mismatch && settle) this.write(offset, actual);
    return mismatch;
  }
}
