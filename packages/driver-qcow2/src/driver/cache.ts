import { BlockError } from '@blockgraph/block-core';
import { OffsetMap } from './offset-map.js';

/**
 * A write-back metadata cache: L2 table slices or refcount blocks (QEMU's qcow2-cache.c, imago's metadata
 * caches). Entries are fixed-size tables keyed by their offset in the image file; least recently used
 * unpinned entries are evicted, dirty ones written first.
 *
 * Ordering between caches is explicit, as in QEMU: a cache may *depend* on another cache (that one must be
 * written and the file flushed before any of our dirty entries reaches the disk) or on a plain flush of the file
 * (data written for copy-on-write must be stable before an L2 entry points at it). Allocation makes the L2 cache
 * depend on the refcount cache (refcount increments first); freeing makes the refcount cache depend on the L2
 * cache (references removed first). Setting a dependency flushes any conflicting one, so there are no cycles.
 *
 * Every method that may do I/O runs under the image's metadata lock; `peek()` is the lock-free, synchronous
 * lookup used by cache hits on the request path (only complete entries are ever in the map).
 */

export interface CacheIO {
  /** Read a table from the image file. */
  read(cache: MetaCache, offset: number, buf: Uint8Array): Promise<void>;
  /** Overlap-check and write a table to the image file. */
  write(cache: MetaCache, offset: number, buf: Uint8Array): Promise<void>;
  /** Flush the image file to stable storage. */
  flushFile(): Promise<void>;
}

export class CacheEntry {
  /** Offset of the table in the image file; 0 = free entry. */
  offset = 0;
  /** Pins: entries in use by an operation are never evicted. */
  ref = 0;
  dirty = false;
  lru = 0;
  readonly view: DataView;

  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
}

export class MetaCache {
  private readonly map = new OffsetMap<CacheEntry>();
  private readonly entries: CacheEntry[] = [];
  private lruCounter = 0;
  /** lruCounter at the last clean tick: entries not used since are dropped by clean(). */
  private cleanMark = 0;
  /** Must be written (and the file flushed) before any dirty entry of this cache. */
  depends: MetaCache | null = null;
  /** The file must be flushed before any dirty entry of this cache is written. */
  dependsOnFlush = false;
  /** Number of write-back passes (write(), flush()) started so far; pass number n is the n-th. */
  writesStarted = 0;
  /**
   * The number of the latest write-back pass that completed without error: everything dirty when it started is
   * in the file (not necessarily stable yet).
   */
  writtenThrough = 0;

  constructor(
    readonly name: 'L2' | 'refcount',
    /** Bytes per table (an L2 slice or a refcount block). */
    readonly tableSize: number,
    /** Maximum number of entries. */
    public capacity: number,
    private readonly io: CacheIO,
  ) {}

  /** Entries currently holding a buffer (memory use is size * tableSize). */
  get size(): number {
    return this.entries.length;
  }

  get dirtyCount(): number {
    let n = 0;
    for (const e of this.entries) if (e.dirty && e.offset) n++;
    return n;
  }

  /** Lock-free lookup of a complete entry; counts as a use. Do not hold the entry across an await. */
  peek(offset: number): CacheEntry | undefined {
    const e = this.map.get(offset);
    if (e) e.lru = ++this.lruCounter;
    return e;
  }

  /** qcow2_cache_get(): the table at `offset`, read from the file if not cached; pinned until put(). */
  get(offset: number): Promise<CacheEntry> {
    const hit = this.map.get(offset);
    if (hit) {
      hit.ref++;
      hit.lru = ++this.lruCounter;
      return Promise.resolve(hit);
    }
    return this.load(offset, true);
  }

  /** qcow2_cache_get_empty(): an entry for `offset` whose content the caller initialises (not read). */
  getEmpty(offset: number): Promise<CacheEntry> {
    const hit = this.map.get(offset);
    if (hit) {
      hit.ref++;
      hit.lru = ++this.lruCounter;
      return Promise.resolve(hit);
    }
    return this.load(offset, false);
  }

  private async load(offset: number, read: boolean): Promise<CacheEntry> {
    const e = await this.takeVictim();
    // takeVictim may have waited for a write-back: someone may have loaded the table meanwhile.
    const raced = this.map.get(offset);
    if (raced) {
      e.ref = 0;
      raced.ref++;
      raced.lru = ++this.lruCounter;
      return raced;
    }
    if (read) {
      try {
        await this.io.read(this, offset, e.buf);
      } catch (err) {
        e.ref = 0;
        throw err;
      }
      const again = this.map.get(offset);
      if (again) {
        e.ref = 0;
        again.ref++;
        again.lru = ++this.lruCounter;
        return again;
      }
    }
    e.offset = offset;
    e.lru = ++this.lruCounter;
    this.map.set(offset, e);
    return e;
  }

  private newEntry(): CacheEntry {
    const e = new CacheEntry(new Uint8Array(this.tableSize));
    e.ref = 1;
    this.entries.push(e);
    return e;
  }

  /** A free entry, pinned (ref 1), not in the map. */
  private async takeVictim(): Promise<CacheEntry> {
    for (;;) {
      // Every entry holds a table and there is room for more: a new one, without looking at the others. That walk
      // made a cache that fills up (a convert into 512-byte clusters: 16384 L2 tables) quadratic.
      if (this.map.size === this.entries.length && this.entries.length < this.capacity) return this.newEntry();
      let victim: CacheEntry | undefined;
      let min = Infinity;
      for (const e of this.entries) {
        if (e.ref) continue;
        if (e.offset === 0) {
          victim = e;
          break;
        }
        if (e.lru < min) {
          min = e.lru;
          victim = e;
        }
      }
      if (victim === undefined || (victim.offset !== 0 && this.entries.length < this.capacity)) {
        if (this.entries.length < this.capacity) return this.newEntry();
        throw new BlockError('EIO', `qcow2: ${this.name} cache exhausted: all ${this.capacity} entries are in use`);
      }
      if (victim.dirty && victim.offset) {
        victim.ref++;
        try {
          await this.entryFlush(victim);
        } finally {
          victim.ref--;
        }
        continue;
      }
      if (victim.offset) this.map.delete(victim.offset);
      victim.offset = 0;
      victim.dirty = false;
      victim.ref = 1;
      return victim;
    }
  }

  put(e: CacheEntry): void {
    e.ref--;
  }

  markDirty(e: CacheEntry): void {
    if (e.offset) e.dirty = true;
  }

  /** qcow2_cache_entry_flush(): write one dirty entry, after what it depends on. */
  async entryFlush(e: CacheEntry): Promise<void> {
    if (!e.dirty || !e.offset) return;
    if (this.depends) {
      await this.flushDependency();
    } else if (this.dependsOnFlush) {
      await this.io.flushFile();
      this.dependsOnFlush = false;
    }
    if (!e.dirty || !e.offset) return;
    await this.io.write(this, e.offset, e.buf);
    e.dirty = false;
  }

  /** qcow2_cache_write(): write every dirty entry. */
  async write(): Promise<void> {
    const n = ++this.writesStarted;
    let err: unknown;
    // Picked before the first await, in entry order as QEMU writes them: a cache mapping a large disk with small
    // clusters has tens of thousands of entries and flushes once per allocation, and awaiting each clean one took
    // most of the time of such a flush (shrinking a 3 GiB image of 1 KiB clusters: 47,000 flushes of 24,576 entries).
    const dirty = this.entries.filter((e) => e.dirty && e.offset !== 0);
    for (const e of dirty) {
      try {
        await this.entryFlush(e);
      } catch (x) {
        err ??= x;
      }
    }
    if (err !== undefined) throw err;
    if (n > this.writtenThrough) this.writtenThrough = n;
  }

  /** qcow2_cache_flush(): write every dirty entry, then flush the file. */
  async flush(): Promise<void> {
    let err: unknown;
    try {
      await this.write();
    } catch (x) {
      err = x;
    }
    await this.io.flushFile();
    if (err !== undefined) throw err;
  }

  async flushDependency(): Promise<void> {
    await this.depends!.flush();
    this.depends = null;
    this.dependsOnFlush = false;
  }

  /** qcow2_cache_set_dependency(): `dependency` must reach the disk before our dirty entries. */
  async setDependency(dependency: MetaCache): Promise<void> {
    if (dependency.depends) await dependency.flushDependency();
    if (this.depends && this.depends !== dependency) await this.flushDependency();
    this.depends = dependency;
  }

  /** qcow2_cache_depends_on_flush(). */
  setDependsOnFlush(): void {
    this.dependsOnFlush = true;
  }

  /**
   * qcow2_cache_discard() for every table inside [offset, offset + bytes): the clusters were freed, so their
   * cached content must never be written back (the cluster may be reused for something else).
   */
  discardRange(offset: number, bytes: number): void {
    if (this.map.size === 0) return;
    const end = offset + bytes;
    if (this.map.size < (bytes / this.tableSize) * 2) {
      // Collect first: dropping moves entries around inside the map.
      const inRange: CacheEntry[] = [];
      for (const [o, e] of this.map.entries()) if (o >= offset && o < end) inRange.push(e);
      for (const e of inRange) this.dropEntry(e);
    } else {
      for (let o = offset; o < end; o += this.tableSize) {
        const e = this.map.get(o);
        if (e) this.dropEntry(e);
      }
    }
  }

  private dropEntry(e: CacheEntry): void {
    this.map.delete(e.offset);
    e.offset = 0;
    e.dirty = false;
    e.lru = 0;
  }

  /** The cached entry for `offset` if any (no pin). */
  has(offset: number): boolean {
    return this.map.has(offset);
  }

  /** Forget everything (after the image was repaired behind our back). Entries must be clean. */
  dropAll(): void {
    for (const e of this.entries) {
      if (e.offset) this.map.delete(e.offset);
      e.offset = 0;
      e.dirty = false;
      e.lru = 0;
    }
    this.depends = null;
    this.dependsOnFlush = false;
  }

  /** cache-clean-interval tick: release clean, unpinned entries not used since the previous tick. */
  cleanUnused(): void {
    const mark = this.cleanMark;
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i]!;
      if (e.ref || e.dirty || e.lru > mark) continue;
      if (e.offset) this.map.delete(e.offset);
      this.entries.splice(i, 1);
    }
    this.cleanMark = this.lruCounter;
  }

  /** Change the capacity; surplus entries are written back and released. */
  async resize(capacity: number): Promise<void> {
    this.capacity = capacity;
    if (this.entries.length <= capacity) return;
    await this.write();
    for (let i = this.entries.length - 1; i >= 0 && this.entries.length > capacity; i--) {
      const e = this.entries[i]!;
      if (e.ref || e.dirty) continue;
      if (e.offset) this.map.delete(e.offset);
      this.entries.splice(i, 1);
    }
  }
}
