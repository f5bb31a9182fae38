import {
  BlockError,
  BlockStatus,
  IOVector,
  ReqFlag,
  blockStatusAbove,
  isBlockError,
  type BlockStatusReply,
  type ReqFlags,
} from '@blockgraph/block-core';
import {
  INT_MAX,
  SubclusterType,
  compressedHostOffsetExact,
  compressedHostOffsetOrBeyond,
  compressedReadLength,
  hex,
  writeCompressedDescriptor,
  writeL2Bitmap,
} from '../format/index.js';
import {
  Mapping,
  abortL2Meta,
  allocHostOffset,
  clusterDiscard,
  finishL2Meta,
  getClusterTable,
  linkL2,
  map,
  mapLocked,
  mapSync,
  overlapsAllocation,
  sliceIndexOf,
  sliceOffsetOf,
  subclusterZeroize,
  waitForAllocations,
  type AllocResult,
} from './cluster.js';
import { L2Meta, type Pin } from './inflight.js';
import { checkMetadataOverlap, preWriteOverlapCheck, signalCorruption } from './overlap.js';
import { allocBytes, freeClusters, getRefcount, getRefcountCached } from './refcount.js';
import { DiscardType, type Qcow2State } from './state.js';
import { runWriteSetup } from './setup.js';

/**
 * The request paths (qcow2_co_preadv_part, qcow2_co_pwritev_part, qcow2_co_pwrite_zeroes, qcow2_co_pdiscard,
 * qcow2_co_pwritev_compressed_part, qcow2_co_block_status).
 *
 * Lookups that hit the L2 cache run without the metadata lock (everything between two awaits is atomic, and
 * the cache only holds complete tables); a miss, and every metadata change, takes the lock. Data I/O always
 * runs without it, so requests to different clusters proceed in parallel. Host ranges are coalesced: one file
 * request per host-contiguous run.
 */

/** Pieces of one request read in parallel (QEMU's task pool uses 8). */
const MAX_PARALLEL = 16;
/** QEMU's QCOW2_MAX_WORKERS: compressed clusters written at once by one request. */
const MAX_COMPRESSED_TASKS = 8;

async function settle(ps: Promise<void>[]): Promise<void> {
  let err: unknown;
  for (const p of ps) {
    try {
      await p;
    } catch (e) {
      err ??= e;
    }
  }
  if (err !== undefined) throw err;
}

async function readCompressed(s: Qcow2State, hi: number, lo: number, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const codec = await s.codec();
  // An offset at or beyond 2^53 is past the end of any file this driver opens: an I/O error, as QEMU finds when
  // it reads there, not our 2^53 limit.
  const coff = compressedHostOffsetOrBeyond(hi, lo, s.g);
  const clen = compressedReadLength(hi, lo, s.g);
  if (coff >= s.fileLength) {
    const at = hex(compressedHostOffsetExact(hi, lo, s.g));
    throw new BlockError('EIO', `qcow2: compressed cluster data at ${at} lies beyond the end of the image file (${s.fileLength} bytes)`);
  }
  const buf = new Uint8Array(clen);
  await s.file.preadv(coff, clen, IOVector.of(buf));
  const out = new Uint8Array(s.clusterSize);
  codec.decompress(buf, out);
  const oic = offset % s.clusterSize;
  qiov.copyFrom(out.subarray(oic, oic + bytes), 0);
}

function readPiece(s: Qcow2State, m: Mapping, offset: number, bytes: number, qiov: IOVector): Promise<void> | null {
  switch (m.type) {
    case SubclusterType.NORMAL:
      return s.dataFile.preadv(m.host, bytes, qiov);
    case SubclusterType.UNALLOCATED_PLAIN:
    case SubclusterType.UNALLOCATED_ALLOC: {
      const backing = s.backing;
      if (backing) {
        const avail = Math.max(0, Math.min(bytes, backing.node.totalBytes - offset));
        if (avail < bytes) qiov.fill(0, avail);
        if (avail) return backing.preadv(offset, avail, avail === bytes ? qiov : qiov.slice(0, avail));
        return null;
      }
      qiov.fill(0);
      return null;
    }
    case SubclusterType.COMPRESSED:
      return readCompressed(s, m.hi, m.lo, offset, bytes, qiov);
    default:
      qiov.fill(0);
      return null;
  }
}

/** Read guest data through the mapping (the driver's preadv, also used for copy-on-write). */
export async function readGuest(s: Qcow2State, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const ticket = s.tickets.enter();
  try {
    const m = new Mapping();
    let done = 0;
    let first: Promise<void> | null = null;
    let pending: Promise<void>[] | null = null;
    try {
      while (done < bytes) {
        const off = offset + done;
        if (!mapSync(s, off, bytes - done, m)) await map(s, off, bytes - done, m);
        const n = m.bytes;
        const p = readPiece(s, m, off, n, n === qiov.size && done === 0 ? qiov : qiov.slice(done, n));
        done += n;
        if (!p) continue;
        if (first === null && done === bytes) {
          first = p;
        } else {
          (pending ??= []).push(p);
          if (pending.length >= MAX_PARALLEL) {
            const batch = pending;
            pending = [];
            await settle(batch);
          }
        }
      }
    } catch (e) {
      // A later piece failed to map (a corrupt entry): the request ends only when the pieces already issued have,
      // so nothing of it still runs once the caller sees the error (and maybe closes the image).
      if (pending) await settle(pending).catch(() => undefined);
      throw e;
    }
    if (!pending) {
      if (first) await first;
    } else {
      // One failed piece fails the request, after all of them have ended.
      if (first) pending.push(first);
      await settle(pending);
    }
  } finally {
    s.tickets.leave(ticket);
  }
}

export function preadv(s: Qcow2State, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  try {
    s.checkUsable();
  } catch (e) {
    return Promise.reject(e);
  }
  return readGuest(s, offset, bytes, qiov);
}

// --- writes ----------------------------------------------------------------------------------------------------

let inPlaceHost = 0;

/**
 * The lock-free write path: bytes from `offset` that go in place into host-contiguous COPIED clusters whose
 * written subclusters are all allocated (nothing in the metadata changes). 0 when the slow path is needed.
 */
function inPlace(s: Qcow2State, offset: number, bytes: number): number {
  if (s.clusterAllocs.length && overlapsAllocation(s, offset, bytes)) return 0;
  const g = s.g;
  const l1Index = Math.floor(offset / g.bytesPerL2Table);
  if (l1Index >= s.l1Size) return 0;
  if (!(s.l1View.getUint32(l1Index * 8) & 0x80000000)) return 0;
  const l2 = s.l1L2Offset(l1Index);
  const cs = s.clusterSize;
  if (l2 === 0 || l2 % cs) return 0;
  const e = s.l2Cache.peek(sliceOffsetOf(s, l2, offset));
  if (!e) return 0;
  const v = e.view;
  const oic = offset % cs;
  const idx = sliceIndexOf(s, offset);
  const nb = Math.min(Math.ceil((oic + bytes) / cs), s.l2SliceEntries - idx);
  const esz = g.l2EntrySize;
  const ext = s.extendedL2;
  const guestCluster = offset - oic;
  let first = 0;
  let i = 0;
  for (; i < nb; i++) {
    const at = (idx + i) * esz;
    const hi = v.getUint32(at);
    const lo = v.getUint32(at + 4);
    // COPIED, not compressed, no zero flag, no reserved bits. (`>>>`: `hi & 0xff000000` would be a negative int32.)
    if (hi >>> 24 !== 0x80 || lo & 0x1ff) break;
    const host = (hi & 0x00ffffff) * 4294967296 + lo;
    if (i === 0) {
      if ((host === 0 && !s.hasDataFile) || host % cs) break;
      if (s.hasDataFile && host !== guestCluster) break;
      first = host;
    } else if (host !== first + i * cs) {
      break;
    }
    if (ext) {
      const alloc = v.getUint32(at + 12);
      const zero = v.getUint32(at + 8);
      if (alloc & zero) break;
      const from = i === 0 ? oic : 0;
      const to = Math.min(cs, oic + bytes - i * cs);
      const scs = g.subclusterSize;
      const a = Math.floor(from / scs);
      const b = Math.floor((to - 1) / scs) + 1;
      const mask = b - a === 32 ? 0xffffffff : ((2 ** (b - a) - 1) * 2 ** a) >>> 0;
      if ((alloc & mask) >>> 0 !== mask || zero & mask) break;
    }
  }
  if (i === 0) return 0;
  inPlaceHost = first + oic;
  return Math.min(bytes, i * cs - oic);
}

/** Overlap check for a data write; async only when something is hit. */
export function dataOverlap(s: Qcow2State, host: number, bytes: number): Promise<void> | undefined {
  if (s.hasDataFile) return undefined;
  if (checkMetadataOverlap(s, 0, host, bytes) === 0) return undefined;
  return preWriteOverlapCheck(s, 0, host, bytes, true);
}

async function writeInPlace(s: Qcow2State, host: number, bytes: number, qiov: IOVector): Promise<void> {
  const ticket = s.tickets.enter();
  try {
    const chk = dataOverlap(s, host, bytes);
    if (chk) await chk;
    await s.dataFile.pwritev(host, bytes, qiov);
  } finally {
    s.tickets.leave(ticket);
  }
}

/** The guest data of a COW region (zeroes where it reads as zero). */
async function readCowRegion(s: Qcow2State, m: L2Meta, offset: number, bytes: number): Promise<Uint8Array> {
  const buf = new Uint8Array(bytes);
  if (bytes && !m.cowIsZero) await readGuest(s, m.offset + offset, bytes, IOVector.of(buf));
  return buf;
}

/**
 * Write the data of an allocating write and the copy-on-write regions around it (handle_alloc_space,
 * merge_cow, perform_cow): zero-filled COW regions are written as one efficient zero write of the whole span
 * where the file can do that; otherwise data and COW regions go out in one write when they are contiguous.
 */
async function writeAllocated(s: Qcow2State, res: AllocResult, guestOffset: number, data: IOVector): Promise<void> {
  const metas = res.metas;
  const df = s.dataFile;
  if (df.node.supportedZeroFlags & ReqFlag.NO_FALLBACK) {
    for (const m of metas) {
      if (!m.hasCow || !m.cowIsZero) continue;
      // A new cluster is invisible until linked: zero the whole span at once. In a cluster that is already in
      // use only the COW regions are (the data area may hold data concurrent readers still see).
      const ranges: [number, number][] = m.keepOld
        ? [
            [m.allocOffset + m.cowStart.offset, m.cowStart.bytes],
            [m.allocOffset + m.cowEnd.offset, m.cowEnd.bytes],
          ]
        : [[m.allocOffset + m.cowStart.offset, m.cowEnd.offset + m.cowEnd.bytes - m.cowStart.offset]];
      try {
        for (const [start, n] of ranges) {
          if (!n) continue;
          await preWriteOverlapCheck(s, 0, start, n, true);
          await df.pwriteZeroes(start, n, ReqFlag.NO_FALLBACK);
        }
        m.skipCow = true;
      } catch (e) {
        if (!isBlockError(e, 'ENOTSUP') && !isBlockError(e, 'EAGAIN')) throw e;
      }
    }
  }
  const chk = dataOverlap(s, res.hostOffset, res.bytes);
  if (chk) await chk;

  const m0 = metas.length === 1 ? metas[0]! : null;
  if (
    m0 &&
    m0.hasCow &&
    !m0.skipCow &&
    m0.offset + m0.cowStart.offset + m0.cowStart.bytes === guestOffset &&
    m0.offset + m0.cowEnd.offset === guestOffset + res.bytes
  ) {
    const head = await readCowRegion(s, m0, m0.cowStart.offset, m0.cowStart.bytes);
    const tail = await readCowRegion(s, m0, m0.cowEnd.offset, m0.cowEnd.bytes);
    const all = IOVector.concat([head, data, tail]);
    const at = m0.allocOffset + m0.cowStart.offset;
    await df.pwritev(at, all.size, all);
    return;
  }
  await df.pwritev(res.hostOffset, res.bytes, data);
  for (const m of metas) if (m.hasCow && !m.skipCow) await performCow(s, m);
}

/** perform_cow(): copy the COW regions of an allocation into its new clusters (lock not held). */
export async function performCow(s: Qcow2State, m: L2Meta): Promise<void> {
  const df = s.dataFile;
  if (m.cowStart.bytes) {
    const head = await readCowRegion(s, m, m.cowStart.offset, m.cowStart.bytes);
    const at = m.allocOffset + m.cowStart.offset;
    await preWriteOverlapCheck(s, 0, at, head.length, true);
    await df.pwritev(at, head.length, IOVector.of(head));
  }
  if (m.cowEnd.bytes) {
    const tail = await readCowRegion(s, m, m.cowEnd.offset, m.cowEnd.bytes);
    const at = m.allocOffset + m.cowEnd.offset;
    await preWriteOverlapCheck(s, 0, at, tail.length, true);
    await df.pwritev(at, tail.length, IOVector.of(tail));
  }
}

async function withLock<T>(s: Qcow2State, fn: () => Promise<T>): Promise<T> {
  if (!s.lock.tryLock()) await s.lock.lock();
  try {
    return await fn();
  } finally {
    s.lock.unlock();
  }
}

/** Link the allocations of a finished write (or give them back when something failed). */
async function completeAllocations(s: Qcow2State, metas: L2Meta[], ok: boolean): Promise<void> {
  if (metas.length === 0) return;
  await withLock(s, async () => {
    let i = 0;
    try {
      if (ok) {
        for (; i < metas.length; i++) {
          await linkL2(s, metas[i]!);
          finishL2Meta(s, metas[i]!);
        }
      }
    } finally {
      for (; i < metas.length; i++) await abortL2Meta(s, metas[i]!);
    }
  });
}

/**
 * A pin on the host clusters of what allocHostOffset() returned, when part of it is clusters already in place
 * (COPIED, e.g. after the lock-free path missed the cache): no allocation guards those, and a discard that frees
 * one meanwhile must not have it handed out again before the write into it has ended. Null when every cluster is
 * a new allocation.
 */
function inPlacePin(s: Qcow2State, offset: number, res: AllocResult): Pin | null {
  const cs = s.clusterSize;
  const clusters = Math.floor((offset + res.bytes - 1) / cs) - Math.floor(offset / cs) + 1;
  let allocated = 0;
  for (const m of res.metas) allocated += m.nbClusters;
  if (allocated >= clusters) return null;
  return s.tickets.pin(Math.floor(res.hostOffset / cs), Math.ceil((res.hostOffset + res.bytes) / cs));
}

/**
 * The frame of a write that allocates, shared by plain writes and offloaded copies: allocHostOffset() under the
 * lock (with the in-place pin taken before anyone else can take it), `io` to put the data where it says, then
 * the allocations linked, or given back when `io` failed. The guest bytes covered.
 */
export async function writeAllocation(s: Qcow2State, offset: number, bytes: number, io: (res: AllocResult) => Promise<void>): Promise<number> {
  const { res, pin } = await withLock(s, async () => {
    const r = await allocHostOffset(s, offset, bytes);
    return { res: r, pin: inPlacePin(s, offset, r) };
  });
  try {
    await io(res);
  } catch (e) {
    await completeAllocations(s, res.metas, false);
    throw e;
  } finally {
    if (pin) s.tickets.unpin(pin);
  }
  await completeAllocations(s, res.metas, true);
  return res.bytes;
}

function allocatingWrite(s: Qcow2State, offset: number, bytes: number, qiov: IOVector, done: number): Promise<number> {
  return writeAllocation(s, offset, bytes, (res) => writeAllocated(s, res, offset, qiov.slice(done, res.bytes)));
}

export async function pwritev(s: Qcow2State, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  s.checkUsable();
  if (s.pendingWriteSetup) await runWriteSetup(s);
  let done = 0;
  while (done < bytes) {
    const off = offset + done;
    const n = inPlace(s, off, bytes - done);
    if (n > 0) {
      await writeInPlace(s, inPlaceHost, n, n === qiov.size ? qiov : qiov.slice(done, n));
      done += n;
      continue;
    }
    done += await allocatingWrite(s, off, bytes - done, qiov, done);
  }
}

// --- zero writes and discards ---------------------------------------------------------------------------------

/**
 * qcow2.c's is_zero(): does the range read as zeroes through the whole backing chain? Asked with want_zero, so
 * that a hole in a raw backing file counts (without it the file driver reports plain data), clamped to the image
 * length, and in a loop: zeroes of different kinds (unallocated in the whole chain, past the end of a short
 * backing file) come as separate extents.
 */
async function isZero(s: Qcow2State, offset: number, bytes: number): Promise<boolean> {
  bytes = Math.min(bytes, Math.max(0, s.node.totalBytes - offset));
  while (bytes > 0) {
    const r = await blockStatusAbove(s.node, undefined, false, true, offset, bytes);
    if (!(r.ret & BlockStatus.ZERO) || r.pnum === 0) return false;
    offset += r.pnum;
    bytes -= r.pnum;
  }
  return true;
}

export async function pwriteZeroes(s: Qcow2State, offset: number, bytes: number, flags: ReqFlags): Promise<void> {
  s.checkUsable();
  if (s.pendingWriteSetup) await runWriteSetup(s);
  const scs = s.g.subclusterSize;
  const head = offset % scs;
  const endRem = (offset + bytes) % scs;
  let tail = endRem ? scs - endRem : 0;
  if (offset + bytes === s.size) tail = 0;
  const unsupported = (): BlockError => new BlockError('ENOTSUP', 'qcow2: the range cannot be zeroed through metadata');
  if (head || tail) {
    if (!((await isZero(s, offset - head, head)) && (await isZero(s, offset + bytes, tail)))) throw unsupported();
    offset -= head;
    bytes = scs;
    await withLock(s, async () => {
      await waitForAllocations(s, offset, bytes);
      const m = new Mapping();
      await mapLocked(s, offset, bytes, m);
      if (
        m.type !== SubclusterType.UNALLOCATED_PLAIN &&
        m.type !== SubclusterType.UNALLOCATED_ALLOC &&
        m.type !== SubclusterType.ZERO_PLAIN &&
        m.type !== SubclusterType.ZERO_ALLOC
      ) {
        throw unsupported();
      }
      await subclusterZeroize(s, offset, bytes, (flags & ReqFlag.MAY_UNMAP) !== 0);
    });
    return;
  }
  await withLock(s, async () => {
    await waitForAllocations(s, offset, bytes);
    await subclusterZeroize(s, offset, bytes, (flags & ReqFlag.MAY_UNMAP) !== 0);
  });
}

export async function pdiscard(s: Qcow2State, offset: number, bytes: number): Promise<void> {
  s.checkUsable();
  if (s.pendingWriteSetup) await runWriteSetup(s);
  // Without zero clusters a discard would expose the backing file.
  if (s.version < 3 && s.backing) return;
  const cs = s.clusterSize;
  if (offset % cs || bytes % cs) {
    // Partial clusters are ignored, except the complete partial cluster at the end of an unaligned image.
    if (offset % cs || offset + bytes !== s.size) return;
  }
  await withLock(s, async () => {
    await waitForAllocations(s, offset, bytes);
    await clusterDiscard(s, offset, bytes, DiscardType.REQUEST, false);
  });
}

// --- compressed writes ----------------------------------------------------------------------------------------

async function compressedCluster(s: Qcow2State, offset: number, bytes: number, data: IOVector): Promise<void> {
  const cs = s.clusterSize;
  const codec = await s.codec();
  const buf = new Uint8Array(cs);
  data.copyTo(buf, 0, bytes);
  const out = codec.compress(buf, cs - 1);
  if (!out) {
    // Incompressible: stored as a normal cluster.
    await pwritev(s, offset, bytes, data);
    return;
  }
  let meta: L2Meta | null = null;
  let hostOffset = 0;
  await withLock(s, async () => {
    await waitForAllocations(s, offset, cs);
    const { slice, index } = await getClusterTable(s, offset);
    try {
      const v = slice.view;
      const at = index * s.g.l2EntrySize;
      const hi = v.getUint32(at);
      const lo = v.getUint32(at + 4);
      // Compression can't overwrite anything.
      if (hi & 0x00ffffff || lo & 0xfffffe00) {
        throw new BlockError('EIO', 'qcow2: compressed writes can only go to unallocated clusters');
      }
    } finally {
      s.l2Cache.put(slice);
    }
    hostOffset = await allocBytes(s, out.length);
    meta = new L2Meta(offset, hostOffset, 0, false, { offset: 0, bytes: 0 }, { offset: cs, bytes: 0 }, false);
    s.clusterAllocs.push(meta);
  });
  const m = meta as L2Meta | null;
  let ok = false;
  try {
    await preWriteOverlapCheck(s, 0, hostOffset, out.length, true);
    await s.file.pwritev(hostOffset, out.length, IOVector.of(out));
    ok = true;
  } finally {
    await withLock(s, async () => {
      try {
        if (ok) {
          const { slice, index } = await getClusterTable(s, offset);
          try {
            s.l2Cache.markDirty(slice);
            writeCompressedDescriptor(slice.view, index * s.g.l2EntrySize, hostOffset, out.length, s.g);
            if (s.extendedL2) writeL2Bitmap(slice.view, index, 0, 0);
          } finally {
            s.l2Cache.put(slice);
          }
        } else {
          await freeClusters(s, hostOffset, out.length, DiscardType.NEVER);
        }
      } finally {
        if (m) finishL2Meta(s, m);
      }
    });
  }
}

export async function pwritevCompressed(s: Qcow2State, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  s.checkUsable();
  if (s.pendingWriteSetup) await runWriteSetup(s);
  if (s.hasDataFile) throw new BlockError('ENOTSUP', 'qcow2: compression is not supported with an external data file');
  const cs = s.clusterSize;
  if (offset % cs) throw new BlockError('EINVAL', 'qcow2: compressed writes must start at a cluster boundary');
  if (bytes % cs && offset + bytes !== s.size) {
    throw new BlockError('EINVAL', 'qcow2: compressed writes must cover whole clusters');
  }
  // QEMU writes the clusters as tasks of a pool of QCOW2_MAX_WORKERS (qcow2_co_pwritev_compressed_part()). Every
  // task starts by compressing, so all of the first eight start before any fails (a cluster that is already
  // allocated, say), and the others still write theirs; the loop checks for a failure only before it waits for a
  // free slot, so one more task may start after it. The request fails with the first error, once all have ended.
  const running = new Set<Promise<void>>();
  let failure: { error: unknown } | null = null;
  for (let done = 0; done < bytes && !failure; done += cs) {
    if (running.size >= MAX_COMPRESSED_TASKS) await Promise.race(running);
    const n = Math.min(cs, bytes - done);
    const task: Promise<void> = compressedCluster(s, offset + done, n, qiov.slice(done, n))
      .catch((error: unknown) => {
        failure ??= { error };
      })
      .finally(() => running.delete(task));
    running.add(task);
  }
  await Promise.all(running);
  if (failure) throw (failure as { error: unknown }).error;
}

// --- block status ---------------------------------------------------------------------------------------------

/** qcow2_detect_metadata_preallocation(): many more clusters refcounted than the file physically holds. */
async function detectMetadataPreallocation(s: Qcow2State): Promise<boolean> {
  const getSize = s.file.node.impl.getAllocatedFileSize;
  if (!getSize) return false;
  let real: number;
  try {
    real = await getSize.call(s.file.node.impl);
  } catch {
    return false;
  }
  const realClusters = Math.floor(real / s.clusterSize);
  const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
  const end = Math.ceil(s.fileLength / s.clusterSize);
  let count = 0;
  try {
    for (let i = 0; i < end && count < threshold; i++) {
      // Clusters in use, whatever their refcount (QEMU's `cluster_count += !!refcount`).
      if ((getRefcountCached(s, i) ?? (await getRefcount(s, i))) !== 0) count++;
    }
  } catch {
    // qcow2_co_block_status() takes a failed detection as "not preallocated": a damaged refcount structure must
    // not fail block status (map, convert), which never needs it otherwise.
    return false;
  }
  return count >= threshold;
}

export async function blockStatus(s: Qcow2State, _wantZero: boolean, offset: number, bytes: number): Promise<BlockStatusReply> {
  s.checkUsable();
  if (s.metadataPreallocation === null) {
    await withLock(s, async () => {
      if (s.metadataPreallocation === null) s.metadataPreallocation = await detectMetadataPreallocation(s);
    });
  }
  const m = new Mapping();
  // qcow2_co_block_status() looks at most INT_MAX bytes ahead: an unallocated stretch longer than that is reported
  // in pieces, and without EOF until the last piece. `compare -s` sees the difference (its statuses include EOF).
  await map(s, offset, Math.min(INT_MAX, bytes), m);
  let status = 0;
  const reply: BlockStatusReply = { status: 0, pnum: m.bytes };
  const t = m.type;
  if (t === SubclusterType.NORMAL || t === SubclusterType.ZERO_ALLOC || t === SubclusterType.UNALLOCATED_ALLOC) {
    reply.map = m.host;
    reply.file = s.dataFile.node;
    status |= BlockStatus.OFFSET_VALID;
  }
  if (t === SubclusterType.ZERO_PLAIN || t === SubclusterType.ZERO_ALLOC) status |= BlockStatus.ZERO;
  else if (t !== SubclusterType.UNALLOCATED_PLAIN && t !== SubclusterType.UNALLOCATED_ALLOC) status |= BlockStatus.DATA;
  if (s.metadataPreallocation && status & BlockStatus.DATA && status & BlockStatus.OFFSET_VALID) status |= BlockStatus.RECURSE;
  // No RAW pass-through for data_file_raw: QEMU 7.2 reports the qcow2 layer's own status (allocated = data) and
  // does not look at holes in the data file.
  reply.status = status;
  return reply;
}

/** Used by the corrupt-image paths: an EIO for a structural problem found outside a lookup. */
export async function corruption(s: Qcow2State, message: string): Promise<never> {
  throw await signalCorruption(s, true, -1, -1, message);
}
