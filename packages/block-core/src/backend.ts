import type { Child, ChildParent } from './child.js';
import { BlockError, isBlockError } from './errors.js';
import type { ReqFlags } from './flags.js';
import type { Graph } from './graph.js';
import { IOVector } from './iovec.js';
import type { BlockNode } from './node.js';
import { Perm, type PermBits } from './perm.js';
import { refreshPerms, setEdgePerms } from './permission.js';
import type { PreallocMode } from './spec.js';
import { Transaction } from './transaction.js';
import { WaitQueue } from './wait-queue.js';
import type { BlockStatusResult } from './block-status.js';

export interface BackendOptions {
  /** Device name; shows in permission errors as "block device 'name'". */
  name?: string;
  /** Default: consistent read (+ write and resize unless the node is read-only). */
  perm?: PermBits;
  /** Default: consistent read and write unchanged (QEMU's BDRV_O_NO_SHARE for tools). */
  shared?: PermBits;
  /** Let writes extend the node (the image may grow); otherwise requests past the end fail with EIO. */
  allowBeyondEof?: boolean;
  /** Requests are not queued during drained sections (jobs use this for their own backends). */
  disableRequestQueuing?: boolean;
  /** Who this backend belongs to, for messages ("mirror job 'j'"); default "block device"/"unnamed block device". */
  describe?: string;
}

/**
 * bdrv_co_writev_vmstate() / bdrv_co_readv_vmstate(): the first node down the primary children (a filter's child,
 * a raw format's file) that keeps a VM state area serves the request.
 */
async function vmstateRequest(node: BlockNode, op: 'saveVmstate' | 'loadVmstate', qiov: IOVector, pos: number): Promise<void> {
  if (!Number.isSafeInteger(pos) || pos < 0) throw new BlockError('EIO', `Invalid VM state position ${pos}`);
  for (let n: BlockNode | undefined = node; n; n = n.primaryChild()?.node) {
    const fn = n.impl[op];
    if (fn) return fn.call(n.impl, qiov, pos);
  }
  throw new BlockError('ENOTSUP');
}

/** The handle an application, export or job does I/O through (BlockBackend): a root edge with its own perms. */
export class BlockBackend implements ChildParent {
  readonly parentKind = 'backend' as const;
  readonly name: string | undefined;
  root: Child | null = null;
  perm: PermBits;
  shared: PermBits;
  private readonly allowBeyondEof: boolean;
  private readonly disableRequestQueuing: boolean;
  private readonly description: string | undefined;
  private quiesceCounter = 0;
  private readonly resumed = new WaitQueue();
  inFlight = 0;

  constructor(
    readonly graph: Graph,
    opts: BackendOptions = {},
  ) {
    this.name = opts.name;
    this.perm = opts.perm ?? -1;
    this.shared = opts.shared ?? Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED;
    this.allowBeyondEof = opts.allowBeyondEof ?? false;
    this.disableRequestQueuing = opts.disableRequestQueuing ?? false;
    this.description = opts.describe;
  }

  describeParent(): string {
    if (this.description) return this.description;
    return this.name ? `block device '${this.name}'` : 'unnamed block device';
  }

  get node(): BlockNode {
    if (!this.root) throw new BlockError('ENOMEDIUM', 'No medium inserted');
    return this.root.node;
  }

  /** Attach to `node` with this backend's perms; refused (and nothing changes) on a permission conflict. */
  insert(node: BlockNode): void {
    if (this.root) throw new BlockError('EBUSY', 'Backend already has a node');
    if (this.perm === -1) this.perm = Perm.CONSISTENT_READ | (node.readOnly ? 0 : Perm.WRITE | Perm.RESIZE);
    Transaction.run((tran) => {
      const c = this.graph.attachEdge(this, node, 'root', 0, tran);
      setEdgePerms(c, { perm: this.perm, shared: this.shared }, tran);
      refreshPerms([node], tran);
      this.root = c;
      tran.add({ abort: () => (this.root = null) });
    });
    this.graph.backends.add(this);
  }

  /** Detach from the node (blk_remove_bs); its perms are released. */
  remove(): void {
    const c = this.root;
    this.graph.backends.delete(this);
    if (!c) return;
    this.graph.detachEdge(c);
    this.root = null;
    if (!c.node.closed) Transaction.run((tran) => refreshPerms([c.node], tran));
  }

  /** Change what this backend uses and shares; on conflict nothing changes. */
  setPerm(perm: PermBits, shared: PermBits): void {
    const c = this.root;
    if (!c) {
      this.perm = perm;
      this.shared = shared;
      return;
    }
    Transaction.run((tran) => {
      setEdgePerms(c, { perm, shared }, tran);
      refreshPerms([c.node], tran);
    });
    this.perm = perm;
    this.shared = shared;
  }

  // --- drain ---------------------------------------------------------------------------------------------

  drainedBegin(): void {
    this.quiesceCounter++;
  }

  drainedEnd(): void {
    if (--this.quiesceCounter === 0) this.resumed.wakeAll();
  }

  drainedPoll(): boolean {
    return this.inFlight > 0;
  }

  /** Drained, and new requests wait (in order, not lost) until it is resumed. */
  private get queuing(): boolean {
    return this.quiesceCounter > 0 && !this.disableRequestQueuing;
  }

  /** Wait while drained; then `enterNow`. */
  private async enter(offset: number, bytes: number, write: boolean): Promise<Child> {
    while (this.queuing) await this.resumed.wait();
    return this.enterNow(offset, bytes, write);
  }

  private enterNow(offset: number, bytes: number, write: boolean): Child {
    const c = this.root;
    if (!c) throw new BlockError('ENOMEDIUM', 'No medium inserted');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset < 0 || bytes < 0) {
      throw new BlockError('EIO', `Invalid request: offset ${offset}, length ${bytes}`);
    }
    if (!(write && this.allowBeyondEof)) {
      const len = c.node.totalBytes;
      if (offset > len || len - offset < bytes) {
        throw new BlockError('EIO', `Request [${offset}, +${bytes}) is beyond the end of the device (${len} bytes)`);
      }
    }
    this.inFlight++;
    return c;
  }

  private leave(): void {
    if (--this.inFlight === 0) this.graph.kick();
  }

  async preadv(offset: number, bytes: number, qiov: IOVector | null, flags: ReqFlags = 0): Promise<void> {
    const c = this.quiesceCounter > 0 ? await this.enter(offset, bytes, false) : this.enterNow(offset, bytes, false);
    try {
      await c.preadv(offset, bytes, qiov, flags);
    } finally {
      this.leave();
    }
  }

  async pread(offset: number, buf: Uint8Array, flags: ReqFlags = 0): Promise<Uint8Array> {
    await this.preadv(offset, buf.byteLength, IOVector.of(buf), flags);
    return buf;
  }

  /** Read `bytes` bytes into a new buffer. */
  async read(offset: number, bytes: number, flags: ReqFlags = 0): Promise<Uint8Array> {
    return this.pread(offset, new Uint8Array(bytes), flags);
  }

  async pwritev(offset: number, bytes: number, qiov: IOVector, flags: ReqFlags = 0): Promise<void> {
    const c = this.quiesceCounter > 0 ? await this.enter(offset, bytes, true) : this.enterNow(offset, bytes, true);
    try {
      await c.pwritev(offset, bytes, qiov, flags);
    } finally {
      this.leave();
    }
  }

  pwrite(offset: number, buf: Uint8Array, flags: ReqFlags = 0): Promise<void> {
    return this.pwritev(offset, buf.byteLength, IOVector.of(buf), flags);
  }

  async pwriteZeroes(offset: number, bytes: number, flags: ReqFlags = 0): Promise<void> {
    const c = await this.enter(offset, bytes, true);
    try {
      await c.pwriteZeroes(offset, bytes, flags);
    } finally {
      this.leave();
    }
  }

  async pwritevCompressed(offset: number, bytes: number, qiov: IOVector): Promise<void> {
    const c = await this.enter(offset, bytes, true);
    try {
      await c.pwritevCompressed(offset, bytes, qiov);
    } finally {
      this.leave();
    }
  }

  /**
   * blk_co_copy_range(): copy `bytes` at `offset` of this backend to `dst` at `dstOffset` without a buffer (copy
   * offloading). Rejects with ENOTSUP where a node on either side cannot offload; copy through a buffer then.
   */
  async copyRange(offset: number, dst: BlockBackend, dstOffset: number, bytes: number, readFlags: ReqFlags = 0, writeFlags: ReqFlags = 0): Promise<void> {
    // Enter both ends in one go: entering one and then waiting for the other to be resumed would count this request
    // as in flight on the first while a drain covering both waits for it.
    for (;;) {
      if (this.queuing) await this.resumed.wait();
      else if (dst.queuing) await dst.resumed.wait();
      else break;
    }
    const src = this.enterNow(offset, bytes, false);
    let out: Child;
    try {
      out = dst.enterNow(dstOffset, bytes, true);
    } catch (e) {
      this.leave();
      throw e;
    }
    try {
      await src.copyRangeFrom(offset, out, dstOffset, bytes, readFlags, writeFlags);
    } finally {
      dst.leave();
      this.leave();
    }
  }

  async pdiscard(offset: number, bytes: number): Promise<void> {
    const c = await this.enter(offset, bytes, true);
    try {
      await c.pdiscard(offset, bytes);
    } finally {
      this.leave();
    }
  }

  async flush(): Promise<void> {
    const c = await this.enter(0, 0, false);
    try {
      await c.flush();
    } finally {
      this.leave();
    }
  }

  async truncate(offset: number, exact = true, prealloc: PreallocMode = 'off', flags: ReqFlags = 0): Promise<void> {
    const c = await this.enter(0, 0, false);
    try {
      await c.truncate(offset, exact, prealloc, flags);
    } finally {
      this.leave();
    }
  }

  /** blk_make_empty() / bdrv_make_empty(): the node drops everything it holds (it reads as its backing file). */
  async makeEmpty(): Promise<void> {
    const node = this.node;
    if (!(this.perm & Perm.WRITE)) throw new BlockError('EPERM', `Cannot empty node '${node.nodeName}' without write permission`);
    if (!node.impl.makeEmpty) throw new BlockError('ENOTSUP', `${node.driver.name} does not support emptying nodes`);
    // The driver drains the node itself: this backend must not hold a request open meanwhile.
    try {
      await node.impl.makeEmpty();
    } catch (e) {
      if (isBlockError(e)) throw new BlockError(e.code, `Failed to empty ${node.filename ?? node.nodeName}: ${e.message}`, { cause: e });
      throw e;
    }
  }

  /** blk_save_vmstate(): write `buf` at `pos` of the VM state area; flushed when the write cache is off. */
  async saveVmstate(pos: number, buf: Uint8Array, writethrough = false): Promise<void> {
    // Counted in flight like any request (bdrv_inc_in_flight), so drained sections wait for it; the area lies
    // outside the disk, so the bounds are the driver's.
    const c = await this.enter(0, 0, false);
    try {
      await vmstateRequest(c.node, 'saveVmstate', IOVector.of(buf), pos);
    } finally {
      this.leave();
    }
    if (writethrough) await this.flush();
  }

  /** blk_load_vmstate(): read `buf.length` bytes at `pos` of the VM state area. */
  async loadVmstate(pos: number, buf: Uint8Array): Promise<void> {
    const c = await this.enter(0, 0, false);
    try {
      await vmstateRequest(c.node, 'loadVmstate', IOVector.of(buf), pos);
    } finally {
      this.leave();
    }
  }

  async blockStatus(offset: number, bytes: number, wantZero = true): Promise<BlockStatusResult> {
    const c = await this.enter(0, 0, false);
    try {
      return await c.blockStatus(offset, bytes, wantZero);
    } finally {
      this.leave();
    }
  }

  getLength(): number {
    return this.node.totalBytes;
  }
}

