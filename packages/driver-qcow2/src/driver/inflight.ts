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

/**
 * Host clusters freed while data I/O that may still touch them is in flight are not reused until that I/O
 * has finished: a read or in-place write that looked up its mapping before the free must not land in a cluster
 * that meanwhile belongs to someone else. Every data request takes a ticket; a freed cluster is held until all
 * tickets older than the free are returned.
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
  /** Cluster indexes the allocator must skip. */
  readonly quarantined = new Set<number>();

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

  /** A cluster's refcount dropped to 0: hold it if older I/O may still use it. */
  hold(cluster: number): void {
    if (this.outstanding === 0) return;
    this.held.push({ seq: this.seq, cluster });
    this.quarantined.add(cluster);
  }

  /** Release what no in-flight I/O can touch any more; returns the lowest released cluster index or -1. */
  release(): number {
    if (this.held.length === 0) return -1;
    const minActive = this.outstanding ? this.oldest : Infinity;
    let lowest = -1;
    let n = 0;
    while (n < this.held.length && this.held[n]!.seq < minActive) {
      const c = this.held[n]!.cluster;
      this.quarantined.delete(c);
      if (lowest < 0 || c < lowest) lowest = c;
      n++;
    }
    if (n) this.held.splice(0, n);
    return lowest;
  }
}
