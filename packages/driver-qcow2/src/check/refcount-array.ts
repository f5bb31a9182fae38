import { getRefcount, refcountMax, setRefcount } from '../format/index.js';

/**
 * The in-memory refcount table QEMU's check builds (its "IMRT"): one refcount per host cluster, stored with
 * the image's own entry width and bit packing, so that the array is the concatenation of the refcount blocks
 * a correct image would have — the rebuild writes slices of it to disk as they are.
 *
 * Like QEMU's realloc_refcount_array(), the byte buffer is always a whole number of clusters, the logical
 * size grows to exactly what is asked for (the comparison walks `size` entries) and new space is zero.
 */
export class RefcountArray {
  private buf: Uint8Array;
  /** Number of entries (clusters) the array describes. */
  size = 0;
  readonly max: number;

  constructor(
    readonly refcountOrder: number,
    readonly clusterSize: number,
    size: number,
  ) {
    this.max = refcountMax(refcountOrder);
    this.buf = new Uint8Array(0);
    this.resize(size);
  }

  /** Bytes a refcount array of `entries` entries takes, rounded up to whole clusters. */
  private byteSizeFor(entries: number): number {
    const bytes = Math.ceil((entries * 2 ** this.refcountOrder) / 8);
    return Math.ceil(bytes / this.clusterSize) * this.clusterSize;
  }

  resize(newSize: number): void {
    const newBytes = this.byteSizeFor(newSize);
    if (newBytes !== this.buf.length) {
      const next = new Uint8Array(newBytes);
      next.set(this.buf.subarray(0, Math.min(this.buf.length, newBytes)));
      this.buf = next;
    }
    this.size = newSize;
  }

  get(index: number): number {
    if (index >= this.size) return 0;
    return getRefcount(this.buf, index, this.refcountOrder);
  }

  set(index: number, value: number): void {
    setRefcount(this.buf, index, this.refcountOrder, value);
  }

  /** Zero every entry (QEMU memsets the array before recalculating after a rebuild). */
  clear(): void {
    this.buf.fill(0);
  }

  /** Whether every entry of refcount block `blockIndex` (a cluster of the array) is 0. */
  blockIsZero(blockIndex: number): boolean {
    const start = blockIndex * this.clusterSize;
    if (start >= this.buf.length) return true;
    // Clusters are multiples of 512 bytes and the buffer starts its own ArrayBuffer: whole aligned words.
    const words = new Uint32Array(this.buf.buffer, this.buf.byteOffset + start, this.clusterSize / 4);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
    return true;
  }

  /** The bytes of refcount block `blockIndex` (a cluster-sized slice; the buffer is cluster aligned). */
  refblockSlice(blockIndex: number): Uint8Array {
    const start = blockIndex * this.clusterSize;
    const out = new Uint8Array(this.clusterSize);
    out.set(this.buf.subarray(start, Math.min(start + this.clusterSize, this.buf.length)));
    return out;
  }
}
