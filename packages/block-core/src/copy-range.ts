/**
 * Copy offloading (bdrv_co_copy_range_from / _to, block/io.c): a range goes from one node to another without
 * passing through a buffer. The source side walks down to where the bytes are (a format maps the guest range to
 * host offsets in its file), then the destination side walks down to where they go (a format allocates), and the
 * protocol driver at the bottom copies (the file driver with copy_file_range). A node on the way that cannot throws
 * ENOTSUP, and the caller copies through a buffer instead, as `qemu-img convert -C` does.
 *
 * The source side is a tracked read on each node it passes; the destination side is a tracked write, with the
 * write's permission checks, serialisation and dirty-bitmap marking.
 */
import type { Child } from './child.js';
import { BlockError } from './errors.js';
import { ReqFlag, type ReqFlags } from './flags.js';
import {
  checkNodeOpen,
  checkRequest,
  checkWritePermission,
  pwriteZeroes,
  requestEnd,
  writeRequestFinish,
} from './io.js';
import { trackRequest, untrackRequest, waitSerialising } from './tracked.js';
import { waitForCopyUps } from './copy-on-read.js';

/** Refuses where either end has no offloading; a ZERO_WRITE in `writeFlags` needs no source and is a zero write. */
function checkEnds(src: Child | null, srcOffset: number, dst: Child, dstOffset: number, bytes: number): Child {
  checkNodeOpen(dst.node);
  checkRequest(dstOffset, bytes);
  if (!src) throw new BlockError('ENOMEDIUM', 'Copy offloading without a source');
  checkNodeOpen(src.node);
  checkRequest(srcOffset, bytes);
  if (!src.node.impl.copyRangeFrom || !dst.node.impl.copyRangeTo) {
    throw new BlockError('ENOTSUP', `Copy offloading from '${src.node.nodeName}' to '${dst.node.nodeName}' is not supported`);
  }
  return src;
}

/** bdrv_co_copy_range_from(): `src` is the edge into the node the bytes are read from. */
export async function copyRangeFrom(
  src: Child | null,
  srcOffset: number,
  dst: Child,
  dstOffset: number,
  bytes: number,
  readFlags: ReqFlags,
  writeFlags: ReqFlags,
): Promise<void> {
  if (writeFlags & ReqFlag.ZERO_WRITE) return pwriteZeroes(dst, dstOffset, bytes, writeFlags & ~ReqFlag.ZERO_WRITE);
  const from = checkEnds(src, srcOffset, dst, dstOffset, bytes).node;
  if (bytes === 0) return;
  from.inFlight++;
  const req = trackRequest(from, srcOffset, bytes, 'read');
  try {
    await waitSerialising(req);
    await from.impl.copyRangeFrom!(src!, srcOffset, dst, dstOffset, bytes, readFlags, writeFlags);
  } finally {
    untrackRequest(req);
    requestEnd(from);
  }
}

/** bdrv_co_copy_range_to(): `dst` is the edge into the node the bytes are written to. */
export async function copyRangeTo(
  src: Child | null,
  srcOffset: number,
  dst: Child,
  dstOffset: number,
  bytes: number,
  readFlags: ReqFlags,
  writeFlags: ReqFlags,
): Promise<void> {
  if (writeFlags & ReqFlag.ZERO_WRITE) return pwriteZeroes(dst, dstOffset, bytes, writeFlags & ~ReqFlag.ZERO_WRITE);
  checkEnds(src, srcOffset, dst, dstOffset, bytes);
  const to = dst.node;
  if (to.readOnly) throw new BlockError('EPERM', `Block node '${to.nodeName}' is read-only`);
  if (bytes === 0) return;
  to.inFlight++;
  try {
    if (to.copyUpLocks.size) await waitForCopyUps(to, dstOffset, bytes, writeFlags);
    const req = trackRequest(to, dstOffset, bytes, 'write');
    req.changesData = !(writeFlags & ReqFlag.WRITE_UNCHANGED);
    let ok = false;
    try {
      await waitSerialising(req);
      checkWritePermission(dst, dstOffset, bytes, writeFlags);
      await to.impl.copyRangeTo!(src!, srcOffset, dst, dstOffset, bytes, readFlags, writeFlags);
      ok = true;
    } finally {
      writeRequestFinish(to, dstOffset, bytes, ok ? 'write' : 'failed-write');
      untrackRequest(req);
    }
  } finally {
    requestEnd(to);
  }
}
