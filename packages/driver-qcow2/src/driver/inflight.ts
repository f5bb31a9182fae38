import { WaitQueue } from '@blockgraph/block-core';

/**
 * In-flight allocations (QEMU's QCowL2Meta and the cluster_allocs list): a write that allocated host clusters
 * and has not linked them into its L2 table yet. Requests touching the same guest clusters wait for it; the
 * others go ahead in parallel.
 */
export interface CowRegion {
  /** Offset relative to the start of the first cluster of the allocation (L2Meta.offset). */
  offset: number;
  bytes: number;
}

export class L2Meta {
  /** Set when the data of the COW regions was handled without copying (zero-filled by the file). */
  skipCow = false;
  /** Preallocation: link without marking subclusters allocated. */
  prealloc = false;
  readonly waiters = new WaitQueue();

  constructor(
    /** Guest offset of the first cluster. */
    readonly offset: number,
    /** Host offset of the first cluster. */
    readonly allocOffset: number,
    readonly nbClusters: number,
    /** Writing into existing COPIED clusters (only subcluster bits / zero flag change on link). */
    readonly keepOld: boolean,
    readonly cowStart: CowRegion,
    readonly cowEnd: CowRegion,
    /** The COW regions read as zeroes (unallocated without backing, or zero clusters). */
    readonly cowIsZero: boolean,
  ) {}

  /** Guest offset where the area this allocation touches starts. */
  get cowStartGuest(): number {
    return this.offset + this.cowStart.offset;
  }

  /** Guest offset where the area this allocation touches ends. */
  get cowEndGuest(): number {
    return this.offset + this.cowEnd.offset + this.cowEnd.bytes;
  }

  get hasCow(): boolean {
    return this.cowStart.bytes !== 0 || this.cowEnd.bytes !== 0;
  }
}

/** A host cluster range written in place, and the clusters freed inside it meanwhile. */
export interface Pin {
  readonly first: number;
  readonly end: number;
  readonly held: number[];
}

/**
 * Freed host clusters the allocator must not hand out yet, for three reasons.
 *
 * - Data I/O that may still touch them is in flight: a read or in-place write that looked up its mapping before
 *   the free must not land in a cluster that meanwhile belongs to someone else. Every data request takes a
 *   ticket; such a cluster is held until all tickets older than the free are returned.
 * - The L2 update that dropped their last reference is not on disk yet, and the old L2 entry still describes
 *   data that must survive a crash (a compressed cluster rewritten in part was copied to a new cluster; the
 *   untouched part of the old one is the flushed content). Reusing the cluster before that L2 table is written
 *   and flushed would let a crash leave the old entry pointing at somebody else's data. QEMU 7.2 reuses it at
 *   once, and a qemu-io killed in that window leaves a compressed cluster that no longer decompresses. Such a
 *   cluster is held until an L2 cache write-back pass that started after the free has completed and a flush of
 *   the image file that started after that has succeeded. The second part uses the file node's own write and
 *   flush generations (BlockNode.writeGen / flushedGen), so any flush of the file counts, whoever issues it:
 *   once the pass is seen complete, the cluster is stamped with the file's current write generation and freed
 *   when the file's flushed generation reaches it. (Stamping when the release is checked rather than when the
 *   pass completes can only make a cluster wait for one more flush.)
 * - A write that found its clusters in place through allocation (not the lock-free path, which takes a ticket) is
 *   still writing into them: such a write pins their host range (pin()), and a cluster freed inside it is held
 *   until the pin ends.
 */
export class IoTickets {
  private seq = 0;
  /**
   * Which tickets since `oldest` are still out: a ring of flags indexed by ticket number. A Set of numbers did
   * this before, but its hash table is rebuilt every few dozen requests, and at high request rates those tables
   * outlived minor GCs and filled the old generation. The ring allocates only when it grows.
   */
  private open = new Uint8Array(64);
  /** The oldest ticket that may still be out (every older one has been returned). */
  private oldest = 1;
  private outstanding = 0;
  private readonly held: { seq: number; cluster: number }[] = [];
  /** `gen` is -1 until the pass is seen complete, then the file's write generation at that moment. */
  private readonly heldForL2: { pass: number; gen: number; cluster: number }[] = [];
  /** Cluster indexes the allocator must skip, with the number of holds on each. */
  readonly quarantined = new Map<number, number>();
  /** Host cluster ranges being written in place by writes that found them through allocation (see pin()). */
  private readonly pins: Pin[] = [];
  /** Clusters freed inside a pin that has ended: released at the next release(). */
  private readonly unpinned: number[] = [];

  enter(): number {
    const t = ++this.seq;
    if (t - this.oldest >= this.open.length) this.grow();
    this.open[t & (this.open.length - 1)] = 1;
    this.outstanding++;
    return t;
  }

  leave(ticket: number): void {
    const mask = this.open.length - 1;
    if (ticket < this.oldest || ticket > this.seq || !this.open[ticket & mask]) return;
    this.open[ticket & mask] = 0;
    this.outstanding--;
    while (this.oldest <= this.seq && !this.open[this.oldest & mask]) this.oldest++;
  }

  /** Double the ring, keeping the flags of the tickets from `oldest` on. */
  private grow(): void {
    const old = this.open;
    const next = new Uint8Array(old.length * 2);
    for (let t = this.oldest; t <= this.seq; t++) next[t & (next.length - 1)] = old[t & (old.length - 1)]!;
    this.open = next;
  }

  /**
   * Host clusters [first, end) are being written in place by a write that found them through allocation (the
   * slow path): a cluster freed among them meanwhile stays out of reuse until unpin(). Narrower than a ticket,
   * which would hold every cluster freed meanwhile, and so change where later allocations go (QEMU reuses freed
   * clusters at once; the layouts of `commit` then differed from qemu-img's).
   */
  pin(first: number, end: number): Pin {
    const p: Pin = { first, end, held: [] };
    this.pins.push(p);
    return p;
  }

  unpin(p: Pin): void {
    const i = this.pins.indexOf(p);
    if (i >= 0) this.pins.splice(i, 1);
    for (const c of p.held) this.unpinned.push(c);
  }

  /** A cluster's refcount dropped to 0: hold it if older I/O may still use it. */
  hold(cluster: number): void {
    for (const p of this.pins) {
      if (cluster >= p.first && cluster < p.end) {
        p.held.push(cluster);
        this.quarantine(cluster);
      }
    }
    if (this.outstanding === 0) return;
    this.held.push({ seq: this.seq, cluster });
    this.quarantine(cluster);
  }

  /**
   * A cluster's refcount dropped to 0 because an L2 update replaced the entry that referenced it: hold it until
   * L2 cache write-back pass number `pass` (one that starts after now) is stable on disk.
   */
  holdUntilL2Stable(cluster: number, pass: number): void {
    this.heldForL2.push({ pass, gen: -1, cluster });
    this.quarantine(cluster);
  }

  private quarantine(cluster: number): void {
    this.quarantined.set(cluster, (this.quarantined.get(cluster) ?? 0) + 1);
  }

  /** Drop one hold; true when the cluster has no hold left. */
  private unquarantine(cluster: number): boolean {
    const n = this.quarantined.get(cluster)!;
    if (n > 1) {
      this.quarantined.set(cluster, n - 1);
      return false;
    }
    this.quarantined.delete(cluster);
    return true;
  }

  /**
   * Release what no in-flight I/O can touch any more and whose L2 update is stable: `l2WrittenThrough` is the
   * latest completed L2 cache write-back pass (MetaCache.writtenThrough), `fileWriteGen` / `fileFlushedGen` the
   * image file node's generations. Returns the lowest cluster index that became free, or -1.
   */
  release(l2WrittenThrough: number, fileWriteGen: number, fileFlushedGen: number): number {
    if (this.held.length === 0 && this.heldForL2.length === 0 && this.unpinned.length === 0) return -1;
    let lowest = -1;
    const free = (c: number): void => {
      if (this.unquarantine(c) && (lowest < 0 || c < lowest)) lowest = c;
    };
    for (const c of this.unpinned) free(c);
    this.unpinned.length = 0;
    if (this.held.length !== 0) {
      const minActive = this.outstanding ? this.oldest : Infinity;
      let n = 0;
      for (; n < this.held.length && this.held[n]!.seq < minActive; n++) free(this.held[n]!.cluster);
      if (n) this.held.splice(0, n);
    }
    if (this.heldForL2.length !== 0) {
      let n = 0;
      for (; n < this.heldForL2.length; n++) {
        const h = this.heldForL2[n]!;
        if (h.gen < 0) {
          if (h.pass > l2WrittenThrough) break;
          h.gen = fileWriteGen;
        }
        if (h.gen > fileFlushedGen) break;
        free(h.cluster);
      }
      if (n) this.heldForL2.splice(0, n);
    }
    return lowest;
  }
}
