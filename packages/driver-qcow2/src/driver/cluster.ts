import { BlockError, ReqFlag } from '@blockgraph/block-core';
import {
  ClusterType,
  L2EntryFlag,
  SubclusterType,
  hex,
  hexAlt,
  l2ClusterType,
  l2SubclusterType,
  subclusterRange,
  subclusterRunLength,
  writeL2Bitmap,
  writeL2Entry,
  writeL2EntryRaw,
  type SubclusterType as SubclusterTypeT,
} from '../format/index.js';
import type { CacheEntry } from './cache.js';
import { markDirty } from './header-io.js';
import { L2Meta } from './inflight.js';
import { growL1Table, writeL1Entry } from './l1.js';
import { signalCorruption } from './overlap.js';
import { allocClusters, allocClustersAt, freeAnyCluster, freeClusters, processDiscards } from './refcount.js';
import { DiscardType, type Qcow2State } from './state.js';

/**
 * Guest-to-host mapping and guest cluster allocation (QEMU's qcow2-cluster.c): lookups through the L1 table
 * and the L2 cache, L2 table allocation and copy-on-write, the allocating-write planner (in-flight
 * dependencies, COPIED clusters written in place, new clusters with their copy-on-write regions), linking new
 * clusters into L2 tables, and the metadata side of zero writes and discards.
 */

const TWO32 = 4294967296;

/** Where a guest range lives: result of a lookup (fields valid according to `type`). */
export class Mapping {
  type: SubclusterTypeT = SubclusterType.UNALLOCATED_PLAIN;
  /** Host offset of the guest offset (NORMAL, ZERO_ALLOC, UNALLOCATED_ALLOC). */
  host = 0;
  /** Raw L2 entry halves (for compressed descriptors). */
  hi = 0;
  lo = 0;
  /** Guest bytes, from the looked-up offset, that share this mapping (contiguous on the host). */
  bytes = 0;
}

/** Bits 9..55 of an entry as a number, without range checks (for comparisons). */
function entryOffsetBits(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
}

/** Offset in the file of the cache slice holding the entry for guest `offset` of table `l2Offset`. */
export function sliceOffsetOf(s: Qcow2State, l2Offset: number, offset: number): number {
  const inTable = Math.floor(offset / s.clusterSize) % s.g.l2Entries;
  return l2Offset + Math.floor(inTable / s.l2SliceEntries) * s.l2SliceBytes;
}

/** Index of guest `offset`'s entry inside its cache slice. */
export function sliceIndexOf(s: Qcow2State, offset: number): number {
  return Math.floor(offset / s.clusterSize) % s.l2SliceEntries;
}

/** The first subcluster, from `idx` in the slice, with the given data. */
function entryAt(s: Qcow2State, v: DataView, idx: number): { hi: number; lo: number; alloc: number; zero: number } {
  const at = idx * s.g.l2EntrySize;
  return s.extendedL2
    ? { hi: v.getUint32(at), lo: v.getUint32(at + 4), alloc: v.getUint32(at + 12), zero: v.getUint32(at + 8) }
    : { hi: v.getUint32(at), lo: v.getUint32(at + 4), alloc: 0, zero: 0 };
}

/**
 * count_contiguous_subclusters(): subclusters from `scIndex` of entry `idx` on that share the first one's type
 * (and are host-contiguous for types with an offset). Returns -(i+1) for an invalid entry i.
 */
function countContiguousSubclusters(s: Qcow2State, v: DataView, nbClusters: number, scIndex: number, idx: number): number {
  const spc = s.g.subclustersPerCluster;
  const esz = s.g.l2EntrySize;
  const ext = s.extendedL2;
  const mode = s.mode;
  let count = 0;
  let expectedType: number = -1;
  let expectedOffset = 0;
  let checkOffset = false;
  for (let i = 0; i < nbClusters; i++) {
    const firstSc = i === 0 ? scIndex : 0;
    const at = (idx + i) * esz;
    const hi = v.getUint32(at);
    const lo = v.getUint32(at + 4);
    const alloc = ext ? v.getUint32(at + 12) : 0;
    const zero = ext ? v.getUint32(at + 8) : 0;
    const type = l2SubclusterType(hi, lo, alloc, zero, firstSc, mode);
    if (type === SubclusterType.INVALID) return -(i + 1);
    const run = subclusterRunLength(type, alloc, zero, firstSc, spc);
    if (i === 0) {
      if (type === SubclusterType.COMPRESSED) return run;
      expectedType = type;
      expectedOffset = entryOffsetBits(hi, lo);
      checkOffset =
        type === SubclusterType.NORMAL || type === SubclusterType.ZERO_ALLOC || type === SubclusterType.UNALLOCATED_ALLOC;
    } else if (type !== expectedType) {
      break;
    } else if (checkOffset) {
      expectedOffset += s.clusterSize;
      if (expectedOffset !== entryOffsetBits(hi, lo)) break;
    }
    count += run;
    if (firstSc + run < spc) break;
  }
  return count;
}

/**
 * First half of a lookup: the L2 table to consult (> 0), 0 when the answer is "unallocated" (written to `m`),
 * -1 for an unaligned L2 table offset (corruption).
 */
function locate(s: Qcow2State, offset: number, bytes: number, m: Mapping): number {
  const l1Index = Math.floor(offset / s.g.bytesPerL2Table);
  if (l1Index >= s.l1Size) {
    m.type = SubclusterType.UNALLOCATED_PLAIN;
    m.host = 0;
    m.bytes = bytes;
    return 0;
  }
  // Bits 9..55 have at most 47 significant bits: exact as a number even beyond 2^53.
  const bits = entryOffsetBits(s.l1View.getUint32(l1Index * 8), s.l1View.getUint32(l1Index * 8 + 4));
  if (bits === 0) {
    // Unallocated up to the end of the range this (missing) L2 table would map.
    m.type = SubclusterType.UNALLOCATED_PLAIN;
    m.host = 0;
    m.bytes = Math.min(bytes, (l1Index + 1) * s.g.bytesPerL2Table - offset);
    return 0;
  }
  // Alignment first, as QEMU: an unaligned offset is a corruption even where it is also beyond 2^53. An aligned
  // one beyond 2^53 is past the end of the file, which the cache's read reports like any table past it.
  if (bits % s.clusterSize) return -1;
  return bits;
}

/** Second half: decode the entries of a slice (qcow2_get_host_offset). Returns a corruption message or null. */
function resolve(s: Qcow2State, v: DataView, l2Offset: number, offset: number, bytes: number, m: Mapping): string | null {
  const cs = s.clusterSize;
  const oic = offset % cs;
  const idx = sliceIndexOf(s, offset);
  let bytesNeeded = bytes + oic;
  const avail = (s.l2SliceEntries - idx) * cs;
  if (bytesNeeded > avail) bytesNeeded = avail;
  const e = entryAt(s, v, idx);
  const scIndex = s.extendedL2 ? Math.floor(oic / s.g.subclusterSize) : 0;
  const type = l2SubclusterType(e.hi, e.lo, e.alloc, e.zero, scIndex, s.mode);
  if (s.version < 3 && (type === SubclusterType.ZERO_PLAIN || type === SubclusterType.ZERO_ALLOC)) {
    return `Zero cluster entry found in pre-v3 image (L2 offset: ${hexAlt(l2Offset)}, L2 index: ${hexAlt(idx)})`;
  }
  m.hi = e.hi;
  m.lo = e.lo;
  m.host = 0;
  switch (type) {
    case SubclusterType.INVALID:
    case SubclusterType.ZERO_PLAIN:
    case SubclusterType.UNALLOCATED_PLAIN:
      break;
    case SubclusterType.COMPRESSED:
      if (s.hasDataFile) {
        return `Compressed cluster entry found in image with external data file (L2 offset: ${hexAlt(l2Offset)}, L2 index: ${hexAlt(idx)})`;
      }
      break;
    default: {
      // Exact even beyond 2^53 (47 significant bits): the alignment comes first, as in QEMU.
      const hostCluster = entryOffsetBits(e.hi, e.lo);
      if (hostCluster % cs) {
        return `Cluster allocation offset ${hexAlt(hostCluster)} unaligned (L2 offset: ${hexAlt(l2Offset)}, L2 index: ${hexAlt(idx)})`;
      }
      if (hostCluster > Number.MAX_SAFE_INTEGER) {
        return `Cluster allocation offset ${hex(hostCluster)} is beyond what this implementation can address`;
      }
      m.host = hostCluster + oic;
      if (s.hasDataFile && m.host !== offset) {
        return `External data file host cluster offset ${hexAlt(hostCluster)} does not match guest cluster offset: ${hexAlt(offset - oic)}, L2 index: ${hexAlt(idx)})`;
      }
    }
  }
  const sc = countContiguousSubclusters(s, v, Math.ceil(bytesNeeded / cs), scIndex, idx);
  if (sc < 0) {
    return `Invalid cluster entry found  (L2 offset: ${hexAlt(l2Offset)}, L2 index: ${hexAlt(idx - sc - 1)})`;
  }
  let got = (sc + scIndex) * s.g.subclusterSize;
  if (got > bytesNeeded) got = bytesNeeded;
  m.type = type;
  m.bytes = got - oic;
  return null;
}

/**
 * Lock-free lookup from the cache (the request fast path). False when the slice is not cached or something
 * needs the slow path (which reports corruption).
 */
export function mapSync(s: Qcow2State, offset: number, bytes: number, m: Mapping): boolean {
  const l2 = locate(s, offset, bytes, m);
  if (l2 === 0) return true;
  if (l2 < 0) return false;
  const e = s.l2Cache.peek(sliceOffsetOf(s, l2, offset));
  if (!e) return false;
  return resolve(s, e.view, l2, offset, bytes, m) === null;
}

/** qcow2_get_host_offset(), under the metadata lock. */
export async function mapLocked(s: Qcow2State, offset: number, bytes: number, m: Mapping): Promise<void> {
  const l2 = locate(s, offset, bytes, m);
  if (l2 === 0) return;
  const l1Index = Math.floor(offset / s.g.bytesPerL2Table);
  if (l2 < 0) {
    const raw = s.l1Raw(l1Index);
    const message = `L2 table offset ${hexAlt(entryOffsetBits(raw.hi, raw.lo))} unaligned (L1 index: ${hexAlt(l1Index)})`;
    throw await signalCorruption(s, true, -1, -1, message);
  }
  const e = await s.l2Cache.get(sliceOffsetOf(s, l2, offset));
  let err: string | null;
  try {
    err = resolve(s, e.view, l2, offset, bytes, m);
  } finally {
    s.l2Cache.put(e);
  }
  if (err !== null) throw await signalCorruption(s, true, -1, -1, err);
}

/** Take the metadata lock for a lookup that missed the cache. */
export async function map(s: Qcow2State, offset: number, bytes: number, m: Mapping): Promise<void> {
  if (mapSync(s, offset, bytes, m)) return;
  if (!s.lock.tryLock()) await s.lock.lock();
  try {
    await mapLocked(s, offset, bytes, m);
  } finally {
    s.lock.unlock();
  }
}

// --- L2 tables ----------------------------------------------------------------------------------------------

/**
 * l2_allocate(): a new L2 table for L1 entry `l1Index`, empty or a copy of the current (shared) one; the new
 * table reaches the disk (after its refcount) before the synced L1 entry points at it.
 */
async function l2Allocate(s: Qcow2State, l1Index: number): Promise<void> {
  const cs = s.clusterSize;
  const old = s.l1Raw(l1Index);
  const oldOffset = entryOffsetBits(old.hi, old.lo);
  const l2Offset = await allocClusters(s, cs);
  if (l2Offset === 0) {
    throw await signalCorruption(s, true, -1, -1, 'Preventing invalid allocation of L2 table at offset 0');
  }
  s.trace('l2_alloc', { l1Index, offset: l2Offset, cow: oldOffset !== 0 });
  try {
    await s.refCache.flush();
    const nSlices = cs / s.l2SliceBytes;
    for (let i = 0; i < nSlices; i++) {
      const slice = await s.l2Cache.getEmpty(l2Offset + i * s.l2SliceBytes);
      try {
        if (oldOffset === 0) {
          slice.buf.fill(0);
        } else {
          const src = await s.l2Cache.get(oldOffset + i * s.l2SliceBytes);
          slice.buf.set(src.buf);
          s.l2Cache.put(src);
        }
        s.l2Cache.markDirty(slice);
      } finally {
        s.l2Cache.put(slice);
      }
    }
    await s.l2Cache.flush();
    s.setL1(l1Index, l2Offset, true);
    await writeL1Entry(s, l1Index);
  } catch (e) {
    s.restoreL1(l1Index, old);
    await freeClusters(s, l2Offset, cs, DiscardType.ALWAYS);
    throw e;
  }
}

/**
 * get_cluster_table(): the (pinned) L2 slice for guest `offset` in a table this image may modify: missing
 * tables are allocated, shared ones (COPIED clear) copied first. Returns the entry index inside the slice.
 */
export async function getClusterTable(s: Qcow2State, offset: number): Promise<{ slice: CacheEntry; index: number }> {
  const l1Index = Math.floor(offset / s.g.bytesPerL2Table);
  if (l1Index >= s.l1Size) await growL1Table(s, l1Index + 1, false);
  const raw = s.l1Raw(l1Index);
  let l2Offset = entryOffsetBits(raw.hi, raw.lo);
  if (l2Offset % s.clusterSize) {
    throw await signalCorruption(s, true, -1, -1, `L2 table offset ${hexAlt(l2Offset)} unaligned (L1 index: ${hexAlt(l1Index)})`);
  }
  // An entry without an offset names no L2 table, whatever its flags: with COPIED set (a damaged L1 table), QEMU
  // 7.2 would take the header cluster for the table and abort.
  if (!(raw.hi & 0x80000000) || l2Offset === 0) {
    await l2Allocate(s, l1Index);
    if (l2Offset) await freeClusters(s, l2Offset, s.clusterSize, DiscardType.OTHER);
    l2Offset = s.l1L2Offset(l1Index);
  }
  const slice = await s.l2Cache.get(sliceOffsetOf(s, l2Offset, offset));
  return { slice, index: sliceIndexOf(s, offset) };
}

// --- allocating writes ----------------------------------------------------------------------------------------

/** cluster_needs_new_alloc(). */
function clusterNeedsNewAlloc(s: Qcow2State, hi: number, lo: number): boolean {
  const t = l2ClusterType(hi, lo, s.mode);
  if ((t === ClusterType.NORMAL || t === ClusterType.ZERO_ALLOC) && hi & 0x80000000) return false;
  return true;
}

/** count_single_write_clusters(). */
function countSingleWriteClusters(s: Qcow2State, nb: number, v: DataView, idx: number, newAlloc: boolean): number {
  const esz = s.g.l2EntrySize;
  let expected = entryOffsetBits(v.getUint32(idx * esz), v.getUint32(idx * esz + 4));
  let i = 0;
  for (; i < nb; i++) {
    const hi = v.getUint32((idx + i) * esz);
    const lo = v.getUint32((idx + i) * esz + 4);
    if (clusterNeedsNewAlloc(s, hi, lo) !== newAlloc) break;
    if (!newAlloc) {
      if (expected !== entryOffsetBits(hi, lo)) break;
      expected += s.clusterSize;
    }
  }
  return i;
}

/** Does a COW region of the given subclusters of an entry read as zeroes? */
function readsAsZero(s: Qcow2State, e: { hi: number; lo: number; alloc: number; zero: number }, scFrom: number, scTo: number, guestOffset: number): boolean {
  for (let sc = scFrom; sc < scTo; sc++) {
    const t = l2SubclusterType(e.hi, e.lo, e.alloc, e.zero, sc, s.mode);
    if (t === SubclusterType.ZERO_PLAIN || t === SubclusterType.ZERO_ALLOC) continue;
    if (t === SubclusterType.UNALLOCATED_PLAIN || t === SubclusterType.UNALLOCATED_ALLOC) {
      if (!s.backing || guestOffset >= s.backing.node.totalBytes) continue;
      return false;
    }
    return false;
  }
  return true;
}

/**
 * calculate_l2_meta(): the copy-on-write regions of a write of [guestOffset, +bytes) into clusters starting at
 * `hostCluster`; registers the allocation as in flight. Writes into COPIED clusters whose written subclusters
 * are all allocated need nothing (no L2Meta).
 */
async function calculateL2Meta(
  s: Qcow2State,
  hostCluster: number,
  guestOffset: number,
  bytes: number,
  v: DataView,
  idx: number,
  keepOld: boolean,
  metas: L2Meta[],
): Promise<void> {
  const cs = s.clusterSize;
  const scSize = s.g.subclusterSize;
  const spc = s.g.subclustersPerCluster;
  const cowStartTo = guestOffset % cs;
  const cowEndFrom = cowStartTo + bytes;
  const nb = Math.ceil(cowEndFrom / cs);
  const scOf = (off: number): number => Math.floor(off / scSize) % spc;
  let skipCow = keepOld;
  for (let i = 0; i < nb; i++) {
    const e = entryAt(s, v, idx + i);
    let type: number;
    if (skipCow) {
      const writeFrom = Math.max(cowStartTo, i * cs);
      const writeTo = Math.min(cowEndFrom, (i + 1) * cs);
      const firstSc = scOf(writeFrom);
      const lastSc = scOf(writeTo - 1);
      type = l2SubclusterType(e.hi, e.lo, e.alloc, e.zero, firstSc, s.mode);
      const cnt = type === SubclusterType.INVALID ? 0 : subclusterRunLength(type as SubclusterTypeT, e.alloc, e.zero, firstSc, spc);
      if (type !== SubclusterType.NORMAL || firstSc + cnt <= lastSc) skipCow = false;
    } else {
      type = l2SubclusterType(e.hi, e.lo, e.alloc, e.zero, 0, s.mode);
    }
    if (type === SubclusterType.INVALID) {
      const l1Index = Math.floor(guestOffset / s.g.bytesPerL2Table);
      throw await signalCorruption(
        s,
        true,
        -1,
        -1,
        `Invalid cluster entry found (L2 offset: ${hexAlt(s.l1L2Offset(l1Index))}, L2 index: ${hexAlt(idx + i)})`,
      );
    }
  }
  if (skipCow) return;

  const first = entryAt(s, v, idx);
  let scIndex = scOf(guestOffset % cs);
  let type = l2SubclusterType(first.hi, first.lo, first.alloc, first.zero, scIndex, s.mode);
  let cowStartFrom: number;
  if (!keepOld) {
    switch (type) {
      case SubclusterType.COMPRESSED:
        cowStartFrom = 0;
        break;
      case SubclusterType.NORMAL:
      case SubclusterType.ZERO_ALLOC:
      case SubclusterType.UNALLOCATED_ALLOC:
        if (s.extendedL2) {
          const allocBits = first.alloc;
          const ctz = allocBits === 0 ? 32 : 31 - Math.clz32(allocBits & -allocBits);
          cowStartFrom = Math.min(scIndex, ctz) * scSize;
        } else {
          cowStartFrom = 0;
        }
        break;
      default:
        cowStartFrom = scIndex * scSize;
    }
  } else {
    cowStartFrom = type === SubclusterType.NORMAL ? cowStartTo : scIndex * scSize;
  }

  const last = entryAt(s, v, idx + nb - 1);
  const lastOff = guestOffset + bytes - 1;
  scIndex = scOf(lastOff % cs);
  type = l2SubclusterType(last.hi, last.lo, last.alloc, last.zero, scIndex, s.mode);
  const roundUp = (n: number, a: number): number => (n % a ? n + a - (n % a) : n);
  let cowEndTo: number;
  if (!keepOld) {
    switch (type) {
      case SubclusterType.COMPRESSED:
        cowEndTo = roundUp(cowEndFrom, cs);
        break;
      case SubclusterType.NORMAL:
      case SubclusterType.ZERO_ALLOC:
      case SubclusterType.UNALLOCATED_ALLOC:
        cowEndTo = roundUp(cowEndFrom, cs);
        if (s.extendedL2) {
          const clz = Math.clz32(last.alloc);
          cowEndTo -= Math.min(spc - scIndex - 1, clz) * scSize;
        }
        break;
      default:
        cowEndTo = roundUp(cowEndFrom, scSize);
    }
  } else {
    cowEndTo = type === SubclusterType.NORMAL ? cowEndFrom : roundUp(cowEndFrom, scSize);
  }

  const clusterStart = guestOffset - (guestOffset % cs);
  const cowStart = { offset: cowStartFrom, bytes: cowStartTo - cowStartFrom };
  const cowEnd = { offset: cowEndFrom, bytes: cowEndTo - cowEndFrom };
  // Can the COW regions be filled with zeroes instead of being read?
  let zero = true;
  if (cowStart.bytes) {
    zero = readsAsZero(s, first, Math.floor(cowStartFrom / scSize), Math.ceil(cowStartTo / scSize), clusterStart + cowStartFrom);
  }
  if (zero && cowEnd.bytes) {
    const lastBase = (nb - 1) * cs;
    zero = readsAsZero(
      s,
      last,
      Math.floor((cowEndFrom - lastBase) / scSize),
      Math.ceil((cowEndTo - lastBase) / scSize),
      clusterStart + cowEndFrom,
    );
  }
  const m = new L2Meta(clusterStart, hostCluster, nb, keepOld, cowStart, cowEnd, zero);
  metas.push(m);
  s.clusterAllocs.push(m);
}

const AGAIN = 'again' as const;

/**
 * handle_dependencies(): shorten the request so that it stops before any in-flight allocation it overlaps,
 * or wait for the allocation at its start to finish (releasing the lock) and return AGAIN.
 */
async function handleDependencies(s: Qcow2State, guestOffset: number, bytes: number, haveMetas: boolean): Promise<number | typeof AGAIN> {
  const cs = s.clusterSize;
  for (const old of s.clusterAllocs) {
    const start = guestOffset;
    const end = start + bytes;
    const oldStartExact = old.cowStartGuest;
    const oldEndExact = old.cowEndGuest;
    const oldStart = oldStartExact - (oldStartExact % cs);
    const oldEnd = oldEndExact % cs ? oldEndExact + cs - (oldEndExact % cs) : oldEndExact;
    if (end <= oldStart || start >= oldEnd) continue;
    if (old.keepOld && (end <= oldStartExact || start >= oldEndExact)) continue;
    bytes = start < oldStart ? oldStart - start : 0;
    if (bytes === 0 && haveMetas) return 0;
    if (bytes === 0) {
      const p = old.waiters.wait();
      s.lock.unlock();
      await p;
      await s.lock.lock();
      return AGAIN;
    }
  }
  return bytes;
}

/** True if some in-flight allocation overlaps [offset, offset + bytes) (no waiting). */
export function overlapsAllocation(s: Qcow2State, offset: number, bytes: number): boolean {
  const cs = s.clusterSize;
  const end = offset + bytes;
  for (const old of s.clusterAllocs) {
    const a = old.cowStartGuest;
    const b = old.cowEndGuest;
    if (old.keepOld) {
      if (end > a && offset < b) return true;
    } else if (end > a - (a % cs) && offset < (b % cs ? b + cs - (b % cs) : b)) {
      return true;
    }
  }
  return false;
}

/** Wait (releasing the lock) until no in-flight allocation touches the guest clusters of [offset, +bytes). */
export async function waitForAllocations(s: Qcow2State, offset: number, bytes: number): Promise<void> {
  const cs = s.clusterSize;
  const start = offset - (offset % cs);
  const endRaw = offset + bytes;
  const end = endRaw % cs ? endRaw + cs - (endRaw % cs) : endRaw;
  for (;;) {
    const old = s.clusterAllocs.find((m) => {
      const a = m.cowStartGuest;
      const b = m.cowEndGuest;
      return end > a - (a % cs) && start < (b % cs ? b + cs - (b % cs) : b);
    });
    if (!old) return;
    const p = old.waiters.wait();
    s.lock.unlock();
    await p;
    await s.lock.lock();
  }
}

/** The clusters `[guestOffset, +bytes)` touches, up to the end of its L2 slice (one slice is handled at a time). */
function clustersInSlice(s: Qcow2State, guestOffset: number, bytes: number): number {
  const nb = Math.ceil(((guestOffset % s.clusterSize) + bytes) / s.clusterSize);
  return Math.min(nb, s.l2SliceEntries - sliceIndexOf(s, guestOffset));
}

/** handle_copied(): COPIED clusters at `guestOffset` that can be written in place. */
async function handleCopied(
  s: Qcow2State,
  guestOffset: number,
  hostOffset: number,
  bytes: number,
  metas: L2Meta[],
): Promise<{ found: boolean; host: number; bytes: number }> {
  const cs = s.clusterSize;
  const oic = guestOffset % cs;
  const nb = clustersInSlice(s, guestOffset, bytes);
  const { slice, index } = await getClusterTable(s, guestOffset);
  try {
    const e = entryAt(s, slice.view, index);
    const clusterOffset = entryOffsetBits(e.hi, e.lo);
    if (clusterNeedsNewAlloc(s, e.hi, e.lo)) return { found: false, host: hostOffset, bytes };
    if (clusterOffset % cs) {
      throw await signalCorruption(
        s,
        true,
        -1,
        -1,
        `${e.lo & 1 ? 'Preallocated zero' : 'Data'} cluster offset ${hexAlt(clusterOffset)} unaligned (guest offset: ${hexAlt(guestOffset)})`,
      );
    }
    if (hostOffset >= 0 && clusterOffset !== hostOffset - (hostOffset % cs)) return { found: false, host: hostOffset, bytes: 0 };
    const keep = countSingleWriteClusters(s, nb, slice.view, index, false);
    bytes = Math.min(bytes, keep * cs - oic);
    await calculateL2Meta(s, clusterOffset, guestOffset, bytes, slice.view, index, true, metas);
    return { found: true, host: clusterOffset + oic, bytes };
  } finally {
    s.l2Cache.put(slice);
  }
}

/** handle_alloc(): new clusters for an unallocated or shared area (contiguous with `hostOffset` if given). */
async function handleAlloc(
  s: Qcow2State,
  guestOffset: number,
  hostOffset: number,
  bytes: number,
  metas: L2Meta[],
): Promise<{ found: boolean; host: number; bytes: number }> {
  const cs = s.clusterSize;
  const oic = guestOffset % cs;
  let nb = clustersInSlice(s, guestOffset, bytes);
  const { slice, index } = await getClusterTable(s, guestOffset);
  try {
    nb = countSingleWriteClusters(s, nb, slice.view, index, true);
    if (nb <= 0) throw new BlockError('EIO', 'qcow2: internal error: no cluster to allocate');
    let allocOffset = hostOffset >= 0 ? hostOffset - (hostOffset % cs) : -1;
    if (s.hasDataFile) {
      allocOffset = guestOffset - oic;
    } else if (allocOffset < 0) {
      allocOffset = await allocClusters(s, nb * cs);
    } else {
      nb = await allocClustersAt(s, allocOffset, nb);
      if (nb === 0) return { found: false, host: hostOffset, bytes: 0 };
    }
    const requested = bytes + oic;
    const avail = nb * cs;
    const nbBytes = Math.min(requested, avail);
    bytes = Math.min(bytes, nbBytes - oic);
    try {
      await calculateL2Meta(s, allocOffset, guestOffset, bytes, slice.view, index, false, metas);
    } catch (e) {
      if (!s.hasDataFile) await freeClusters(s, allocOffset, nb * cs, DiscardType.NEVER);
      throw e;
    }
    return { found: true, host: allocOffset + oic, bytes };
  } finally {
    s.l2Cache.put(slice);
  }
}

export interface AllocResult {
  /** Host offset of the first guest byte. */
  hostOffset: number;
  /** Guest bytes covered (host-contiguous). */
  bytes: number;
  /** In-flight allocations to link (or abort) once the data is written. */
  metas: L2Meta[];
}

/**
 * qcow2_alloc_host_offset(): a host-contiguous area for as much of [offset, +bytes) as possible: COPIED
 * clusters in place, new clusters where needed. Under the lock; may wait (releasing it) for in-flight
 * allocations of the same clusters.
 */
export async function allocHostOffset(s: Qcow2State, offset: number, bytes: number): Promise<AllocResult> {
  again: for (;;) {
    let start = offset;
    let remaining = bytes;
    let clusterOffset = -1;
    let hostOffset = -1;
    let cur = 0;
    const metas: L2Meta[] = [];
    try {
      for (;;) {
        if (hostOffset < 0 && clusterOffset >= 0) hostOffset = clusterOffset;
        start += cur;
        remaining -= cur;
        if (clusterOffset >= 0) clusterOffset += cur;
        if (remaining === 0) break;
        cur = remaining;
        const dep = await handleDependencies(s, start, cur, metas.length > 0);
        if (dep === AGAIN) continue again;
        cur = dep;
        if (cur === 0) break;
        const c = await handleCopied(s, start, clusterOffset, cur, metas);
        if (c.found) {
          clusterOffset = c.host;
          cur = c.bytes;
          continue;
        }
        if (c.bytes === 0) break;
        const a = await handleAlloc(s, start, clusterOffset, cur, metas);
        if (a.found) {
          clusterOffset = a.host;
          cur = a.bytes;
          continue;
        }
        break;
      }
    } catch (e) {
      for (const m of metas) await abortL2Meta(s, m);
      throw e;
    }
    return { hostOffset, bytes: bytes - remaining, metas };
  }
}

/** qcow2_alloc_cluster_link_l2(): point the L2 entries at the new clusters, then free what they replaced. */
export async function linkL2(s: Qcow2State, m: L2Meta): Promise<void> {
  if (m.nbClusters === 0) return;
  if (s.useLazyRefcounts) await markDirty(s);
  if (s.needAccurateRefcounts) await s.l2Cache.setDependency(s.refCache);
  if (m.hasCow) s.l2Cache.setDependsOnFlush();
  const { slice, index } = await getClusterTable(s, m.offset);
  const old: { hi: number; lo: number }[] = [];
  try {
    s.l2Cache.markDirty(slice);
    const v = slice.view;
    const cs = s.clusterSize;
    const esz = s.g.l2EntrySize;
    for (let i = 0; i < m.nbClusters; i++) {
      const at = (index + i) * esz;
      const hi = v.getUint32(at);
      const lo = v.getUint32(at + 4);
      if (hi !== 0 || lo !== 0) old.push({ hi, lo });
      writeL2Entry(v, index + i, s.mode, m.allocOffset + i * cs, L2EntryFlag.COPIED);
      if (s.extendedL2 && !m.prealloc) {
        const writtenFrom = Math.max(m.cowStart.offset, i * cs);
        const writtenTo = Math.min(m.cowEnd.offset + m.cowEnd.bytes, (i + 1) * cs);
        const spc = s.g.subclustersPerCluster;
        const firstSc = Math.floor(writtenFrom / s.g.subclusterSize) % spc;
        const lastSc = Math.floor((writtenTo - 1) / s.g.subclusterSize) % spc;
        const range = subclusterRange(firstSc, lastSc + 1);
        const alloc = (v.getUint32(at + 12) | range) >>> 0;
        const zero = (v.getUint32(at + 8) & ~range) >>> 0;
        writeL2Bitmap(v, index + i, alloc, zero);
      }
    }
  } finally {
    s.l2Cache.put(slice);
  }
  if (!m.keepOld) for (const o of old) await freeAnyCluster(s, o.hi, o.lo, DiscardType.NEVER, true);
}

/** qcow2_alloc_cluster_abort(): the write failed; give back what was allocated. */
export async function abortL2Meta(s: Qcow2State, m: L2Meta): Promise<void> {
  try {
    if (!s.hasDataFile && !m.keepOld && m.nbClusters) {
      await freeClusters(s, m.allocOffset, m.nbClusters * s.clusterSize, DiscardType.NEVER);
    }
  } finally {
    finishL2Meta(s, m);
  }
}

/** The allocation is no longer in flight: wake the requests waiting for it. */
export function finishL2Meta(s: Qcow2State, m: L2Meta): void {
  const i = s.clusterAllocs.indexOf(m);
  if (i >= 0) s.clusterAllocs.splice(i, 1);
  m.waiters.wakeAll();
}

// --- zero writes and discards -----------------------------------------------------------------------------------

/** qcow2_cluster_is_allocated(). */
function clusterIsAllocated(t: number): boolean {
  return t === ClusterType.NORMAL || t === ClusterType.COMPRESSED || t === ClusterType.ZERO_ALLOC;
}

const ALL_ZEROES = 0xffffffff;

async function discardInL2Slice(s: Qcow2State, offset: number, nb: number, type: DiscardType, full: boolean): Promise<number> {
  const { slice, index } = await getClusterTable(s, offset);
  const freed: { hi: number; lo: number }[] = [];
  try {
    nb = Math.min(nb, s.l2SliceEntries - index);
    const v = slice.view;
    const esz = s.g.l2EntrySize;
    for (let i = 0; i < nb; i++) {
      const at = (index + i) * esz;
      const hi = v.getUint32(at);
      const lo = v.getUint32(at + 4);
      const alloc = s.extendedL2 ? v.getUint32(at + 12) : 0;
      const zero = s.extendedL2 ? v.getUint32(at + 8) : 0;
      const ctype = l2ClusterType(hi, lo, s.mode);
      let nhi = hi;
      let nlo = lo;
      let nalloc = alloc;
      let nzero = zero;
      if (full) {
        nhi = nlo = nalloc = nzero = 0;
      } else if (s.backing || clusterIsAllocated(ctype)) {
        if (s.extendedL2) {
          nhi = nlo = 0;
          nalloc = 0;
          nzero = ALL_ZEROES;
        } else {
          nhi = 0;
          nlo = s.version >= 3 ? 1 : 0;
        }
      }
      if (nhi === hi && nlo === lo && nalloc === alloc && nzero === zero) continue;
      s.l2Cache.markDirty(slice);
      writeL2EntryRaw(v, index + i, s.mode, nhi, nlo);
      if (s.extendedL2) writeL2Bitmap(v, index + i, nalloc, nzero);
      freed.push({ hi, lo });
    }
  } finally {
    s.l2Cache.put(slice);
  }
  for (const f of freed) await freeAnyCluster(s, f.hi, f.lo, type);
  return nb;
}

/**
 * qcow2_cluster_discard(): whole clusters (the last one may end at the image end). With `full` the range falls
 * through to the backing file afterwards; otherwise it reads as zeroes (v3) or is deallocated (v2).
 */
export async function clusterDiscard(s: Qcow2State, offset: number, bytes: number, type: DiscardType, full: boolean): Promise<void> {
  let nb = Math.ceil(bytes / s.clusterSize);
  s.cacheDiscards = true;
  let ok = false;
  try {
    while (nb > 0) {
      // Where no L2 table exists, one is allocated even when nothing could show through (discard_in_l2_slice()
      // takes get_cluster_table()): the file comes out as QEMU's.
      const done = await discardInL2Slice(s, offset, nb, type, full);
      nb -= done;
      offset += done * s.clusterSize;
    }
    ok = true;
  } finally {
    s.cacheDiscards = false;
    await processDiscards(s, ok);
  }
}

async function zeroInL2Slice(s: Qcow2State, offset: number, nb: number, mayUnmap: boolean): Promise<number> {
  const { slice, index } = await getClusterTable(s, offset);
  const freed: { hi: number; lo: number }[] = [];
  try {
    nb = Math.min(nb, s.l2SliceEntries - index);
    const v = slice.view;
    const esz = s.g.l2EntrySize;
    for (let i = 0; i < nb; i++) {
      const at = (index + i) * esz;
      const hi = v.getUint32(at);
      const lo = v.getUint32(at + 4);
      const alloc = s.extendedL2 ? v.getUint32(at + 12) : 0;
      const zero = s.extendedL2 ? v.getUint32(at + 8) : 0;
      const ctype = l2ClusterType(hi, lo, s.mode);
      const unmap = ctype === ClusterType.COMPRESSED || (mayUnmap && clusterIsAllocated(ctype));
      const nhi = unmap ? 0 : hi;
      let nlo = unmap ? 0 : lo;
      let nalloc = alloc;
      let nzero = zero;
      if (s.extendedL2) {
        nalloc = 0;
        nzero = ALL_ZEROES;
      } else {
        nlo = (nlo | 1) >>> 0;
      }
      if (nhi === hi && nlo === lo && nalloc === alloc && nzero === zero) continue;
      s.l2Cache.markDirty(slice);
      writeL2EntryRaw(v, index + i, s.mode, nhi, nlo);
      if (s.extendedL2) writeL2Bitmap(v, index + i, nalloc, nzero);
      if (unmap) freed.push({ hi, lo });
    }
  } finally {
    s.l2Cache.put(slice);
  }
  for (const f of freed) await freeAnyCluster(s, f.hi, f.lo, DiscardType.REQUEST);
  return nb;
}

/** zero_l2_subclusters(): mark some subclusters of one cluster as zero. ENOTSUP for compressed clusters. */
async function zeroL2Subclusters(s: Qcow2State, offset: number, nbSubclusters: number): Promise<void> {
  const sc = Math.floor((offset % s.clusterSize) / s.g.subclusterSize);
  const { slice, index } = await getClusterTable(s, offset);
  try {
    const e = entryAt(s, slice.view, index);
    const ctype = l2ClusterType(e.hi, e.lo, s.mode);
    if (ctype === ClusterType.COMPRESSED) {
      throw new BlockError('ENOTSUP', 'qcow2: cannot partially zero a compressed cluster');
    }
    const range = subclusterRange(sc, sc + nbSubclusters);
    const zero = (e.zero | range) >>> 0;
    const alloc = (e.alloc & ~range) >>> 0;
    if (zero !== e.zero || alloc !== e.alloc) {
      writeL2Bitmap(slice.view, index, alloc, zero);
      s.l2Cache.markDirty(slice);
    }
  } finally {
    s.l2Cache.put(slice);
  }
}

/**
 * qcow2_subcluster_zeroize(): make [offset, +bytes) read as zeroes through metadata only (subcluster aligned,
 * the end may be the image end). ENOTSUP where that is impossible (v2 with a backing file).
 */
export async function subclusterZeroize(s: Qcow2State, offset: number, bytes: number, mayUnmap: boolean): Promise<void> {
  if (s.dataFileIsRaw) {
    await s.dataFile.pwriteZeroes(offset, bytes, mayUnmap ? ReqFlag.MAY_UNMAP : 0);
  }
  if (s.version < 3) {
    if (!s.backing) return clusterDiscard(s, offset, bytes, DiscardType.REQUEST, false);
    throw new BlockError('ENOTSUP', 'qcow2: v2 images cannot express zero clusters over a backing file');
  }
  const cs = s.clusterSize;
  let end = offset + bytes;
  const roundUp = offset % cs ? offset + cs - (offset % cs) : offset;
  const head = Math.min(end, roundUp) - offset;
  offset += head;
  const tail = end >= s.size ? 0 : end - Math.max(offset, end - (end % cs));
  end -= tail;
  s.cacheDiscards = true;
  let ok = false;
  try {
    if (head) await zeroL2Subclusters(s, offset - head, Math.ceil(head / s.g.subclusterSize));
    let nb = Math.ceil((end - offset) / cs);
    while (nb > 0) {
      const done = await zeroInL2Slice(s, offset, nb, mayUnmap);
      nb -= done;
      offset += done * cs;
    }
    if (tail) await zeroL2Subclusters(s, end, Math.ceil(tail / s.g.subclusterSize));
    ok = true;
  } finally {
    s.cacheDiscards = false;
    await processDiscards(s, ok);
  }
}
