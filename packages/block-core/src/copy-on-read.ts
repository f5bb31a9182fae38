/**
 * Copy-on-read (bdrv_co_do_copy_on_readv): data a read finds below a node (in its backing chain) is written back
 * into the node, so the next read finds it there. The write-back carries WRITE_UNCHANGED: it must not change
 * what anybody reads.
 *
 * Serialisation across layers. QEMU makes the COR request serialising on the node where COR runs, which keeps
 * out writes entering *that* node — but a write entering a node further down the data path (another parent of
 * the format node under a raw/filter layer) could land between the COR read and the write-back, and the
 * write-back would then overwrite it with stale data. Here a copy-up also takes a *copy-up lock* on every node
 * of its data path below: each lock waits for overlapping data-changing writes in flight there to finish, and
 * data-changing writes arriving later wait for the copy-up to end. WRITE_UNCHANGED writes (the copy-up's own
 * write-back, nested copy-ups) pass, so a copy-up never waits for itself.
 */
import type { Child } from './child.js';
import { BlockStatus, ReqFlag, type ReqFlags } from './flags.js';
import { IOVector, isZeroBuffer } from './iovec.js';
import type { BlockNode } from './node.js';
import { blockStatus } from './block-status.js';
import { alignDown, alignUp, canWriteZeroes, doPwriteZeroes, driverPreadv, driverPwritev, MAX_BOUNCE_BUFFER, MAX_REQUEST_BYTES } from './io.js';
import { WaitQueue } from './wait-queue.js';
import { trace, traceEnabled } from './trace.js';

export interface CopyUpLock {
  readonly node: BlockNode;
  readonly offset: number;
  readonly bytes: number;
  readonly released: WaitQueue;
}

function overlaps(aOff: number, aLen: number, bOff: number, bLen: number): boolean {
  return aOff < bOff + bLen && bOff < aOff + aLen;
}

/** Data-changing writes wait here while an overlapping copy-up holds this node. */
export async function waitForCopyUps(node: BlockNode, offset: number, bytes: number, flags: ReqFlags): Promise<void> {
  if (node.copyUpLocks.size === 0 || flags & ReqFlag.WRITE_UNCHANGED) return;
  for (;;) {
    let hit: CopyUpLock | undefined;
    for (const l of node.copyUpLocks) {
      if (overlaps(l.offset, l.bytes, offset, bytes)) {
        hit = l;
        break;
      }
    }
    if (!hit) return;
    await hit.released.wait();
  }
}

/**
 * The next node of a copy-up's data path: a pass-through driver's child (raw with its offset), or a plain
 * filter's filtered child when the filter forwards WRITE_UNCHANGED. A node with its own block status (a
 * format, the mirror node) is where the data path ends.
 */
function nextOnDataPath(node: BlockNode, offset: number): { node: BlockNode; offset: number } | null {
  const impl = node.impl;
  if (impl.passthroughChild) {
    const pt = impl.passthroughChild(offset);
    return pt ? { node: pt.child.node, offset: pt.offset } : null;
  }
  if (node.isFilter && !impl.blockStatus) {
    const c = node.filteredChild();
    const forwardsUnchanged = !impl.pwritev || (node.supportedWriteFlags & ReqFlag.WRITE_UNCHANGED) !== 0;
    if (c && forwardsUnchanged) return { node: c.node, offset };
  }
  return null;
}

async function acquireCopyUpLocks(top: BlockNode, offset: number, bytes: number): Promise<CopyUpLock[]> {
  const locks: CopyUpLock[] = [];
  for (let step = nextOnDataPath(top, offset); step; step = nextOnDataPath(step.node, step.offset)) {
    const { node } = step;
    const off = step.offset;
    // Wait for writes already in flight here; nothing can slip in between the last check and the insert.
    for (;;) {
      let busy: { waitEnd(): Promise<void> } | undefined;
      for (const r of node.tracked) {
        if (r.changesData && r.overlaps(off, bytes)) {
          busy = r;
          break;
        }
      }
      if (!busy) break;
      await busy.waitEnd();
    }
    const lock: CopyUpLock = { node, offset: off, bytes, released: new WaitQueue() };
    node.copyUpLocks.add(lock);
    locks.push(lock);
  }
  return locks;
}

function releaseCopyUpLocks(locks: CopyUpLock[]): void {
  for (const l of locks) {
    l.node.copyUpLocks.delete(l);
    l.released.wakeAll();
  }
}

/**
 * Read [offset, offset+bytes) of `child.node` copying unallocated parts up. The caller made the request
 * serialising at cluster granularity. `qiov` is null for PREFETCH (copy only).
 */
export async function copyOnReadv(child: Child, offset: number, bytes: number, qiov: IOVector | null, flags: ReqFlags): Promise<void> {
  const node = child.node;
  // bdrv_round_to_subclusters(): with qcow2's extended L2 entries only the touched subclusters are copied.
  const cluster = node.impl.getInfo?.().subclusterSize ?? node.getClusterSize();
  const start = alignDown(offset, cluster);
  const end = alignUp(offset + bytes, cluster);
  const maxTransfer = node.limits.maxTransfer ? Math.min(node.limits.maxTransfer, MAX_REQUEST_BYTES) : MAX_REQUEST_BYTES;
  const fill = qiov && !(flags & ReqFlag.PREFETCH) ? qiov : null;
  let bounce: Uint8Array | null = null;
  const locks = await acquireCopyUpLocks(node, start, end - start);
  try {
    for (let cur = start; cur < end; ) {
      let allocated: boolean;
      let pnum: number;
      try {
        const r = await blockStatus(node, false, cur, Math.min(end - cur, maxTransfer));
        allocated = (r.ret & BlockStatus.ALLOCATED) !== 0;
        pnum = r.pnum;
        // The image ends in the middle of the cluster.
        if (pnum === 0) break;
      } catch {
        // Treat errors as unallocated; the read below will fail with a better errno if the node is broken.
        allocated = false;
        pnum = Math.min(end - cur, maxTransfer);
      }
      // The part of [cur, cur+pnum) the caller asked for.
      const wantFrom = Math.max(cur, offset);
      const wantTo = Math.min(cur + pnum, offset + bytes);
      if (!allocated) {
        pnum = Math.min(pnum, MAX_BOUNCE_BUFFER);
        bounce ??= new Uint8Array(Math.min(MAX_BOUNCE_BUFFER, maxTransfer, end - start));
        const buf = bounce.subarray(0, pnum);
        await driverPreadv(node, cur, pnum, IOVector.of(buf), 0);
        if (traceEnabled()) trace('cor.write', { node: node.nodeName, offset: cur, bytes: pnum });
        if (canWriteZeroes(node) && isZeroBuffer(buf)) {
          await doPwriteZeroes(node, cur, pnum, ReqFlag.WRITE_UNCHANGED);
        } else {
          await driverPwritev(node, cur, pnum, IOVector.of(buf), ReqFlag.WRITE_UNCHANGED);
        }
        const to = Math.min(cur + pnum, offset + bytes);
        if (fill && to > wantFrom) fill.copyFrom(buf.subarray(wantFrom - cur, to - cur), wantFrom - offset);
      } else if (fill && wantTo > wantFrom) {
        await driverPreadv(node, wantFrom, wantTo - wantFrom, fill.slice(wantFrom - offset, wantTo - wantFrom), 0);
      }
      cur += pnum;
    }
  } finally {
    releaseCopyUpLocks(locks);
  }
}
