import type { Child, ChildParent } from './child.js';
import { BlockError } from './errors.js';
import type { Graph } from './graph.js';
import { ChildRole, PERM_ALL, type PermPair } from './perm.js';
import {
  NO_CAPABILITIES,
  type BlockDriver,
  type BlockDriverInstance,
  type BlockLimits,
  type DriverCapabilities,
} from './spec.js';
import { TrackedList } from './tracked.js';
import { DirtyBitmap, type DirtyBitmapOptions } from './bitmap.js';
import { WaitQueue } from './wait-queue.js';
import type { Options } from './options.js';
import type { CopyUpLock } from './copy-on-read.js';
import { drainBeginNoPoll, drainEnd, drainPoll } from './drain.js';
import { sectorRound } from './io.js';

export type DetectZeroes = 'off' | 'on' | 'unmap';

/** Options every node takes besides its driver's own (QAPI BlockdevOptionsBase). */
export interface CommonNodeOptions {
  readOnly: boolean;
  /** 'unmap': discard requests reach the driver and zero writes may deallocate; 'ignore': discards are dropped. */
  discard: 'ignore' | 'unmap';
  detectZeroes: DetectZeroes;
  /** Read-only users share every permission (qemu-img -U). */
  forceShare: boolean;
  cacheDirect: boolean;
  cacheNoFlush: boolean;
}

export const DEFAULT_LIMITS: BlockLimits = {
  requestAlignment: 1,
  maxTransfer: 0,
  optTransfer: 0,
  pdiscardAlignment: 0,
  maxPdiscard: 0,
  pwriteZeroesAlignment: 0,
  maxPwriteZeroes: 0,
};

/** One open instance of a driver (BlockDriverState). */
export class BlockNode implements ChildParent {
  readonly parentKind = 'node' as const;
  impl: BlockDriverInstance = { getLength: () => 0 };
  readonly children: Child[] = [];
  readonly parents: Child[] = [];
  totalBytes = 0;
  limits: BlockLimits = { ...DEFAULT_LIMITS };
  capabilities: DriverCapabilities = { ...NO_CAPABILITIES };
  supportedReadFlags = 0;
  supportedWriteFlags = 0;
  supportedZeroFlags = 0;
  supportedTruncateFlags = 0;

  readonly tracked = new TrackedList();
  serialisingInFlight = 0;
  inFlight = 0;
  quiesceCounter = 0;
  /** Copy-ups in progress that this node's changing writes must not overlap (see copy-on-read.ts). */
  readonly copyUpLocks = new Set<CopyUpLock>();
  readonly dirtyBitmaps: DirtyBitmap[] = [];
  writeGen = 0;
  flushedGen = 0;
  activeFlush = false;
  readonly flushQueue = new WaitQueue();
  opened = false;
  closed = false;
  /** Cumulative permissions of the parents, as last committed by a permission refresh. */
  perms: PermPair = { perm: 0, shared: PERM_ALL };

  constructor(
    readonly graph: Graph,
    readonly nodeName: string,
    readonly driver: BlockDriver,
    public options: Options,
    public common: CommonNodeOptions,
    /** Created as part of another node's options without its own name. */
    readonly implicit: boolean,
  ) {
    this.capabilities = { ...driver.capabilities };
  }

  get readOnly(): boolean {
    return this.common.readOnly;
  }

  get asNode(): BlockNode {
    return this;
  }

  describeParent(): string {
    return `node '${this.nodeName}'`;
  }

  get isFilter(): boolean {
    return this.driver.kind === 'filter';
  }

  /** The node's file name: a protocol's own, otherwise its primary child's. */
  get filename(): string | undefined {
    if (this.impl.filename !== undefined) return this.impl.filename;
    return this.primaryChild()?.node.filename;
  }

  /** bdrv_primary_child(): the child with the PRIMARY role (a format's file), or a filter's child. */
  primaryChild(): Child | undefined {
    return this.children.find((c) => c.role & ChildRole.PRIMARY) ?? this.filteredChild();
  }

  child(name: string): Child | undefined {
    return this.children.find((c) => c.name === name);
  }

  get file(): Child | undefined {
    return this.child('file');
  }

  get backing(): Child | undefined {
    return this.children.find((c) => c.role & ChildRole.COW);
  }

  filteredChild(): Child | undefined {
    return this.children.find((c) => c.role & ChildRole.FILTERED);
  }

  /** bdrv_filter_or_cow_child(): the next layer in a chain. */
  filterOrCowChild(): Child | undefined {
    return this.filteredChild() ?? this.backing;
  }

  /** bdrv_backing_chain_next(): the next image down the chain, filters skipped on both sides. */
  backingChainNext(): BlockNode | undefined {
    return this.skipFilters().backing?.node.skipFilters();
  }

  /** bdrv_skip_filters(). */
  skipFilters(): BlockNode {
    const c = this.isFilter ? this.filteredChild() : undefined;
    return c ? c.node.skipFilters() : this;
  }

  /** Cluster size for copy-on-read rounding and mirror granularity; request alignment when there is none. */
  getClusterSize(): number {
    return this.impl.getInfo?.().clusterSize ?? this.limits.requestAlignment;
  }

  /** Recompute size, limits and flags from the driver and the children (bdrv_refresh_limits). */
  async refresh(): Promise<void> {
    this.totalBytes = sectorRound(await this.impl.getLength());
    this.refreshLimits();
  }

  refreshLimits(): void {
    const merged: BlockLimits = { ...DEFAULT_LIMITS };
    for (const c of this.children) {
      if (!(c.role & (ChildRole.DATA | ChildRole.FILTERED | ChildRole.COW))) continue;
      const l = c.node.limits;
      merged.optTransfer = Math.max(merged.optTransfer, l.optTransfer);
      merged.maxTransfer = minNonZero(merged.maxTransfer, l.maxTransfer);
      merged.pdiscardAlignment = Math.max(merged.pdiscardAlignment, l.pdiscardAlignment);
    }
    const own = this.impl.refreshLimits?.(merged) ?? {};
    this.limits = { ...merged, ...own };
    const a = this.limits.requestAlignment;
    if (!(a > 0 && (a & (a - 1)) === 0)) {
      throw new BlockError('EINVAL', `Driver '${this.driver.name}' reported an invalid request alignment ${a}`);
    }
    this.supportedReadFlags = this.impl.supportedReadFlags ?? 0;
    this.supportedWriteFlags = this.impl.supportedWriteFlags ?? 0;
    this.supportedZeroFlags = this.impl.supportedZeroFlags ?? 0;
    this.supportedTruncateFlags = this.impl.supportedTruncateFlags ?? 0;
    this.capabilities = { ...this.driver.capabilities, ...this.impl.capabilities };
  }

  // --- dirty bitmaps -------------------------------------------------------------------------------------

  createDirtyBitmap(opts: DirtyBitmapOptions = {}): DirtyBitmap {
    if (opts.name !== undefined && this.findDirtyBitmap(opts.name)) {
      throw new BlockError('EEXIST', `Bitmap already exists: ${opts.name}`);
    }
    const bm = new DirtyBitmap(this.totalBytes, opts.granularity ?? defaultBitmapGranularity(this), opts);
    this.dirtyBitmaps.push(bm);
    return bm;
  }

  findDirtyBitmap(name: string): DirtyBitmap | undefined {
    return this.dirtyBitmaps.find((b) => b.name === name);
  }

  releaseDirtyBitmap(bm: DirtyBitmap, force = false): void {
    if (bm.busy && !force) throw new BlockError('EBUSY', `Bitmap '${bm.name ?? ''}' is currently in use by another operation and cannot be used`);
    const i = this.dirtyBitmaps.indexOf(bm);
    if (i >= 0) this.dirtyBitmaps.splice(i, 1);
  }

  /** Writes that reached this node mark every enabled bitmap (bdrv_set_dirty). */
  markDirty(offset: number, bytes: number): void {
    for (const bm of this.dirtyBitmaps) if (bm.enabled) bm.set(offset, bytes);
  }

  // --- drain, as a parent of our children ------------------------------------------------------------------

  drainedBegin(): void {
    drainBeginNoPoll(this);
  }

  drainedEnd(): void {
    drainEnd(this);
  }

  drainedPoll(): boolean {
    return drainPoll(this);
  }

  childResized(child: Child): void {
    // A filter's size is its child's; a driver that follows a child's size says so with its own hook.
    let size: number | undefined;
    if (this.impl.childResized) {
      this.impl.childResized(child);
      const len = this.impl.getLength();
      if (typeof len === 'number') size = sectorRound(len);
    } else if (this.isFilter && child === this.filteredChild()) {
      size = child.node.totalBytes;
    }
    if (size === undefined || size === this.totalBytes) return;
    this.totalBytes = size;
    for (const bm of this.dirtyBitmaps) bm.resize(size);
    for (const p of this.parents) p.parent.childResized?.(p);
  }
}

function minNonZero(a: number, b: number): number {
  if (!a) return b;
  if (!b) return a;
  return Math.min(a, b);
}

/** bdrv_get_default_bitmap_granularity(): the cluster size clamped to [4 KiB, 64 KiB]; 64 KiB without clusters. */
export function defaultBitmapGranularity(node: BlockNode): number {
  const cluster = node.impl.getInfo?.().clusterSize;
  return cluster ? Math.min(65536, Math.max(cluster, 4096)) : 65536;
}
