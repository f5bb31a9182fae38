import type { BlockNode } from './node.js';
import type { ChildRoles, PermBits } from './perm.js';
import { PERM_ALL } from './perm.js';
import { IOVector } from './iovec.js';
import type { ReqFlags } from './flags.js';
import type { PreallocMode } from './spec.js';
import * as io from './io.js';
import { copyRangeFrom, copyRangeTo } from './copy-range.js';
import { blockStatus, type BlockStatusResult } from './block-status.js';

/** Whoever holds an edge: a node, a BlockBackend, a job. */
export interface ChildParent {
  readonly parentKind: 'node' | 'backend' | 'job';
  /** QEMU's get_parent_desc(): "node 'x'", "block device 'sda'", "unnamed block device", "mirror job 'j'". */
  describeParent(): string;
  /** Node parents expose themselves, so walkers and cycle checks can follow edges upwards. */
  readonly asNode?: BlockNode;
  drainedBegin?(): void;
  drainedEnd?(): void;
  /** True while the parent still has work in flight that a drain must wait for. */
  drainedPoll?(): boolean;
  /** The child node changed size. */
  childResized?(child: Child): void;
}

/**
 * An edge parent → child (BdrvChild). I/O a parent issues goes through its edge, so the request pipeline can
 * check the edge's permissions: a write needs WRITE on the edge it comes through.
 */
export class Child {
  perm: PermBits = 0;
  shared: PermBits = PERM_ALL;
  /** A frozen link can't be changed by graph operations (a job relies on it). */
  frozen = false;
  /** replaceNode() leaves this edge where it is (a job's own edges). */
  stayAtNode = false;
  /** This edge has passed a drained_begin of its child node up to its parent. */
  quiescedParent = false;

  constructor(
    readonly name: string,
    public role: ChildRoles,
    public node: BlockNode,
    readonly parent: ChildParent,
  ) {}

  /** "node 'qcow0' (uses node 'file0' as 'file' child)" style description used in messages. */
  describe(): string {
    return `${this.parent.describeParent()} (uses node '${this.node.nodeName}' as '${this.name}' child)`;
  }

  preadv(offset: number, bytes: number, qiov: IOVector | null, flags: ReqFlags = 0): Promise<void> {
    return io.preadv(this, offset, bytes, qiov, flags);
  }

  async pread(offset: number, buf: Uint8Array, flags: ReqFlags = 0): Promise<Uint8Array> {
    await io.preadv(this, offset, buf.byteLength, IOVector.of(buf), flags);
    return buf;
  }

  pwritev(offset: number, bytes: number, qiov: IOVector, flags: ReqFlags = 0): Promise<void> {
    return io.pwritev(this, offset, bytes, qiov, flags);
  }

  pwrite(offset: number, buf: Uint8Array, flags: ReqFlags = 0): Promise<void> {
    return io.pwritev(this, offset, buf.byteLength, IOVector.of(buf), flags);
  }

  pwriteZeroes(offset: number, bytes: number, flags: ReqFlags = 0): Promise<void> {
    return io.pwriteZeroes(this, offset, bytes, flags);
  }

  pwritevCompressed(offset: number, bytes: number, qiov: IOVector): Promise<void> {
    return io.pwritevCompressed(this, offset, bytes, qiov);
  }

  pdiscard(offset: number, bytes: number): Promise<void> {
    return io.pdiscard(this, offset, bytes);
  }

  /** Copy offloading from this child's node to `dst` (see copy-range.ts); ENOTSUP means "copy through a buffer". */
  copyRangeFrom(offset: number, dst: Child, dstOffset: number, bytes: number, readFlags: ReqFlags = 0, writeFlags: ReqFlags = 0): Promise<void> {
    return copyRangeFrom(this, offset, dst, dstOffset, bytes, readFlags, writeFlags);
  }

  /** Copy offloading from `src` into this child's node. */
  copyRangeTo(src: Child, srcOffset: number, offset: number, bytes: number, readFlags: ReqFlags = 0, writeFlags: ReqFlags = 0): Promise<void> {
    return copyRangeTo(src, srcOffset, this, offset, bytes, readFlags, writeFlags);
  }

  flush(): Promise<void> {
    return io.flush(this.node);
  }

  truncate(offset: number, exact = true, prealloc: PreallocMode = 'off', flags: ReqFlags = 0): Promise<void> {
    return io.truncate(this, offset, exact, prealloc, flags);
  }

  blockStatus(offset: number, bytes: number, wantZero = true): Promise<BlockStatusResult> {
    return blockStatus(this.node, wantZero, offset, bytes);
  }

  getLength(): number {
    return this.node.totalBytes;
  }
}
