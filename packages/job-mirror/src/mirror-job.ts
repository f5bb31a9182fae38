/**
 * The mirror job (block/mirror.c), in the shape of the 2018 "mirror: Mainly coroutine refinements" series: one
 * async `mirrorCoPerform()` per operation that aligns and then copies (`mirrorCoCopy()` reads and writes in one
 * function), zeroes or discards, with one clean-up path. See DESIGN.md §3 for the copy modes.
 */
import {
  alignDown,
  alignUp,
  BlockError,
  BlockStatus,
  blockStatusAbove,
  drainedBegin,
  drainedEnd,
  IOVector,
  isAllocatedAbove,
  isBlockError,
  Job,
  JOB_SLICE_MS,
  refreshPerms,
  ReqFlag,
  toBlockError,
  Transaction,
  WaitQueue,
  type BlockBackend,
  type BlockNode,
  type Child,
  type DirtyBitmap,
  type Graph,
  type JobInfo,
  type JobTxn,
  type OnError,
  type ReqFlags,
} from '@blockgraph/block-core';
import { insertCopyOnRead } from '@blockgraph/filter-cor';
import { ChunkPool, InFlightChunks, MirrorOp, type MirrorMethod } from './mirror-op.js';
import { MAX_IN_FLIGHT, MAX_IO_BYTES, type MirrorBackingMode, type MirrorCopyMode, type MirrorSyncMode } from './options.js';
import type { MirrorTopState } from './mirror-top.js';

const now = (): number => (typeof performance !== 'undefined' ? performance.now() : Date.now());

/** An I/O error of a background operation, tagged with the side it happened on. */
class MirrorIoError extends Error {
  constructor(
    override readonly cause: BlockError,
    readonly isRead: boolean,
  ) {
    super(cause.message);
  }
}


/** Run `fn` in a later event-loop turn without a timer's clamp (setImmediate in Node; setTimeout(0) elsewhere). */
const macrotask: (fn: () => void) => void =
  (globalThis as { setImmediate?: (fn: () => void) => unknown }).setImmediate ?? ((fn) => void setTimeout(fn, 0));

/** An active commit (commit_active_start): the mirror's target is the base of the source's backing chain. */
export interface ActiveCommit {
  /** The node right above the base: what is allocated from the source down to it gets copied. */
  baseOverlay: BlockNode;
  /**
   * The base was read-only before the job made it writable: a job that does not complete makes it read-only
   * again (QEMU 7.2 leaves it writable; later QEMU restores it, as here).
   */
  baseReadOnly: boolean;
}

export interface MirrorJobParams {
  graph: Graph;
  id: string;
  source: BlockNode;
  mirrorTop: BlockNode;
  state: MirrorTopState;
  target: BlockNode;
  targetBackend: BlockBackend;
  sync: MirrorSyncMode;
  granularity: number;
  bufSize: number;
  speed: number;
  onSourceError: OnError;
  onTargetError: OnError;
  unmap: boolean;
  zeroTarget: boolean;
  /** sync=full into a target that reads as zeroes already (target-is-zero): zero ranges need no copying. */
  targetIsZero?: boolean;
  replaces?: string;
  backingMode?: MirrorBackingMode;
  commit?: ActiveCommit | undefined;
  autoFinalize: boolean;
  autoDismiss: boolean;
  txn?: JobTxn;
}

export class MirrorJob extends Job {
  readonly granularity: number;
  readonly bufSize: number;
  readonly sync: MirrorSyncMode;
  readonly source: BlockNode;
  readonly mirrorTop: BlockNode;
  readonly target: BlockNode;
  private readonly state: MirrorTopState;
  private readonly targetBe: BlockBackend;
  private readonly onSourceError: OnError;
  private readonly onTargetError: OnError;
  private readonly unmap: boolean;
  private readonly zeroTarget: boolean;
  private readonly skipZeroes: boolean;
  private readonly replaces: string | undefined;
  private readonly backingMode: MirrorBackingMode;
  private toReplace: BlockNode | undefined;

  /** Chunks the target lacks; marked by the mirror node for writes it does not copy (never by the pipeline). */
  readonly bitmap: DirtyBitmap;
  /** Background mode only: catches writes that reach the source without passing the mirror node. */
  private catcher: DirtyBitmap | null = null;
  private readonly ops = new Set<MirrorOp>();
  private chunksInFlight!: InFlightChunks;
  private pool!: ChunkPool;
  /** Chunks of targets that cannot copy-on-write themselves that were copied whole once. */
  private cowBitmap: Uint8Array | null = null;
  private targetClusterSize = 0;
  private bdevLength = 0;
  /** Background operations in flight and their bytes; active writes are not counted (they use no slot). */
  private inFlight = 0;
  private bytesInFlight = 0;
  private activeWriteBytesInFlight = 0;
  private inActiveWriteCounter = 0;
  private readonly opFinished = new WaitQueue();
  /** s->ret: the first reported error; ends the job. */
  private ret: BlockError | null = null;
  private shouldComplete = false;
  private inDrain = false;
  private drainedSource = false;
  private initialZeroingOngoing = false;
  private iterPos = 0;
  private lastPause = 0;
  activelySynced = false;
  private corNode: BlockNode | null = null;
  /** Serialises mode changes with the job's attachment to the mirror node. */
  private modeLock: Promise<unknown> = Promise.resolve();
  private exited = false;
  private readonly maxIoBytes: number;
  private readonly baseOverlay: BlockNode | undefined;
  private readonly activeCommit: ActiveCommit | undefined;
  /** The links from the source down to the base are frozen by this job (and only then unfrozen by it). */
  private chainFrozen = false;

  constructor(p: MirrorJobParams) {
    super(p.graph, { id: p.id, type: p.commit ? 'commit' : 'mirror', autoFinalize: p.autoFinalize, autoDismiss: p.autoDismiss, speed: p.speed, txn: p.txn });
    this.granularity = p.granularity;
    this.bufSize = p.bufSize;
    this.sync = p.sync;
    this.source = p.source;
    this.mirrorTop = p.mirrorTop;
    this.target = p.target;
    this.state = p.state;
    this.targetBe = p.targetBackend;
    this.onSourceError = p.onSourceError;
    this.onTargetError = p.onTargetError;
    this.unmap = p.unmap;
    this.zeroTarget = p.zeroTarget;
    this.skipZeroes = p.sync === 'full' && (p.targetIsZero ?? false);
    this.replaces = p.replaces;
    this.backingMode = p.backingMode ?? 'leave';
    this.maxIoBytes = Math.max(Math.floor(p.bufSize / MAX_IN_FLIGHT), MAX_IO_BYTES);
    // sync=top copies only what the top layer has (a commit: every layer above the base); full, the whole chain.
    this.activeCommit = p.commit;
    this.baseOverlay = p.commit ? p.commit.baseOverlay : p.sync === 'top' ? p.source.skipFilters() : undefined;
    this.bitmap = p.mirrorTop.createDirtyBitmap({ granularity: p.granularity, disabled: true });
    // Until the job is attached to the mirror node (after the initial scan), writes pass the node untracked; the
    // catcher records them in every mode. Active modes drop it when the job attaches (attachToMirrorNode()).
    this.catcher = p.source.createDirtyBitmap({ granularity: p.granularity });
  }

  /** An active commit keeps the chain between source and base as it is while it runs (bdrv_freeze_backing_chain). */
  freezeCommitChain(): void {
    this.graph.freezeChain(this.source, this.target);
    this.chainFrozen = true;
  }

  get copyMode(): MirrorCopyMode {
    return this.state.copyMode;
  }

  // --- the edge the job reads the source through ---------------------------------------------------------

  private get sourceEdge(): Child {
    const c = this.mirrorTop.filteredChild();
    if (!c) throw new BlockError('ENOMEDIUM', 'mirror node has no source');
    return c;
  }

  private get targetCanZeroWithUnmap(): boolean {
    return this.target.common.discard === 'unmap' && (this.target.supportedZeroFlags & ReqFlag.MAY_UNMAP) !== 0;
  }

  private clipBytes(offset: number, bytes: number): number {
    return Math.min(bytes, this.bdevLength - offset);
  }

  /** bdrv_round_to_subclusters() on the target. */
  private roundToTargetSubclusters(offset: number, bytes: number): [number, number] {
    const info = this.target.impl.getInfo?.();
    const c = info?.subclusterSize ?? info?.clusterSize ?? this.target.limits.requestAlignment;
    const start = alignDown(offset, c);
    return [start, alignUp(offset + bytes, c) - start];
  }

  private cowGet(chunk: number): boolean {
    return this.cowBitmap ? this.cowBitmap[chunk] === 1 : true;
  }

  /** Fold writes that bypassed the mirror node (background mode) into the job's bitmap. */
  private absorbCatcher(): void {
    const c = this.catcher;
    if (c && c.count() > 0) {
      this.bitmap.merge(c);
      c.clear();
    }
  }

  // --- run ---------------------------------------------------------------------------------------------------

  protected async run(): Promise<void> {
    this.bdevLength = this.mirrorTop.totalBytes;
    if (this.activeCommit) {
      // An active commit grows a smaller base to the source's size (a larger one keeps its tail).
      if (this.target.totalBytes < this.bdevLength) await this.targetBe.truncate(this.bdevLength, false, 'off');
    } else if (this.target.totalBytes !== this.bdevLength) {
      throw new BlockError('EINVAL', 'Source and target image have different sizes');
    }
    try {
      await this.runMain();
    } finally {
      if (this.inFlight > 0) await this.waitForAllIo();
      // Stay drained until the graph changes in prepare/abort (QEMU's need_drain).
      if (!this.drainedSource && !this.exited) {
        this.inDrain = true;
        await drainedBegin(this.source);
        this.drainedSource = true;
      }
    }
  }

  private async runMain(): Promise<void> {
    if (this.bdevLength === 0) {
      this.state.job = this;
      this.transitionToReady();
      this.activelySynced = true;
      while (!this.cancelRequested() && !this.shouldComplete) await this.yield();
      return;
    }
    this.chunksInFlight = new InFlightChunks(this.granularity, this.bdevLength);
    // A target that names a backing file it has not opened cannot copy-on-write: copy its clusters whole.
    const info = this.target.impl.getInfo?.() ?? {};
    this.targetClusterSize = info.clusterSize ?? this.granularity;
    let bufSize = this.bufSize;
    if (info.backingFilename && !this.target.backing && this.granularity < this.targetClusterSize) {
      bufSize = Math.max(bufSize, this.targetClusterSize);
      this.cowBitmap = new Uint8Array(Math.ceil(this.bdevLength / this.granularity));
    }
    this.pool = new ChunkPool(this.granularity, bufSize);
    this.lastPause = now();
    if (this.sync !== 'none') {
      await this.dirtyInit();
      if (this.isCancelled()) return;
    }
    // Only now the job is fully initialised and the mirror node starts using it.
    // Mode changes wait for this (and this for them), so the copy-on-read node matches the mode in the end.
    await this.withModeLock(async () => {
      await this.attachToMirrorNode();
      if (this.copyMode === 'read-write-blocking') await this.inOwnDrain(() => this.insertCorNode());
    });

    for (;;) {
      if (this.ret) throw this.ret;
      await this.pausePoint();
      if (this.isCancelled()) return;
      this.absorbCatcher();
      let cnt = this.bitmap.count();
      // Dirty bytes plus bytes being copied is what remains.
      this.progressSetRemaining(this.bytesInFlight + cnt + this.activeWriteBytesInFlight);
      const delta = now() - this.lastPause;
      if (delta < JOB_SLICE_MS && this.ioStatus === 'ok') {
        if (this.inFlight >= MAX_IN_FLIGHT || this.pool.freeCount === 0 || (cnt === 0 && this.inFlight > 0)) {
          await this.waitForFreeSlot();
          continue;
        } else if (cnt !== 0) {
          await this.mirrorIteration();
        }
      }
      let shouldComplete = false;
      if (this.inFlight === 0 && cnt === 0) {
        if (!this.isReady()) {
          if (!(await this.flushTarget())) continue;
          // From now on a (soft) cancel completes all pending I/O and leaves a consistent copy.
          this.transitionToReady();
        }
        if (this.copyMode !== 'background') this.activelySynced = true;
        shouldComplete = this.shouldComplete || this.cancelRequested();
        this.absorbCatcher();
        cnt = this.bitmap.count();
      }
      if (cnt === 0 && shouldComplete) {
        // Stop new guest I/O, then check one last time that nothing came in, and flush.
        this.inDrain = true;
        await drainedBegin(this.source);
        this.absorbCatcher();
        cnt = this.bitmap.count();
        if (cnt > 0 || !(await this.flushTarget())) {
          drainedEnd(this.source);
          this.inDrain = false;
          continue;
        }
        this.drainedSource = true;
        return;
      }
      if (this.isReady() && !shouldComplete) {
        if (this.inFlight === 0 && cnt === 0) await this.sleep(JOB_SLICE_MS);
      } else {
        await this.ratelimitSleepUnlessClean();
      }
      this.lastPause = now();
    }
  }

  /** block_job_ratelimit_sleep(), except that a clean bitmap (guest reads copied the rest) ends the wait. */
  private async ratelimitSleepUnlessClean(): Promise<void> {
    let delay: number;
    do {
      delay = this.limit.calculateDelay(0);
      if (delay > 0) await this.sleep(delay);
      else await this.sleepZero();
    } while (delay > 0 && !this.isCancelled() && !(this.bitmap.count() === 0 && this.inFlight === 0));
  }

  /**
   * job_sleep_ns(0) without a timer: QEMU's zero-length timer fires in the next main-loop iteration, Node's
   * setTimeout(0) only after a millisecond or more -- once per iteration, that capped an unthrottled mirror at a
   * few hundred iterations a second (a 1 GiB qcow2 mirror spent about half its time waiting on it). The job lets
   * the event loop run once (I/O completions, guest requests), not busy meanwhile, then passes a pause point.
   */
  private async sleepZero(): Promise<void> {
    if (this.isCancelled()) return;
    this.busy = false;
    this.graph.kick();
    await new Promise<void>((resolve) => macrotask(resolve));
    this.busy = true;
    await this.pausePoint();
  }

  /**
   * Attach the job to the mirror node, in a drained section: writes that passed the node before (the catcher
   * has them once they are done) are folded into the bitmap, and in active modes every later write is copied
   * by the node itself, so the catcher goes. Without the drain, a write still in flight when the job attaches
   * would be recorded nowhere, and a copy racing with it could leave stale data on the target.
   */
  private async attachToMirrorNode(): Promise<void> {
    await this.inOwnDrain(async () => {
      await drainedBegin(this.source);
      try {
        this.absorbCatcher();
        this.state.job = this;
        if (this.copyMode !== 'background' && this.catcher) {
          this.source.releaseDirtyBitmap(this.catcher, true);
          this.catcher = null;
        }
      } finally {
        drainedEnd(this.source);
      }
    });
  }

  /** mirror_throttle(): yield at least every slice. */
  private async throttle(): Promise<void> {
    const t = now();
    if (t - this.lastPause > JOB_SLICE_MS) {
      this.lastPause = t;
      await this.sleep(0);
    } else {
      await this.pausePoint();
    }
  }

  /** mirror_dirty_init(): zero the target if needed, then mark what the source has. */
  private async dirtyInit(): Promise<void> {
    const g = this.granularity;
    const step = alignDown(2 ** 31 - 1, g);
    if (this.zeroTarget) {
      if (!this.targetCanZeroWithUnmap) {
        this.bitmap.set(0, this.bdevLength);
        return;
      }
      this.initialZeroingOngoing = true;
      for (let off = 0; off < this.bdevLength; ) {
        await this.throttle();
        if (this.isCancelled()) {
          this.initialZeroingOngoing = false;
          return;
        }
        if (this.inFlight >= MAX_IN_FLIGHT) {
          await this.waitForFreeSlot();
          continue;
        }
        const bytes = Math.min(this.bdevLength - off, step);
        this.mirrorPerform(off, bytes, 'zero');
        off += bytes;
      }
      await this.waitForAllIo();
      this.initialZeroingOngoing = false;
      if (this.ret) throw this.ret;
    }
    for (let off = 0; off < this.bdevLength; ) {
      await this.throttle();
      if (this.isCancelled()) return;
      const bytes = Math.min(this.bdevLength - off, step);
      if (this.skipZeroes) {
        // The target reads as zeroes already: only what does not read as zero needs copying.
        const st = await blockStatusAbove(this.source, undefined, false, true, off, bytes);
        const n = st.pnum > 0 ? st.pnum : bytes;
        if (!(st.ret & BlockStatus.ZERO)) this.bitmap.set(off, n);
        off += n;
        continue;
      }
      const r = await isAllocatedAbove(this.source, this.baseOverlay, true, off, bytes);
      const n = r.pnum > 0 ? r.pnum : bytes;
      if (r.depth > 0) this.bitmap.set(off, n);
      off += n;
    }
  }

  // --- background copying ------------------------------------------------------------------------------------

  private async waitForFreeSlot(): Promise<void> {
    if (this.inFlight === 0) return;
    await this.opFinished.wait();
  }

  private async waitForAllIo(): Promise<void> {
    while (this.inFlight > 0) await this.opFinished.wait();
  }

  /**
   * mirror_wait_on_conflicts(): wait until no operation covers [offset, offset+bytes). An operation that is
   * itself waiting is not waited on: it is (or will be) waiting for us.
   */
  private async waitOnConflicts(self: MirrorOp | null, offset: number, bytes: number): Promise<void> {
    const g = this.granularity;
    const c0 = Math.floor(offset / g);
    const c1 = Math.ceil((offset + bytes) / g);
    while (this.chunksInFlight.any(offset, bytes)) {
      let waited = false;
      for (const op of this.ops) {
        if (op === self) continue;
        const o0 = Math.floor(op.offset / g);
        const o1 = Math.ceil((op.offset + op.bytes) / g);
        if (o0 < c1 && c0 < o1) {
          if (op.waitingFor) continue;
          if (self) self.waitingFor = op;
          await op.done.wait();
          if (self) self.waitingFor = null;
          waited = true;
          break;
        }
      }
      if (!waited) break;
    }
  }

  /** mirror_iteration(): copy one run of dirty chunks (at most buf-size) starting at the next dirty chunk. */
  private async mirrorIteration(): Promise<void> {
    const g = this.granularity;
    let offset = this.bitmap.nextDirty(this.iterPos);
    if (offset < 0) offset = this.bitmap.nextDirty(0);
    if (offset < 0) return;
    offset = alignDown(offset, g);
    // Wait for requests to the very beginning of the area; the rest is cut short where it is in flight.
    await this.waitOnConflicts(null, offset, 1);
    await this.pausePoint();
    if (!this.bitmap.get(offset)) return;
    let nbChunks = 1;
    while (nbChunks * g < this.bufSize) {
      const next = offset + nbChunks * g;
      if (next >= this.bdevLength || !this.bitmap.get(next)) break;
      if (this.chunksInFlight.chunkBusy(next / g)) break;
      nbChunks++;
    }
    this.iterPos = offset + nbChunks * g;
    // Clear before the block status query (which may yield): a write racing in re-dirties and is copied later.
    this.bitmap.reset(offset, nbChunks * g);
    // Writers wait on this pseudo operation until the real ones are launched.
    const pseudo = new MirrorOp(offset, nbChunks * g, 'copy', 'pseudo');
    this.ops.add(pseudo);
    this.chunksInFlight.add(offset, nbChunks * g);
    try {
      while (nbChunks > 0 && offset < this.bdevLength) {
        let method: MirrorMethod = 'copy';
        let ioBytes: number;
        let status = -1;
        try {
          const r = await blockStatusAbove(this.source, undefined, false, true, offset, nbChunks * g);
          status = r.ret;
          ioBytes = r.pnum;
        } catch {
          ioBytes = Math.min(nbChunks * g, this.maxIoBytes);
        }
        if (status >= 0 && status & BlockStatus.DATA) ioBytes = Math.min(ioBytes, this.maxIoBytes);
        ioBytes -= ioBytes % g;
        if (ioBytes < g) {
          ioBytes = g;
        } else if (status >= 0 && !(status & BlockStatus.DATA)) {
          const [tOff, tBytes] = this.roundToTargetSubclusters(offset, ioBytes);
          if (tOff === offset && tBytes === ioBytes) method = status & BlockStatus.ZERO ? 'zero' : 'discard';
        }
        while (this.inFlight >= MAX_IN_FLIGHT) await this.waitForFreeSlot();
        if (this.ret) return;
        ioBytes = this.clipBytes(offset, ioBytes);
        ioBytes = this.mirrorPerform(offset, ioBytes, method);
        const accounted = method !== 'copy' && this.targetCanZeroWithUnmap ? 0 : ioBytes;
        offset += ioBytes;
        nbChunks -= Math.ceil(ioBytes / g);
        this.ratelimitProcessed(accounted);
      }
    } finally {
      this.ops.delete(pseudo);
      this.chunksInFlight.remove(pseudo.offset, pseudo.bytes);
      pseudo.done.wakeAll();
    }
  }

  /** Launch one operation; returns the bytes it handles from `offset` on (more than asked after alignment). */
  private mirrorPerform(offset: number, bytes: number, method: MirrorMethod): number {
    const op = new MirrorOp(offset, bytes, method, 'background');
    // mirrorCoPerform aligns synchronously, before its first await, so op.bytes is final when it returns.
    void this.mirrorCoPerform(op);
    return op.offset + op.bytes - offset;
  }

  /**
   * mirror_cow_align(): a target that cannot copy-on-write gets whole (sub)clusters the first time a cluster
   * is touched.
   */
  private mirrorAlignForCopy(op: MirrorOp): void {
    if (!this.cowBitmap) return;
    const g = this.granularity;
    const needCow = !this.cowGet(Math.floor(op.offset / g)) || !this.cowGet(Math.floor((op.offset + op.bytes - 1) / g));
    const [aOff, rounded] = needCow ? this.roundToTargetSubclusters(op.offset, op.bytes) : [op.offset, op.bytes];
    let aBytes = rounded;
    const maxBytes = this.pool.granularity * Math.floor(Math.max(this.bufSize, this.targetClusterSize) / g);
    if (aBytes > maxBytes) {
      aBytes = maxBytes;
      if (needCow) aBytes = alignDown(aBytes, this.targetClusterSize);
    }
    op.offset = aOff;
    op.bytes = this.clipBytes(aOff, aBytes);
  }

  /** One background operation from alignment to clean-up. */
  private async mirrorCoPerform(op: MirrorOp): Promise<void> {
    if (op.method === 'copy') this.mirrorAlignForCopy(op);
    this.inFlight++;
    this.bytesInFlight += op.bytes;
    this.ops.add(op);
    this.chunksInFlight.add(op.offset, op.bytes);
    let failure: MirrorIoError | null = null;
    try {
      if (op.method === 'copy') await this.mirrorCoCopy(op);
      else if (op.method === 'zero') await this.mirrorCoZero(op);
      else await this.mirrorCoDiscard(op);
    } catch (e) {
      failure = e instanceof MirrorIoError ? e : new MirrorIoError(toBlockError(e), false);
    }
    // The one clean-up path.
    if (failure) {
      this.bitmap.set(op.offset, op.bytes);
      const action = this.errorAction(failure.isRead ? this.onSourceError : this.onTargetError, failure.isRead, failure.cause.code);
      if (action === 'report' && !this.ret) this.ret = failure.cause;
    } else {
      if (this.cowBitmap) {
        const g = this.granularity;
        this.cowBitmap.fill(1, Math.floor(op.offset / g), Math.ceil((op.offset + op.bytes) / g));
      }
      if (!this.initialZeroingOngoing) this.progressUpdate(op.bytes);
    }
    if (op.chunks.length) this.pool.give(op.chunks);
    op.chunks = [];
    this.inFlight--;
    this.bytesInFlight -= op.bytes;
    this.chunksInFlight.remove(op.offset, op.bytes);
    this.ops.delete(op);
    op.done.wakeAll();
    this.opFinished.wakeAll();
    this.graph.kick();
  }

  /** Read from the source and write to the target, in one function. */
  private async mirrorCoCopy(op: MirrorOp): Promise<void> {
    const nb = Math.ceil(op.bytes / this.granularity);
    while (this.pool.freeCount < nb) await this.pool.released.wait();
    op.chunks = this.pool.take(nb);
    const last = op.bytes - (nb - 1) * this.granularity;
    const vec = new IOVector(op.chunks.map((c, i) => (i === nb - 1 ? c.subarray(0, last) : c)));
    try {
      await this.sourceEdge.preadv(op.offset, op.bytes, vec, 0);
    } catch (e) {
      throw new MirrorIoError(toBlockError(e), true);
    }
    try {
      await this.targetBe.pwritev(op.offset, op.bytes, vec, 0);
    } catch (e) {
      throw new MirrorIoError(toBlockError(e), false);
    }
  }

  private async mirrorCoZero(op: MirrorOp): Promise<void> {
    try {
      await this.targetBe.pwriteZeroes(op.offset, op.bytes, this.unmap ? ReqFlag.MAY_UNMAP : 0);
    } catch (e) {
      throw new MirrorIoError(toBlockError(e), false);
    }
  }

  private async mirrorCoDiscard(op: MirrorOp): Promise<void> {
    try {
      await this.targetBe.pdiscard(op.offset, op.bytes);
    } catch (e) {
      throw new MirrorIoError(toBlockError(e), false);
    }
  }

  private async flushTarget(): Promise<boolean> {
    try {
      await this.targetBe.flush();
      return true;
    } catch (e) {
      const err = toBlockError(e);
      const action = this.errorAction(this.onTargetError, false, err.code);
      if (action === 'report' && !this.ret) this.ret = err;
      return false;
    }
  }

  // --- active writes: called by the mirror node ---------------------------------------------------------------

  private shouldCopyToTarget(): boolean {
    return this.state.job === this && this.copyMode !== 'background' && !this.ret && !this.isCancelled() && !this.state.stop;
  }

  private async activeWritePrepare(offset: number, bytes: number): Promise<MirrorOp> {
    const op = new MirrorOp(offset, bytes, 'copy', 'active');
    this.inActiveWriteCounter++;
    // Requests copying now-stale data off this area must finish before fresh data goes to the target, so the
    // writes reach the target in order. Unlike background operations, the whole range is waited for.
    await this.waitOnConflicts(op, offset, bytes);
    this.chunksInFlight.add(offset, bytes);
    this.ops.add(op);
    return op;
  }

  private activeWriteSettle(op: MirrorOp): void {
    this.inActiveWriteCounter--;
    this.chunksInFlight.remove(op.offset, op.bytes);
    this.ops.delete(op);
    op.done.wakeAll();
  }

  /** A write the mirror node received from a parent (bdrv_mirror_top_do_write). */
  async guestWrite(method: MirrorMethod, offset: number, bytes: number, qiov: IOVector | null, flags: ReqFlags): Promise<void> {
    const copy = this.shouldCopyToTarget();
    let data = qiov;
    // The parent may reuse its buffer once the source write is done; source and target must see the same bytes.
    if (copy && method === 'copy' && qiov) data = IOVector.of(qiov.toBuffer().slice());
    const op = copy ? await this.activeWritePrepare(offset, bytes) : null;
    try {
      const src = this.sourceEdge;
      let error: unknown = null;
      try {
        if (method === 'copy') await src.pwritev(offset, bytes, data!, flags);
        else if (method === 'zero') await src.pwriteZeroes(offset, bytes, flags);
        else await src.pdiscard(offset, bytes);
      } catch (e) {
        error = e;
      }
      if (!copy) {
        this.activelySynced = false;
        this.bitmap.set(offset, bytes);
      }
      if (error) throw error;
      if (copy) await this.doSyncTargetWrite(method, offset, bytes, data, flags);
    } finally {
      if (op) this.activeWriteSettle(op);
    }
  }

  /**
   * The WRITE_UNCHANGED contract: data a copy-on-read node above read from the source (so the source has it
   * already) goes to the target only, and its chunks become clean. The copy-on-read request holds its chunk
   * (serialising at the mirror node's cluster size, which is the granularity) from its read to this write, so no
   * write can have changed the chunk in between.
   */
  async unchangedWrite(method: 'copy' | 'zero', offset: number, bytes: number, qiov: IOVector | null, flags: ReqFlags): Promise<void> {
    const op = await this.activeWritePrepare(offset, bytes);
    try {
      await this.doSyncTargetWrite(method, offset, bytes, qiov, flags & ~ReqFlag.WRITE_UNCHANGED);
    } finally {
      this.activeWriteSettle(op);
    }
    // Guest reads may have copied the rest: let a rate-limited job notice that it is done.
    if (this.bitmap.count() === 0 && this.inFlight === 0 && !this.paused) this.enter(false);
  }

  /** A chunk's unaligned part can't be written to the target now: the chunk is dirty or not yet copied whole. */
  private partialChunkMustWait(pos: number): boolean {
    if (this.bitmap.get(pos)) return true;
    if (this.cowBitmap && !this.cowGet(Math.floor(pos / this.granularity))) {
      this.bitmap.set(pos, 1);
      return true;
    }
    return false;
  }

  /** A write to a target cluster that was never copied whole would copy-on-write garbage: leave it dirty. */
  private touchesUncopiedTargetCluster(offset: number, end: number): boolean {
    if (!this.cowBitmap) return false;
    const g = this.granularity;
    const start = alignDown(offset, this.targetClusterSize);
    const stop = Math.min(alignUp(end, this.targetClusterSize), this.bdevLength);
    for (let c = Math.floor(start / g); c < Math.ceil(stop / g); c++) if (!this.cowGet(c)) return true;
    return false;
  }

  /**
   * do_sync_target_write(): after the source write, the same change goes to the target. Unaligned heads and tails
   * of dirty chunks stay dirty for the background copy (writing them would not make the chunk clean).
   */
  private async doSyncTargetWrite(method: MirrorMethod, offset: number, bytes: number, qiov: IOVector | null, flags: ReqFlags): Promise<void> {
    const g = this.granularity;
    let off = offset;
    let end = offset + bytes;
    if (off % g && this.partialChunkMustWait(off)) off = Math.min(alignUp(off, g), end);
    if (end % g && end > off && end < this.bdevLength && this.partialChunkMustWait(end - 1)) end = Math.max(alignDown(end, g), off);
    if (end <= off) return;
    if (this.touchesUncopiedTargetCluster(off, end)) {
      this.bitmap.set(off, end - off);
      this.activelySynced = false;
      return;
    }
    const n = end - off;
    this.bitmap.reset(off, n);
    this.progressIncreaseRemaining(n);
    this.activeWriteBytesInFlight += n;
    try {
      if (method === 'copy') await this.targetBe.pwritev(off, n, qiov!.slice(off - offset, n), flags & ReqFlag.FUA);
      else if (method === 'zero') await this.targetBe.pwriteZeroes(off, n, flags & (ReqFlag.FUA | ReqFlag.MAY_UNMAP));
      else await this.copySourceToTarget(off, n);
      this.progressUpdate(n);
    } catch (e) {
      const err = toBlockError(e);
      this.bitmap.set(alignDown(off, g), alignUp(end, g) - alignDown(off, g));
      this.activelySynced = false;
      const action = this.errorAction(this.onTargetError, false, err.code);
      if (action === 'report' && !this.ret) this.ret = err;
    } finally {
      this.activeWriteBytesInFlight -= n;
    }
  }

  /**
   * An active discard. QEMU discards the target as well, but a discard's result is up to each image (a raw file
   * punches a hole, a qcow2 keeps a partial cluster's data), so source and target could end up different. Here
   * the target receives what the source now reads: zeroes where it reads as zero, its data elsewhere.
   */
  private async copySourceToTarget(offset: number, bytes: number): Promise<void> {
    const end = offset + bytes;
    for (let off = offset; off < end; ) {
      const st = await blockStatusAbove(this.source, undefined, false, true, off, end - off);
      const n = Math.min(Math.max(st.pnum, 1), end - off, MAX_IO_BYTES);
      if (st.ret & BlockStatus.ZERO && !(st.ret & BlockStatus.DATA)) {
        await this.targetBe.pwriteZeroes(off, n, this.unmap ? ReqFlag.MAY_UNMAP : 0);
      } else {
        const buf = new Uint8Array(n);
        await this.sourceEdge.preadv(off, n, IOVector.of(buf), 0);
        await this.targetBe.pwrite(off, buf);
      }
      off += n;
    }
  }

  /** A guest flush in an active mode also makes the target durable; a failure follows on-target-error. */
  async flushTargetForGuest(): Promise<void> {
    if (!this.shouldCopyToTarget()) return;
    await this.flushTarget();
  }

  /** Block status of the mirror node in active modes: clean chunks are allocated, dirty ones are not. */
  mirrorTopBlockStatus(offset: number, bytes: number): { status: number; pnum: number } {
    const dirty = this.bitmap.get(offset);
    const end = offset + bytes;
    let next = dirty ? this.bitmap.nextZero(offset, end) : this.bitmap.nextDirty(offset, end);
    if (next < 0 || next > end) next = end;
    const pnum = Math.max(1, next - offset);
    return dirty ? { status: 0, pnum } : { status: BlockStatus.DATA, pnum };
  }

  // --- read-write-blocking's copy-on-read node --------------------------------------------------------------

  /** Graph changes the running job makes itself drain its nodes: don't wait for the job to pause. */
  private async inOwnDrain<T>(fn: () => Promise<T>): Promise<T> {
    const was = this.inDrain;
    this.inDrain = true;
    try {
      return await fn();
    } finally {
      this.inDrain = was;
    }
  }

  private async insertCorNode(): Promise<void> {
    this.corNode = await insertCopyOnRead(this.graph, this.mirrorTop);
  }

  private async removeCorNode(): Promise<void> {
    const cor = this.corNode;
    if (!cor) return;
    this.corNode = null;
    await this.graph.removeFilter(cor);
  }

  private refreshMirrorTopPerms(): void {
    Transaction.run((tran) => refreshPerms([this.mirrorTop], tran));
  }

  /**
   * block-job-change copy-mode: any mode to any mode (QEMU only goes from background to write-blocking).
   * Leaving background mode re-checks permissions (no writer may bypass the mirror node); on conflict nothing
   * changes.
   */
  protected override async onChange(opts: Record<string, unknown>): Promise<void> {
    const mode = (opts.copyMode ?? opts['copy-mode']) as MirrorCopyMode | undefined;
    if (mode !== 'background' && mode !== 'write-blocking' && mode !== 'read-write-blocking') {
      throw new BlockError('EINVAL', `Parameter 'copy-mode' does not accept value '${String(mode)}'`);
    }
    await this.withModeLock(() => this.changeMode(mode));
  }

  /** One mode change (or the job's attachment) at a time: each may insert or remove the copy-on-read node. */
  private withModeLock<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.modeLock.then(fn, fn);
    this.modeLock = run.catch(() => undefined);
    return run;
  }

  private async changeMode(mode: MirrorCopyMode): Promise<void> {
    const from = this.copyMode;
    if (mode === from) return;
    const attached = this.state.job === this;
    if (from === 'background') {
      this.state.copyMode = mode;
      try {
        this.refreshMirrorTopPerms();
      } catch (e) {
        this.state.copyMode = from;
        throw isBlockError(e) ? e.prepend(`Cannot change copy mode to '${mode}': `) : e;
      }
      // Before the job is attached the mirror node copies nothing yet: the catcher stays until then.
      if (attached) {
        this.absorbCatcher();
        if (this.catcher) this.source.releaseDirtyBitmap(this.catcher, true);
        this.catcher = null;
      }
    } else if (mode === 'background') {
      if (from === 'read-write-blocking') await this.removeCorNode();
      this.catcher ??= this.source.createDirtyBitmap({ granularity: this.granularity });
      this.state.copyMode = 'background';
      this.activelySynced = false;
      this.refreshMirrorTopPerms();
    } else {
      if (from === 'read-write-blocking') await this.removeCorNode();
      this.state.copyMode = mode;
    }
    if (mode === 'read-write-blocking' && attached && !this.corNode) await this.insertCorNode();
  }

  // --- job callbacks -----------------------------------------------------------------------------------------

  protected override onComplete(): void {
    if (this.replaces !== undefined) {
      const n = this.graph.findNode(this.replaces);
      if (!n) throw new BlockError('EINVAL', `Node name '${this.replaces}' not found`);
      this.toReplace = n;
    }
    this.shouldComplete = true;
    if (!this.paused) this.enter(false);
  }

  /** Before READY every cancel is a force cancel; in READY a soft cancel completes without pivot. */
  protected override onCancel(force: boolean): boolean {
    return force || !this.isReady();
  }

  protected override async onPause(): Promise<void> {
    await this.waitForAllIo();
  }

  protected override drainedPollExtra(): boolean {
    // Unless paused, cancelled or in our own drained section, the job may still issue requests.
    if (!this.paused && !this.isCancelled() && !this.inDrain) return true;
    return this.inFlight > 0;
  }

  override query(): JobInfo {
    return { ...super.query(), 'actively-synced': this.activelySynced };
  }

  protected override async prepare(): Promise<void> {
    await this.exitCommon(false);
  }

  protected override async abort(): Promise<void> {
    await this.exitCommon(true);
  }

  /** MIRROR_SOURCE_BACKING_CHAIN / MIRROR_OPEN_BACKING_CHAIN in mirror_exit_common(). */
  private async setTargetBacking(): Promise<void> {
    const target = this.target.skipFilters();
    if (this.backingMode === 'source') {
      // bdrv_backing_chain_next() of the source for sync=top (mirror_start()'s base); the source for sync=none.
      const backing = this.sync === 'none' ? this.source : this.sync === 'top' ? (this.source.backingChainNext() ?? null) : null;
      if ((target.backing?.node ?? null) !== backing) await this.graph.setBacking(target, backing);
    } else {
      await this.graph.openBackingFile(target);
    }
  }

  /** mirror_exit_common(): take the mirror (and copy-on-read) node out; pivot on success when completing. */
  private async exitCommon(aborting: boolean): Promise<void> {
    if (this.exited) return;
    this.exited = true;
    const graph = this.graph;
    if (this.chainFrozen) graph.unfreezeChain(this.source, this.target);
    this.chainFrozen = false;
    try {
      await this.removeCorNode();
      this.mirrorTop.releaseDirtyBitmap(this.bitmap, true);
      if (this.catcher) this.source.releaseDirtyBitmap(this.catcher, true);
      this.catcher = null;
      // The target backend holds WRITE on the target, which could conflict once the target takes over.
      this.targetBe.remove();
      this.state.stop = true;
      this.state.job = null;
      this.refreshMirrorTopPerms();
      this.releaseEdges();
      // drive-mirror's backing modes: the target's backing file is set before it takes the source's place. The
      // mirror node no longer holds WRITE on the source (state.stop), so the source can become a backing file.
      // A failure fails the job, but the pivot goes ahead (as mirror_exit_common() does).
      let backingError: unknown = null;
      if (!aborting && this.backingMode !== 'leave') {
        try {
          await this.setTargetBacking();
        } catch (e) {
          backingError = e;
        }
      }
      // A failed pivot fails the job, but the mirror node leaves the graph all the same (mirror_exit_common()
      // goes on to bdrv_replace_node(mirror_top_bs, ...) after a failed replace).
      let pivotError: unknown = null;
      if (!aborting && this.shouldComplete) {
        try {
          const toReplace = this.toReplace ?? this.source;
          if (toReplace.readOnly !== this.target.readOnly) await graph.reopen(this.target, { readOnly: toReplace.readOnly });
          await graph.replaceNode(toReplace, this.target);
        } catch (e) {
          pivotError = e;
        }
      }
      await graph.removeFilter(this.mirrorTop);
      if (this.activeCommit?.baseReadOnly && (aborting || !this.shouldComplete) && !this.target.readOnly) {
        await graph.reopen(this.target, { readOnly: true }).catch(() => undefined);
      }
      if (backingError) throw backingError;
      if (pivotError) throw pivotError;
    } finally {
      if (this.drainedSource) {
        this.drainedSource = false;
        drainedEnd(this.source);
      }
      this.inDrain = false;
    }
  }
}
