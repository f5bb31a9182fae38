import { getRefcount, getRefcount64, refcountMax, setRefcount, type Qcow2Geometry } from '../format/index.js';
import { CheckAbort } from './check-abort.js';
import { readFull, type ImageIO } from './image-io.js';
import { hexAlt, offsetIntoCluster, u64, type Offset } from './u64-text.js';

/** MIN_REFCOUNT_CACHE_SIZE: QEMU's default (and smallest) refcount block cache, in blocks. */
const REFCOUNT_CACHE_BLOCKS = 4;

interface CachedBlock {
  offset: number;
  data: Uint8Array;
  dirty: boolean;
  /** When the block was last used (qcow2_cache_put's lru_counter). */
  lru: number;
}

/**
 * The refcounts as the image stores them: the refcount table (read once, like QEMU does at open) and the
 * refcount blocks behind it, read on demand into a write-back cache shaped like QEMU's refcount block cache for
 * an image opened without cache options: 4 blocks, least recently used evicted first, a dirty block written when
 * it is evicted. This is qcow2_get_refcount() and the part of update_refcount() the check uses (changing one
 * existing entry), without the driver's caches.
 *
 * The cache's shape is observable: a repair's new refcounts reach the file when their block is evicted, when
 * the check flushes (`writeBack()`: marking the image clean, closing it) or never, when a fatal corruption event
 * made QEMU's node unusable first. Matching it keeps a repaired image byte-identical to qemu-img's.
 */
export class DiskRefcounts {
  private table: DataView;
  private readonly slots: (CachedBlock | null)[];
  private lruCounter = 0;
  /** Clusters whose refcount a repair dropped to 0, to be discarded (QCOW2_DISCARD_ALWAYS/SNAPSHOT). */
  private discards: number[] = [];

  constructor(
    private readonly io: ImageIO,
    private readonly g: Qcow2Geometry,
    /** Offset of the refcount table in the file (beyond 2^53 only in a corrupted header). */
    public tableOffset: Offset,
    tableBytes: Uint8Array,
    /** Called when a refcount block offset is unaligned (QEMU's qcow2_signal_corruption). */
    private readonly onCorruption: (message: string) => Promise<void>,
    cacheBlocks = REFCOUNT_CACHE_BLOCKS,
  ) {
    this.slots = new Array<CachedBlock | null>(Math.max(REFCOUNT_CACHE_BLOCKS, cacheBlocks)).fill(null);
    this.table = new DataView(tableBytes.buffer, tableBytes.byteOffset, tableBytes.byteLength);
    this.updateLastUsedIndex();
  }

  /**
   * Index of the last entry with a refcount block offset (QEMU's max_refcount_table_index; 0 when there is
   * none): entries after it are all empty, so walks that look for blocks can stop there.
   */
  lastUsedIndex = 0;

  private updateLastUsedIndex(): void {
    let i = this.tableEntries - 1;
    while (i > 0 && this.entryHi(i) === 0 && (this.entryLo(i) & ~0x1ff) === 0) i--;
    this.lastUsedIndex = Math.max(0, i);
  }

  /** Number of refcount table entries (refcount_table_size). */
  get tableEntries(): number {
    return this.table.byteLength / 8;
  }

  entryHi(index: number): number {
    return this.table.getUint32(index * 8);
  }

  entryLo(index: number): number {
    return this.table.getUint32(index * 8 + 4);
  }

  /** REFT_OFFSET_MASK applied to entry `index` (bits 9..63). */
  blockOffset(index: number): Offset {
    return u64(this.entryHi(index), this.entryLo(index) & ~0x1ff);
  }

  /** Replace the table (after a rebuild switched the header to a new one). */
  replaceTable(tableOffset: number, tableBytes: Uint8Array): void {
    this.tableOffset = tableOffset;
    this.table = new DataView(tableBytes.buffer, tableBytes.byteOffset, tableBytes.byteLength);
    this.updateLastUsedIndex();
    this.emptyCache();
  }

  /** Forget cached refcount blocks (they must have been written back). */
  emptyCache(): void {
    this.slots.fill(null);
  }

  /**
   * qcow2_cache_do_get(): the cached block at `offset`, or a slot for it, freed by evicting the least recently
   * used block (written back first if dirty) and filled by `load`.
   */
  private async cached(offset: number, load: () => Promise<Uint8Array>): Promise<CachedBlock> {
    let victim = 0;
    let oldest = Number.POSITIVE_INFINITY;
    for (let i = 0; i < this.slots.length; i++) {
      const e = this.slots[i];
      if (e && e.offset === offset) {
        e.lru = ++this.lruCounter;
        return e;
      }
      const lru = e ? e.lru : 0;
      if (lru < oldest) {
        oldest = lru;
        victim = i;
      }
    }
    const old = this.slots[victim];
    if (old?.dirty) await this.io.writeAt(old.offset, old.data);
    this.slots[victim] = null;
    const e: CachedBlock = { offset, data: await load(), dirty: false, lru: ++this.lruCounter };
    this.slots[victim] = e;
    return e;
  }

  /**
   * The refcount block covering `cluster`, or null when there is none (all refcounts 0). Throws EIO for an
   * unaligned block offset, after signalling the corruption like QEMU.
   */
  private async block(cluster: number): Promise<{ data: Uint8Array; dirty: boolean } | null> {
    const index = Math.floor(cluster / this.g.refcountBlockEntries);
    if (index >= this.tableEntries) return null;
    const offset = this.blockOffset(index);
    if (offset === 0) return null;
    // Alignment first, as qcow2_get_refcount() does, whatever the offset's size.
    if (offsetIntoCluster(offset, this.g.clusterSize) !== 0) {
      await this.onCorruption(`Refblock offset ${hexAlt(offset)} unaligned (reftable index: ${hexAlt(index)})`);
      throw new CheckAbort('EIO');
    }
    if (typeof offset !== 'number') {
      // Beyond 2^53: past the end of any file, reads as zeros (or fails like QEMU's block layer).
      return { data: await readFull(this.io, offset, this.g.clusterSize), dirty: false };
    }
    return this.cached(offset, () => readFull(this.io, offset, this.g.clusterSize));
  }

  /** On-disk refcount of `cluster` (0 when no refcount block covers it). */
  async get(cluster: number): Promise<number> {
    const data = await this.blockData(cluster);
    return data ? this.entry(data, cluster) : 0;
  }

  /** get() exactly, in decimal, for messages (64-bit refcounts can exceed 2^53). */
  async getText(cluster: number): Promise<string> {
    const data = await this.blockData(cluster);
    return data ? this.entryText(data, cluster) : '0';
  }

  /**
   * The refcount block covering `cluster` (null: none, all its refcounts are 0), for callers that walk a
   * whole block's range. Throws like get() for an unaligned block offset.
   */
  async blockData(cluster: number): Promise<Uint8Array | null> {
    const entry = await this.block(cluster);
    return entry ? entry.data : null;
  }

  /** The refcount of `cluster` in its block's data (from blockData). */
  entry(data: Uint8Array, cluster: number): number {
    // 64-bit values of 2^53 and more (never produced by QEMU) come back rounded, not refused.
    return getRefcount(data, cluster % this.g.refcountBlockEntries, this.g.refcountOrder);
  }

  /** The refcount of `cluster` exactly, in decimal, for messages (64-bit refcounts can exceed 2^53). */
  entryText(data: Uint8Array, cluster: number): string {
    if (this.g.refcountOrder !== 6) return String(this.entry(data, cluster));
    return getRefcount64(data, cluster % this.g.refcountBlockEntries).toString();
  }

  /** Store a new refcount for `cluster`; its refcount block must exist. */
  async set(cluster: number, value: number): Promise<void> {
    const entry = await this.block(cluster);
    if (!entry) throw new CheckAbort('EIO', `No refcount block for cluster ${cluster}`);
    const i = cluster % this.g.refcountBlockEntries;
    if (value === 0 && this.entry(entry.data, cluster) !== 0) this.discards.push(cluster);
    setRefcount(entry.data, i, this.g.refcountOrder, value);
    entry.dirty = true;
  }

  /** Discard the clusters freed so far, merged into contiguous ranges (qcow2_process_discards). */
  async processDiscards(): Promise<void> {
    const clusters = [...new Set(this.discards)].sort((a, b) => a - b);
    this.discards = [];
    if (!this.io.discard) return;
    const cs = this.g.clusterSize;
    for (let i = 0; i < clusters.length; ) {
      let j = i + 1;
      while (j < clusters.length && clusters[j] === clusters[j - 1]! + 1) j++;
      await this.io.discard(clusters[i]! * cs, (j - i) * cs);
      i = j;
    }
  }

  /** Write every modified refcount block back (whole clusters, like QEMU's refcount cache). */
  async writeBack(): Promise<boolean> {
    await this.processDiscards();
    let wrote = false;
    for (const entry of this.slots) {
      if (!entry?.dirty) continue;
      await this.io.writeAt(entry.offset, entry.data);
      entry.dirty = false;
      wrote = true;
    }
    return wrote;
  }

  /** Largest storable refcount. */
  get max(): number {
    return refcountMax(this.g.refcountOrder);
  }

  /** Put a freshly created refcount block (all zeros, or self-describing) into the cache. */
  async installBlock(offset: number, data: Uint8Array): Promise<void> {
    const entry = await this.cached(offset, async () => data);
    entry.data = data;
  }

  /** Set the entry of `cluster` in a block's data directly (a new block describing itself). */
  setIn(data: Uint8Array, cluster: number, value: number): void {
    setRefcount(data, cluster % this.g.refcountBlockEntries, this.g.refcountOrder, value);
  }

  /** Install a refcount table entry in memory (the on-disk write is the caller's). */
  setEntry(index: number, offset: number): void {
    this.table.setUint32(index * 8, Math.floor(offset / 4294967296));
    this.table.setUint32(index * 8 + 4, offset >>> 0);
    this.updateLastUsedIndex();
  }
}
