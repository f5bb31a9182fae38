import { BlockError, sectorRound, truncateFlags, type PreallocMode, type ReqFlags } from '@blockgraph/block-core';
import { runWriteSetup } from './setup.js';
import type { Qcow2State } from './state.js';

/**
 * Shared plumbing of the image-changing operations an instance offers besides I/O (snapshots, amend, backing
 * file change): they run inside a drained section of the node (nothing in flight, nothing new starts, like
 * QEMU's bdrv_drained_begin around them) and under the metadata lock.
 */

/** The instance's truncate (qcow2_co_truncate plus cache resizing). */
export type TruncateFn = (offset: number, exact: boolean, prealloc: PreallocMode, flags: ReqFlags) => Promise<void>;

/** Refuse on a broken or read-only image and finish the deferred read-write setup. */
export async function prepareForChange(s: Qcow2State): Promise<void> {
  s.checkUsable();
  if (s.readOnly) throw new BlockError('EACCES', 'Image is read-only');
  if (s.pendingWriteSetup) await runWriteSetup(s);
}

/** Run `fn` with the node drained (no requests in flight or starting). */
export function drained<T>(s: Qcow2State, fn: () => Promise<T>): Promise<T> {
  return s.graph.drained([s.node], fn);
}

/** Run `fn` under the metadata lock. */
export async function locked<T>(s: Qcow2State, fn: () => Promise<T>): Promise<T> {
  if (!s.lock.tryLock()) await s.lock.lock();
  try {
    return await fn();
  } finally {
    s.lock.unlock();
  }
}

/**
 * A resize the driver makes itself (snapshot goto, amend size=): the instance's truncate, then what the request
 * pipeline does after a truncate (new node size, dirty bitmaps, parents told).
 */
export async function resizeFromDriver(s: Qcow2State, truncate: TruncateFn, size: number): Promise<void> {
  await truncate(size, true, 'off', truncateFlags(s.node, size, 0));
  const node = s.node;
  node.totalBytes = sectorRound(s.size);
  node.writeGen++;
  for (const bm of node.dirtyBitmaps) bm.resize(node.totalBytes);
  for (const p of node.parents) p.parent.childResized?.(p);
}
