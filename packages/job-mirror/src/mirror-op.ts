import { WaitQueue, allocAlignedBuffer } from '@blockgraph/block-core';

export type MirrorMethod = 'copy' | 'zero' | 'discard';

/**
 * One mirror operation: a background copy/zero/discard, an active (guest) write, a copy-on-read write-back, or
 * the pseudo operation an iteration holds while it launches its real operations. Writers whose range overlaps an
 * operation wait on it.
 */
export class MirrorOp {
  /** This op waits for another; an op that waits is never waited on (deadlock avoidance, QEMU's waiting_for_op). */
  waitingFor: MirrorOp | null = null;
  readonly done = new WaitQueue();
  /** Buffers (granularity-sized chunks) a copy holds while in flight. */
  chunks: Uint8Array[] = [];

  constructor(
    public offset: number,
    public bytes: number,
    readonly method: MirrorMethod,
    readonly kind: 'background' | 'active' | 'pseudo',
  ) {}
}

/**
 * In-flight chunks, counted per chunk (QEMU keeps one bit; a count stays exact when two operations that both
 * proceeded past each other cover the same chunk).
 */
export class InFlightChunks {
  private readonly counts: Uint16Array;

  constructor(
    readonly granularity: number,
    length: number,
  ) {
    this.counts = new Uint16Array(Math.max(1, Math.ceil(length / granularity)));
  }

  private range(offset: number, bytes: number): [number, number] {
    return [Math.floor(offset / this.granularity), Math.min(this.counts.length, Math.ceil((offset + bytes) / this.granularity))];
  }

  add(offset: number, bytes: number): void {
    const [a, b] = this.range(offset, bytes);
    for (let c = a; c < b; c++) this.counts[c]!++;
  }

  remove(offset: number, bytes: number): void {
    const [a, b] = this.range(offset, bytes);
    for (let c = a; c < b; c++) if (this.counts[c]! > 0) this.counts[c]!--;
  }

  any(offset: number, bytes: number): boolean {
    const [a, b] = this.range(offset, bytes);
    for (let c = a; c < b; c++) if (this.counts[c]) return true;
    return false;
  }

  chunkBusy(chunk: number): boolean {
    return (this.counts[chunk] ?? 0) > 0;
  }
}

/** The copy buffer (`buf-size` bytes) split into granularity-sized chunks, handed out to copy operations. */
export class ChunkPool {
  private readonly free: Uint8Array[] = [];
  readonly released = new WaitQueue();

  constructor(
    readonly granularity: number,
    bufSize: number,
  ) {
    const n = Math.max(1, Math.floor(bufSize / granularity));
    // Page-aligned: the kernel copies page-cache data several times faster into aligned memory (see aligned.ts).
    const mem = allocAlignedBuffer(n * granularity);
    for (let i = 0; i < n; i++) this.free.push(mem.subarray(i * granularity, (i + 1) * granularity));
  }

  get freeCount(): number {
    return this.free.length;
  }

  take(n: number): Uint8Array[] {
    return this.free.splice(this.free.length - n, n);
  }

  give(chunks: Uint8Array[]): void {
    this.free.push(...chunks);
    this.released.wakeAll();
  }
}
