/**
 * The request pipeline (block/io.c): what happens to a request between the edge it enters through and the
 * driver. Validation → in-flight count → alignment padding (read-modify-write for writes) → tracked request
 * (serialising requests wait for overlapping ones) → permission checks → detect-zeroes → flag masking with
 * FUA / zero-write emulation → split at max-transfer → driver → finish (grow, mark dirty bitmaps, wake).
 *
 * Offsets can exceed 2^32, so alignment arithmetic uses `%` and `Math.floor`, never bit operators.
 */
import type { Child } from './child.js';
import { BlockError, isBlockError } from './errors.js';
import { ReqFlag, type ReqFlags } from './flags.js';
import { IOVector } from './iovec.js';
import type { BlockNode } from './node.js';
import { Perm } from './perm.js';
import type { PreallocMode } from './spec.js';
import { makeSerialising, trackRequest, untrackRequest, waitSerialising, type TrackedRequest } from './tracked.js';
import { copyOnReadv, waitForCopyUps } from './copy-on-read.js';
import { isAllocated } from './block-status.js';
import { trace, traceEnabled } from './trace.js';

/** Largest offset+length a request may reach (QEMU: largest multiple of 1 GiB ≤ INT64_MAX; here ≤ 2^53). */
export const MAX_LENGTH = Math.floor(Number.MAX_SAFE_INTEGER / 2 ** 30) * 2 ** 30;
/** Cap for a single driver call when the driver sets no max-transfer (BDRV_REQUEST_MAX_BYTES). */
export const MAX_REQUEST_BYTES = 2 ** 31 - 512;
/** Bounce buffers for zero-write emulation and copy-on-read: 16 MiB at most per round. */
export const MAX_BOUNCE_BUFFER = 16 * 2 ** 20;

export const alignDown = (n: number, a: number): number => n - (n % a);
/** QEMU counts sizes in 512-byte sectors: a 1000-byte file is a 1024-byte node whose tail reads as zeroes. */
export const sectorRound = (n: number): number => Math.ceil(n / 512) * 512;
export const alignUp = (n: number, a: number): number => {
  const r = n % a;
  return r ? n + a - r : n;
};

export function checkRequest(offset: number, bytes: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset < 0 || bytes < 0 || offset + bytes > MAX_LENGTH) {
    throw new BlockError('EIO', `Invalid request: offset ${offset}, length ${bytes}`);
  }
}

export function checkNodeOpen(node: BlockNode): void {
  if (!node.opened || node.closed) throw new BlockError('ENOMEDIUM', `Node '${node.nodeName}' is not open`);
}

export function requestEnd(node: BlockNode): void {
  if (--node.inFlight === 0) node.graph.kick();
}

function effectiveMaxTransfer(node: BlockNode, align: number): number {
  const m = node.limits.maxTransfer ? Math.min(node.limits.maxTransfer, MAX_REQUEST_BYTES) : MAX_REQUEST_BYTES;
  return Math.max(align, alignDown(m, align));
}

// --- read ------------------------------------------------------------------------------------------------

export async function preadv(child: Child, offset: number, bytes: number, qiov: IOVector | null, flags: ReqFlags): Promise<void> {
  const node = child.node;
  checkNodeOpen(node);
  checkRequest(offset, bytes);
  if (qiov ? qiov.size !== bytes : !(flags & ReqFlag.PREFETCH)) {
    throw new BlockError('EINVAL', 'Read request: I/O vector size does not match the request length');
  }
  if (bytes === 0) return;
  if (flags & ReqFlag.COPY_ON_READ && !(child.perm & (Perm.WRITE | Perm.WRITE_UNCHANGED))) {
    throw new BlockError('EPERM', `Copy-on-read through ${child.describe()} needs the 'write unchanged' permission`);
  }
  const t = traceEnabled() ? traceStart('read', node, offset, bytes, flags) : 0;
  node.inFlight++;
  try {
    const align = node.limits.requestAlignment;
    const start = alignDown(offset, align);
    const end = alignUp(offset + bytes, align);
    let vec = qiov;
    if (qiov && (start !== offset || end !== offset + bytes)) {
      vec = IOVector.concat([new Uint8Array(offset - start), qiov, new Uint8Array(end - offset - bytes)]);
    }
    const req = trackRequest(node, start, end - start, 'read');
    try {
      await alignedPreadv(child, req, start, end - start, align, vec, flags);
    } finally {
      untrackRequest(req);
    }
  } finally {
    requestEnd(node);
    if (t) traceEnd('read', node, offset, bytes, t);
  }
}

/**
 * bdrv_aligned_preadv(): the request is aligned and tracked. A plain read that fits the node's limits goes
 * straight to the driver without an async frame of its own: this runs for every read on every node of a chain.
 * Callers await the result, so a synchronous throw from the driver still becomes their rejection.
 */
export function alignedPreadv(
  child: Child,
  req: TrackedRequest,
  offset: number,
  bytes: number,
  align: number,
  qiov: IOVector | null,
  flags: ReqFlags,
): Promise<void> {
  const node = child.node;
  if (
    !(flags & (ReqFlag.COPY_ON_READ | ReqFlag.PREFETCH)) &&
    !req.serialising &&
    !node.serialisingInFlight &&
    bytes <= alignUp(Math.max(0, node.totalBytes - offset), align) &&
    bytes <= effectiveMaxTransfer(node, align)
  ) {
    return driverPreadv(node, offset, bytes, qiov, flags);
  }
  return alignedPreadvSlow(child, req, offset, bytes, align, qiov, flags);
}

async function alignedPreadvSlow(
  child: Child,
  req: TrackedRequest,
  offset: number,
  bytes: number,
  align: number,
  qiov: IOVector | null,
  flags: ReqFlags,
): Promise<void> {
  const node = child.node;
  if (flags & ReqFlag.COPY_ON_READ) makeSerialising(req, node.getClusterSize());
  if (req.serialising || node.serialisingInFlight) await waitSerialising(req);
  if (flags & ReqFlag.COPY_ON_READ) {
    flags &= ~ReqFlag.COPY_ON_READ;
    let allocatedAll = false;
    try {
      const r = await isAllocated(node, offset, bytes);
      allocatedAll = r.allocated && r.pnum === bytes;
    } catch {
      allocatedAll = false;
    }
    if (!allocatedAll) return copyOnReadv(child, offset, bytes, qiov, flags);
    if (flags & ReqFlag.PREFETCH) return;
  }
  // A driver that takes PREFETCH (the copy-on-read filter) gets it, with or without a buffer, as in QEMU; for
  // any other driver a PREFETCH read without a buffer has nothing left to do.
  if (flags & ReqFlag.PREFETCH && !(node.supportedReadFlags & ReqFlag.PREFETCH)) {
    if (!qiov) return;
    flags &= ~ReqFlag.PREFETCH;
  }
  const total = node.totalBytes;
  const maxBytes = alignUp(Math.max(0, total - offset), align);
  const maxTransfer = effectiveMaxTransfer(node, align);
  if (bytes <= maxBytes && bytes <= maxTransfer) return driverPreadv(node, offset, bytes, qiov, flags);
  for (let done = 0; done < bytes; ) {
    const left = bytes - done;
    let num: number;
    if (maxBytes > done) {
      num = Math.min(left, maxBytes - done, maxTransfer);
      await driverPreadv(node, offset + done, num, qiov ? qiov.slice(done, num) : null, flags);
    } else {
      num = left;
      qiov?.fill(0, done, num);
    }
    done += num;
  }
}

/** `qiov` is null only for a PREFETCH read reaching a driver that lists PREFETCH in its read flags. */
export function driverPreadv(node: BlockNode, offset: number, bytes: number, qiov: IOVector | null, flags: ReqFlags): Promise<void> {
  const impl = node.impl;
  if (impl.preadv) return impl.preadv(offset, bytes, qiov as IOVector, flags & node.supportedReadFlags);
  const c = node.filteredChild();
  if (c) return c.preadv(offset, bytes, qiov, flags);
  throw new BlockError('ENOTSUP', `Driver '${node.driver.name}' does not support reading`);
}

// --- write -----------------------------------------------------------------------------------------------

export function pwriteZeroes(child: Child, offset: number, bytes: number, flags: ReqFlags): Promise<void> {
  if (child.node.common.discard !== 'unmap') flags &= ~ReqFlag.MAY_UNMAP;
  return pwritev(child, offset, bytes, null, flags | ReqFlag.ZERO_WRITE);
}

export function pwritevCompressed(child: Child, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  return pwritev(child, offset, bytes, qiov, ReqFlag.WRITE_COMPRESSED);
}

export async function pwritev(child: Child, offset: number, bytes: number, qiov: IOVector | null, flags: ReqFlags): Promise<void> {
  const node = child.node;
  checkNodeOpen(node);
  checkRequest(offset, bytes);
  if (node.readOnly) throw new BlockError('EPERM', `Block node '${node.nodeName}' is read-only`);
  if (!(flags & ReqFlag.ZERO_WRITE) && (!qiov || qiov.size !== bytes)) {
    throw new BlockError('EINVAL', 'Write request: I/O vector size does not match the request length');
  }
  if (flags & ReqFlag.NO_WAIT && !(flags & ReqFlag.SERIALISING)) {
    throw new BlockError('EINVAL', 'NO_WAIT is only valid with SERIALISING');
  }
  // An empty compressed write still reaches the driver: qcow2 pads its file end with one (qemu-img convert -c).
  if (bytes === 0 && !(flags & ReqFlag.WRITE_COMPRESSED)) return;
  const t = traceEnabled() ? traceStart('write', node, offset, bytes, flags) : 0;
  node.inFlight++;
  try {
    if (node.copyUpLocks.size) await waitForCopyUps(node, offset, bytes, flags);
    const align = node.limits.requestAlignment;
    const req = trackRequest(node, offset, bytes, 'write');
    req.changesData = !(flags & ReqFlag.WRITE_UNCHANGED);
    try {
      if (flags & ReqFlag.ZERO_WRITE) await zeroPwritev(child, req, offset, bytes, align, flags);
      else if (offset % align || bytes % align) await paddedPwritev(child, req, offset, bytes, align, qiov!, flags);
      else await alignedPwritev(child, req, offset, bytes, align, qiov, flags);
    } finally {
      untrackRequest(req);
    }
  } finally {
    requestEnd(node);
    if (t) traceEnd('write', node, offset, bytes, t);
  }
}

/** Read the aligned block at `blockOffset` for read-modify-write. */
async function readBlock(child: Child, req: TrackedRequest, blockOffset: number, align: number): Promise<Uint8Array> {
  const buf = new Uint8Array(align);
  await alignedPreadv(child, req, blockOffset, align, align, IOVector.of(buf), 0);
  return buf;
}

async function paddedPwritev(
  child: Child,
  req: TrackedRequest,
  offset: number,
  bytes: number,
  align: number,
  qiov: IOVector,
  flags: ReqFlags,
): Promise<void> {
  // The head and tail blocks are read and written back: nobody may change them in between.
  makeSerialising(req, align);
  const start = alignDown(offset, align);
  const end = alignUp(offset + bytes, align);
  let vec: IOVector;
  if (end - start === align) {
    const block = await readBlock(child, req, start, align);
    qiov.copyTo(block, 0, bytes, offset - start);
    vec = IOVector.of(block);
  } else {
    const parts: (Uint8Array | IOVector)[] = [];
    if (offset !== start) parts.push((await readBlock(child, req, start, align)).subarray(0, offset - start));
    parts.push(qiov);
    if (end !== offset + bytes) {
      const tail = await readBlock(child, req, end - align, align);
      parts.push(tail.subarray(align - (end - offset - bytes)));
    }
    vec = IOVector.concat(parts);
  }
  await alignedPwritev(child, req, start, end - start, align, vec, flags);
}

/** bdrv_co_do_zero_pwritev(): unaligned head and tail become read-modify-write data writes. */
async function zeroPwritev(
  child: Child,
  req: TrackedRequest,
  offset: number,
  bytes: number,
  align: number,
  flags: ReqFlags,
): Promise<void> {
  const start = alignDown(offset, align);
  const end = alignUp(offset + bytes, align);
  if (start === offset && end === offset + bytes) return alignedPwritev(child, req, offset, bytes, align, null, flags);
  makeSerialising(req, align);
  const dataFlags = flags & ~(ReqFlag.ZERO_WRITE | ReqFlag.MAY_UNMAP);
  if (end - start === align) {
    const block = await readBlock(child, req, start, align);
    block.fill(0, offset - start, offset - start + bytes);
    return alignedPwritev(child, req, start, align, align, IOVector.of(block), dataFlags);
  }
  let cur = offset;
  if (offset !== start) {
    const block = await readBlock(child, req, start, align);
    block.fill(0, offset - start);
    await alignedPwritev(child, req, start, align, align, IOVector.of(block), dataFlags);
    cur = start + align;
  }
  const midEnd = alignDown(offset + bytes, align);
  if (midEnd > cur) {
    await alignedPwritev(child, req, cur, midEnd - cur, align, null, flags);
    cur = midEnd;
  }
  if (cur < offset + bytes) {
    const block = await readBlock(child, req, cur, align);
    block.fill(0, 0, offset + bytes - cur);
    await alignedPwritev(child, req, cur, align, align, IOVector.of(block), dataFlags);
  }
}

export function checkWritePermission(child: Child, offset: number, bytes: number, flags: ReqFlags): void {
  const node = child.node;
  if (flags & ReqFlag.WRITE_UNCHANGED) {
    if (!(child.perm & (Perm.WRITE | Perm.WRITE_UNCHANGED))) {
      throw new BlockError('EPERM', `Write request through ${child.describe()} without 'write unchanged' permission`);
    }
  } else if (!(child.perm & Perm.WRITE)) {
    throw new BlockError('EPERM', `Write request through ${child.describe()} without 'write' permission`);
  }
  if (offset + bytes > node.totalBytes && !(child.perm & Perm.RESIZE)) {
    throw new BlockError('EPERM', `Write beyond the end of node '${node.nodeName}' through ${child.describe()} without 'resize' permission`);
  }
}

/** bdrv_aligned_pwritev(): aligned, tracked. `qiov` is null for zero writes. */
export async function alignedPwritev(
  child: Child,
  req: TrackedRequest,
  offset: number,
  bytes: number,
  align: number,
  qiov: IOVector | null,
  flags: ReqFlags,
): Promise<void> {
  const node = child.node;
  if (flags & ReqFlag.SERIALISING) makeSerialising(req, node.getClusterSize());
  if (req.serialising || node.serialisingInFlight) await waitSerialising(req, (flags & ReqFlag.NO_WAIT) !== 0);
  checkWritePermission(child, offset, bytes, flags);
  if (
    !(flags & ReqFlag.ZERO_WRITE) &&
    node.common.detectZeroes !== 'off' &&
    qiov &&
    qiov.isZero()
  ) {
    flags |= ReqFlag.ZERO_WRITE;
    if (node.common.detectZeroes === 'unmap') flags |= ReqFlag.MAY_UNMAP;
  }
  let ok = false;
  try {
    if (flags & ReqFlag.ZERO_WRITE) {
      await doPwriteZeroes(node, offset, bytes, flags);
    } else if (flags & ReqFlag.WRITE_COMPRESSED) {
      await driverPwritevCompressed(node, offset, bytes, qiov!);
    } else {
      const maxTransfer = effectiveMaxTransfer(node, align);
      if (bytes <= maxTransfer) {
        await driverPwritev(node, offset, bytes, qiov!, flags);
      } else {
        for (let done = 0; done < bytes; ) {
          const num = Math.min(bytes - done, maxTransfer);
          const last = done + num === bytes;
          await driverPwritev(node, offset + done, num, qiov!.slice(done, num), last ? flags : flags & ~ReqFlag.FUA);
          done += num;
        }
      }
    }
    ok = true;
  } finally {
    writeRequestFinish(node, offset, bytes, ok ? 'write' : 'failed-write');
  }
}

/**
 * bdrv_co_write_req_finish(): grow the node past its end (only after a successful write), mark dirty bitmaps
 * (even after a failure: what the write did is unknown).
 */
export function writeRequestFinish(node: BlockNode, offset: number, bytes: number, type: 'write' | 'failed-write' | 'discard'): void {
  node.writeGen++;
  // Sizes are whole 512-byte sectors, as QEMU's total_sectors.
  const end = sectorRound(offset + bytes);
  if (type === 'write' && end > node.totalBytes) {
    node.totalBytes = end;
    for (const bm of node.dirtyBitmaps) bm.resize(end);
    for (const p of node.parents) p.parent.childResized?.(p);
  }
  if (node.dirtyBitmaps.length) node.markDirty(offset, bytes);
}

export async function driverPwritev(node: BlockNode, offset: number, bytes: number, qiov: IOVector, flags: ReqFlags): Promise<void> {
  const impl = node.impl;
  const emulateFua = (flags & ReqFlag.FUA) !== 0 && !(node.supportedWriteFlags & ReqFlag.FUA);
  if (impl.pwritev) {
    await impl.pwritev(offset, bytes, qiov, flags & node.supportedWriteFlags);
  } else {
    const c = node.filteredChild();
    if (!c) throw new BlockError('ENOTSUP', `Driver '${node.driver.name}' does not support writing`);
    await c.pwritev(offset, bytes, qiov, flags & (ReqFlag.FUA | ReqFlag.WRITE_UNCHANGED));
    return;
  }
  if (emulateFua) await flush(node);
}

async function driverPwritevCompressed(node: BlockNode, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  if (node.impl.pwritevCompressed) return node.impl.pwritevCompressed(offset, bytes, qiov);
  const c = node.filteredChild();
  if (c && !node.impl.pwritev) return c.pwritevCompressed(offset, bytes, qiov);
  throw new BlockError('ENOTSUP', `Compression is not supported for this drive ${node.nodeName}`);
}

let zeroBuf: Uint8Array | null = null;
/** A shared all-zero buffer for zero-write emulation; never written to. */
function zeroBuffer(bytes: number): Uint8Array {
  if (!zeroBuf || zeroBuf.byteLength < bytes) zeroBuf = new Uint8Array(Math.max(bytes, 65536));
  return zeroBuf.subarray(0, bytes);
}

/** Has an efficient zero-write path (the driver's own or a filter's child's). */
export function canWriteZeroes(node: BlockNode): boolean {
  if (node.impl.pwriteZeroes) return true;
  const c = node.filteredChild();
  return !node.impl.pwritev && c !== undefined && canWriteZeroes(c.node);
}

async function driverPwriteZeroes(node: BlockNode, offset: number, bytes: number, flags: ReqFlags): Promise<void> {
  const impl = node.impl;
  if (impl.pwriteZeroes) return impl.pwriteZeroes(offset, bytes, flags & node.supportedZeroFlags);
  const c = node.filteredChild();
  if (c && !impl.pwritev) {
    return c.pwriteZeroes(offset, bytes, flags & (ReqFlag.FUA | ReqFlag.MAY_UNMAP | ReqFlag.NO_FALLBACK | ReqFlag.WRITE_UNCHANGED));
  }
  throw new BlockError('ENOTSUP', `Driver '${node.driver.name}' has no efficient zero write`);
}

/** bdrv_co_do_pwrite_zeroes(): the driver's zero write, else a zero-filled buffer (unless NO_FALLBACK). */
export async function doPwriteZeroes(node: BlockNode, offset: number, bytes: number, flags: ReqFlags): Promise<void> {
  const align = Math.max(node.limits.pwriteZeroesAlignment || 1, node.limits.requestAlignment);
  const maxZeroes = node.limits.maxPwriteZeroes ? alignDown(node.limits.maxPwriteZeroes, align) || align : MAX_REQUEST_BYTES;
  let head = offset % align;
  const tail = (offset + bytes) % align;
  let needFlush = false;
  if (flags & ReqFlag.FUA && !(node.supportedZeroFlags & ReqFlag.FUA)) needFlush = true;
  while (bytes > 0) {
    let num = bytes;
    if (head) {
      num = Math.min(bytes, align - head);
      head = (head + num) % align;
    } else if (tail && num > align) {
      num -= tail;
    }
    if (num > maxZeroes) num = maxZeroes;
    try {
      await driverPwriteZeroes(node, offset, num, flags & ~ReqFlag.ZERO_WRITE);
    } catch (e) {
      if (!isBlockError(e, 'ENOTSUP') || flags & ReqFlag.NO_FALLBACK) throw e;
      const writeFlags = flags & ~(ReqFlag.ZERO_WRITE | ReqFlag.MAY_UNMAP | ReqFlag.FUA | ReqFlag.NO_FALLBACK);
      if (flags & ReqFlag.FUA) needFlush = true;
      const chunk = Math.min(effectiveMaxTransfer(node, node.limits.requestAlignment), MAX_BOUNCE_BUFFER);
      for (let done = 0; done < num; ) {
        const n = Math.min(num - done, chunk);
        await driverPwritev(node, offset + done, n, IOVector.of(zeroBuffer(n)), writeFlags);
        done += n;
      }
    }
    offset += num;
    bytes -= num;
  }
  if (needFlush) await flush(node);
}

// --- discard ---------------------------------------------------------------------------------------------

export async function pdiscard(child: Child, offset: number, bytes: number): Promise<void> {
  const node = child.node;
  checkNodeOpen(node);
  checkRequest(offset, bytes);
  if (node.readOnly) throw new BlockError('EPERM', `Block node '${node.nodeName}' is read-only`);
  if (!(child.perm & Perm.WRITE)) {
    throw new BlockError('EPERM', `Discard request through ${child.describe()} without 'write' permission`);
  }
  // Discard is advisory: dropped unless the node was opened with discard=unmap.
  if (node.common.discard !== 'unmap' || bytes === 0) return;
  const impl = node.impl;
  const forward = !impl.pdiscard && !impl.pwritev ? node.filteredChild() : undefined;
  if (!impl.pdiscard && !forward) return;
  node.inFlight++;
  try {
    await waitForCopyUps(node, offset, bytes, 0);
    const req = trackRequest(node, offset, bytes, 'discard');
    req.changesData = true;
    try {
      await waitSerialising(req);
      const ra = node.limits.requestAlignment;
      const align = Math.max(node.limits.pdiscardAlignment || 1, ra);
      const maxDiscard = node.limits.maxPdiscard ? Math.max(align, alignDown(node.limits.maxPdiscard, align)) : MAX_LENGTH;
      let head = offset % align;
      let tail = (offset + bytes) % align;
      let off = offset;
      let left = bytes;
      try {
        while (left > 0) {
          let num = left;
          if (head) {
            // Small requests up to the alignment boundary: devices may coalesce them.
            num = Math.min(left, align - head);
            if (num % ra) num %= ra;
            head = (head + num) % align;
          } else if (tail) {
            if (num > align) num -= tail;
            else if (tail % ra && tail > ra) {
              tail %= ra;
              num -= tail;
            }
          }
          if (num > maxDiscard) num = maxDiscard;
          try {
            if (impl.pdiscard) await impl.pdiscard(off, num);
            else await forward!.pdiscard(off, num);
          } catch (e) {
            if (!isBlockError(e, 'ENOTSUP')) throw e;
          }
          off += num;
          left -= num;
        }
      } finally {
        writeRequestFinish(node, offset, bytes, 'discard');
      }
    } finally {
      untrackRequest(req);
    }
  } finally {
    requestEnd(node);
  }
}

// --- flush -----------------------------------------------------------------------------------------------

/** bdrv_co_flush(): driver caches to the OS, data to disk, then every child we write to. */
export async function flush(node: BlockNode): Promise<void> {
  if (!node.opened || node.closed || node.readOnly) return;
  node.inFlight++;
  try {
    const gen = node.writeGen;
    while (node.activeFlush) await node.flushQueue.wait();
    node.activeFlush = true;
    try {
      const impl = node.impl;
      if (impl.flush) {
        await impl.flush();
      } else {
        if (impl.flushToOs) await impl.flushToOs();
        if (!node.common.cacheNoFlush && node.flushedGen !== gen && impl.flushToDisk) await impl.flushToDisk();
        let err: unknown;
        for (const c of node.children) {
          if (c.perm & (Perm.WRITE | Perm.WRITE_UNCHANGED)) {
            try {
              await flush(c.node);
            } catch (e) {
              err ??= e;
            }
          }
        }
        if (err) throw err;
      }
      node.flushedGen = gen;
    } finally {
      node.activeFlush = false;
      node.flushQueue.wakeOne();
    }
  } finally {
    requestEnd(node);
  }
}

// --- truncate --------------------------------------------------------------------------------------------

/**
 * The flags of a resize of `node` to `offset` as bdrv_co_truncate() completes them: ZERO_WRITE when the node grows
 * and its backing file is longer than it was, so that the grown area reads as zeroes and not as what the backing
 * file holds there. For drivers that resize themselves outside truncate() (qcow2's amend and snapshot goto).
 */
export function truncateFlags(node: BlockNode, offset: number, flags: ReqFlags): ReqFlags {
  const backing = node.backing;
  return offset > node.totalBytes && backing && backing.node.totalBytes > node.totalBytes ? flags | ReqFlag.ZERO_WRITE : flags;
}

export async function truncate(child: Child, offset: number, exact: boolean, prealloc: PreallocMode, flags: ReqFlags): Promise<void> {
  const node = child.node;
  checkNodeOpen(node);
  if (!Number.isSafeInteger(offset) || offset < 0) throw new BlockError('EINVAL', 'Image size cannot be negative');
  if (offset > MAX_LENGTH) throw new BlockError('EFBIG', 'Image size is too large');
  if (!(child.perm & Perm.RESIZE)) {
    throw new BlockError('EPERM', `Resize through ${child.describe()} without 'resize' permission`);
  }
  if (node.readOnly) throw new BlockError('EACCES', 'Image is read-only');
  const impl = node.impl;
  const forward = !impl.truncate && node.isFilter ? node.filteredChild() : undefined;
  if (!impl.truncate && !forward) throw new BlockError('ENOTSUP', 'Image format driver does not support resize');
  const oldSize = node.totalBytes;
  flags = truncateFlags(node, offset, flags);
  if (impl.truncate && flags & ~node.supportedTruncateFlags) throw new BlockError('ENOTSUP', 'Block driver does not support requested flags');
  node.inFlight++;
  const from = Math.min(oldSize, offset);
  const req = trackRequest(node, from, MAX_LENGTH - from, 'truncate');
  req.changesData = true;
  makeSerialising(req, 1);
  try {
    await waitSerialising(req);
    if (impl.truncate) await impl.truncate(offset, exact, prealloc, flags);
    else await forward!.truncate(offset, exact, prealloc, flags);
    node.totalBytes = sectorRound(await impl.getLength());
    node.writeGen++;
    for (const bm of node.dirtyBitmaps) bm.resize(node.totalBytes);
    for (const p of node.parents) p.parent.childResized?.(p);
  } finally {
    untrackRequest(req);
    requestEnd(node);
  }
}

// --- tracing ---------------------------------------------------------------------------------------------

const now = (): number => (typeof performance !== 'undefined' ? performance.now() : Date.now());

function traceStart(op: string, node: BlockNode, offset: number, bytes: number, flags: ReqFlags): number {
  trace(`request.${op}.start`, { node: node.nodeName, offset, bytes, flags });
  return now();
}

function traceEnd(op: string, node: BlockNode, offset: number, bytes: number, t0: number): void {
  trace(`request.${op}.end`, { node: node.nodeName, offset, bytes, ms: now() - t0 });
}
