import { BlockError, isZeroBuffer, STRERROR, toBlockError, type BlockErrorCode } from '@blockgraph/block-core';
import {
  ClusterType,
  QCOW_MAX_CLUSTER_OFFSET,
  QCOW_MAX_REFTABLE_SIZE,
  compressedHostOffset,
  compressedReadLength,
  getRefcount as getRefcountEntry,
  getRefcount64,
  hex,
  hexAlt,
  l2ClusterType,
  l2EntryHostOffset,
  refcountMax,
  setRefcount as setRefcountEntry,
  setRefcount64,
  refcountTablePatch,
} from '../format/index.js';
import type { CacheEntry } from './cache.js';
import { preWriteOverlapCheck, signalCorruption } from './overlap.js';
import { DiscardType, Overlap, type Qcow2State } from './state.js';

/**
 * Refcounts and the host cluster allocator (QEMU's qcow2-refcount.c): first-fit from the lowest free cluster
 * index, freed clusters are reused, refcount blocks describe themselves when the image grows, and a full
 * refcount table is replaced by a bigger one at the end of the file with one synced header switch.
 *
 * Every function here runs under the metadata lock.
 */

/** update_refcount() asks its caller to search for free clusters again (QEMU's -EAGAIN). */
const AGAIN = 'again' as const;
type Again = typeof AGAIN;

const MAX_OFFSET = Math.min(QCOW_MAX_CLUSTER_OFFSET, Number.MAX_SAFE_INTEGER);

function refblockOffsetFor(s: Qcow2State, clusterIndex: number): { tableIndex: number; offset: number } {
  const tableIndex = Math.floor(clusterIndex / s.g.refcountBlockEntries);
  const offset = tableIndex < s.reftable.length ? s.reftable[tableIndex]! : 0;
  return { tableIndex, offset };
}

async function refblockUnaligned(s: Qcow2State, offset: number, tableIndex: number): Promise<BlockError> {
  if (offset < 0) {
    return signalCorruption(s, true, -1, -1, `Refblock offset beyond 2^53 (reftable index: ${hexAlt(tableIndex)})`);
  }
  return signalCorruption(s, true, -1, -1, `Refblock offset ${hexAlt(offset)} unaligned (reftable index: ${hexAlt(tableIndex)})`);
}

/** The refcount of a cluster if its refcount block is cached (or absent); undefined when it must be read. */
export function getRefcountCached(s: Qcow2State, clusterIndex: number): number | undefined {
  const { offset } = refblockOffsetFor(s, clusterIndex);
  if (!offset) return 0;
  if (offset < 0 || offset % s.clusterSize) return undefined;
  const e = s.refCache.peek(offset);
  if (!e) return undefined;
  return getRefcountEntry(e.buf, clusterIndex % s.g.refcountBlockEntries, s.g.refcountOrder);
}

/** qcow2_get_refcount(). */
export async function getRefcount(s: Qcow2State, clusterIndex: number): Promise<number> {
  const cached = getRefcountCached(s, clusterIndex);
  if (cached !== undefined) return cached;
  const { tableIndex, offset } = refblockOffsetFor(s, clusterIndex);
  if (offset < 0 || offset % s.clusterSize) throw await refblockUnaligned(s, offset, tableIndex);
  const e = await s.refCache.get(offset);
  try {
    return getRefcountEntry(e.buf, clusterIndex % s.g.refcountBlockEntries, s.g.refcountOrder);
  } finally {
    s.refCache.put(e);
  }
}

function inSameRefcountBlock(s: Qcow2State, a: number, b: number): boolean {
  const span = s.g.refcountBlockEntries * s.clusterSize;
  return Math.floor(a / span) === Math.floor(b / span);
}

/**
 * alloc_refcount_block(): the refcount block covering `clusterIndex`, pinned; allocated (and the refcount table
 * grown) when missing, in which case AGAIN tells the caller to restart its search for free clusters.
 */
async function allocRefcountBlock(s: Qcow2State, clusterIndex: number): Promise<CacheEntry | Again> {
  const cs = s.clusterSize;
  const tableIndex = Math.floor(clusterIndex / s.g.refcountBlockEntries);
  if (tableIndex < s.reftable.length) {
    const off = s.reftable[tableIndex]!;
    if (off) {
      if (off < 0 || off % cs) throw await refblockUnaligned(s, off, tableIndex);
      return s.refCache.get(off);
    }
  }

  // We are about to write to the refcount table: L2 tables may depend on it.
  await s.l2Cache.flush();

  const newBlock = await allocClustersNoref(s, cs, MAX_OFFSET);
  if (newBlock === 0) {
    throw await signalCorruption(s, true, -1, -1, 'Preventing invalid allocation of refcount block at offset 0');
  }
  s.trace('refblock_alloc', { tableIndex, offset: newBlock });

  let block: CacheEntry;
  if (inSameRefcountBlock(s, newBlock, clusterIndex * cs)) {
    // The new block describes itself.
    block = await s.refCache.getEmpty(newBlock);
    block.buf.fill(0);
    setRefcountEntry(block.buf, (newBlock / cs) % s.g.refcountBlockEntries, s.g.refcountOrder, 1);
  } else {
    // Described by another block; this recurses at most twice before a block describes itself.
    const r = await updateRefcount(s, newBlock, cs, 1, false, DiscardType.NEVER);
    if (r === AGAIN) {
      // Not expected from QEMU's reasoning, but harmless: start over.
      return AGAIN;
    }
    await s.refCache.flush();
    block = await s.refCache.getEmpty(newBlock);
    block.buf.fill(0);
  }

  try {
    s.refCache.markDirty(block);
    await s.refCache.flush();

    if (tableIndex < s.reftable.length) {
      // Hook the block up in the existing table (synced 8-byte write).
      const entry = new Uint8Array(8);
      const v = new DataView(entry.buffer);
      v.setUint32(0, Math.floor(newBlock / 4294967296));
      v.setUint32(4, newBlock >>> 0);
      await s.writeFileSync(s.reftableOffset + tableIndex * 8, entry);
      s.setReftableEntry(tableIndex, newBlock);
      s.maxRefcountTableIndex = Math.max(s.maxRefcountTableIndex, tableIndex);
      // The new block may sit where the caller wanted to put its data.
      return AGAIN;
    }
  } finally {
    s.refCache.put(block);
  }

  // The refcount table is full: build new self-describing refcount blocks and a bigger table at the end of
  // the image and switch to them at once.
  const blocksUsed = Math.ceil(
    Math.max(clusterIndex + 1, newBlock / cs + 1) / s.g.refcountBlockEntries,
  );
  const metaOffset = blocksUsed * s.g.refcountBlockEntries * cs;
  s.trace('reftable_grow', { from: s.reftable.length, metaOffset });
  await refcountArea(s, metaOffset, 0, false, tableIndex, newBlock);
  return AGAIN;
}

/**
 * qcow2_refcount_metadata_size(): refcount blocks and table clusters needed to describe `clusters` clusters
 * plus themselves; `generous` adds 50 % headroom for the table (growth).
 */
export function refcountMetadataSize(
  clusters: number,
  clusterSize: number,
  refcountOrder: number,
  generous: boolean,
): { bytes: number; refblocks: number } {
  const blocksPerTableCluster = clusterSize / 8;
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / refcountsPerBlock);
    table = Math.ceil(blocks / blocksPerTableCluster);
    n = clusters + blocks + table;
    if (n === last && generous) {
      clusters += Math.ceil(table / 2);
      n = 0;
      generous = false;
    }
  } while (n !== last);
  return { bytes: (blocks + table) * clusterSize, refblocks: blocks };
}

/**
 * qcow2_refcount_area(): new refcount blocks (where the table has none) and a new refcount table, placed from
 * `startOffset` on (where the caller guarantees free space), covering the image plus `additionalClusters`.
 * Writes the blocks, the table, switches the header (synced) and frees the old table. Returns the end offset
 * of the new structures.
 */
export async function refcountArea(
  s: Qcow2State,
  startOffset: number,
  additionalClusters: number,
  exactSize: boolean,
  newRefblockIndex: number,
  newRefblockOffset: number,
): Promise<number> {
  const cs = s.clusterSize;
  const entries = s.g.refcountBlockEntries;
  const { refblocks: totalRefblocks } = refcountMetadataSize(
    startOffset / cs + additionalClusters,
    cs,
    s.g.refcountOrder,
    !exactSize,
  );
  if (totalRefblocks > QCOW_MAX_REFTABLE_SIZE) throw new BlockError('EFBIG', 'qcow2: refcount table would be too large');
  const areaReftableIndex = Math.floor(startOffset / cs / entries);
  let tableSize = exactSize ? totalRefblocks : totalRefblocks + Math.ceil(totalRefblocks / 2);
  const perCluster = cs / 8;
  tableSize = Math.ceil(tableSize / perCluster) * perCluster;
  const tableClusters = (tableSize * 8) / cs;
  if (tableSize > QCOW_MAX_REFTABLE_SIZE) throw new BlockError('EFBIG', 'qcow2: refcount table would be too large');

  const newTable = new Float64Array(tableSize);
  if (tableSize > s.maxRefcountTableIndex) {
    newTable.set(s.reftable.subarray(0, Math.min(s.reftable.length, s.maxRefcountTableIndex + 1)));
  } else {
    newTable.set(s.reftable.subarray(0, tableSize));
  }
  if (newRefblockOffset) newTable[newRefblockIndex] = newRefblockOffset;

  for (let i = 0; i < newTable.length; i++) {
    if (newTable[i]! < 0 || newTable[i]! % cs) throw await refblockUnaligned(s, newTable[i]!, i);
  }
  let additional = 0;
  for (let i = areaReftableIndex; i < totalRefblocks; i++) if (!newTable[i]) additional++;
  const tableOffset = startOffset + additional * cs;
  const endOffset = tableOffset + tableClusters * cs;

  let blockOffset = startOffset;
  for (let i = areaReftableIndex; i < totalRefblocks; i++) {
    let block: CacheEntry;
    if (newTable[i]) {
      block = await s.refCache.get(newTable[i]!);
    } else {
      block = await s.refCache.getEmpty(blockOffset);
      block.buf.fill(0);
      s.refCache.markDirty(block);
      newTable[i] = blockOffset;
      blockOffset += cs;
    }
    try {
      const firstCovered = i * entries * cs;
      if (firstCovered < endOffset) {
        let j = firstCovered < startOffset ? (startOffset - firstCovered) / cs : 0;
        const endIndex = Math.min((endOffset - firstCovered) / cs, entries);
        for (; j < endIndex; j++) {
          if (getRefcountEntry(block.buf, j, s.g.refcountOrder) !== 0) {
            throw new BlockError('EIO', `qcow2: refcount area at ${hex(startOffset)} is not free`);
          }
          setRefcountEntry(block.buf, j, s.g.refcountOrder, 1);
        }
        s.refCache.markDirty(block);
      }
    } finally {
      s.refCache.put(block);
    }
  }

  await s.refCache.flush();

  const raw = new Uint8Array(tableSize * 8);
  const rv = new DataView(raw.buffer);
  for (let i = 0; i < tableSize; i++) {
    const o = newTable[i]!;
    if (o) {
      rv.setUint32(i * 8, Math.floor(o / 4294967296));
      rv.setUint32(i * 8 + 4, o >>> 0);
    }
  }
  await preWriteOverlapCheck(s, Overlap.REFCOUNT_TABLE | Overlap.REFCOUNT_BLOCK, tableOffset, raw.length, false);
  await s.writeFileSync(tableOffset, raw);

  const patch = refcountTablePatch(tableOffset, tableClusters);
  await s.writeFileSync(patch.offset, patch.bytes);

  const oldOffset = s.reftableOffset;
  const oldBytes = s.reftable.length * 8;
  s.setReftable(newTable);
  s.reftableOffset = tableOffset;
  s.header.refcountTableOffset = tableOffset;
  s.header.refcountTableClusters = tableClusters;
  s.updateMaxRefcountTableIndex();

  await freeClusters(s, oldOffset, oldBytes, DiscardType.OTHER);
  return endOffset;
}

/** Queue a freed range for a discard in the file (update_refcount_discard), merging neighbours. */
function queueDiscard(s: Qcow2State, offset: number, bytes: number): void {
  const list = s.discards;
  let d = list.find((r) => Math.max(offset + bytes, r.offset + r.bytes) - Math.min(offset, r.offset) <= bytes + r.bytes);
  if (d) {
    const start = Math.min(offset, d.offset);
    d.bytes = Math.max(offset + bytes, d.offset + d.bytes) - start;
    d.offset = start;
  } else {
    d = { offset, bytes };
    list.push(d);
  }
  for (let i = list.length - 1; i >= 0; i--) {
    const p = list[i]!;
    if (p === d || p.offset > d.offset + d.bytes || d.offset > p.offset + p.bytes) continue;
    list.splice(i, 1);
    const start = Math.min(d.offset, p.offset);
    d.bytes += p.bytes;
    d.offset = start;
  }
}

/** qcow2_process_discards(): send the queued discards to the file (advisory; errors are ignored). */
export async function processDiscards(s: Qcow2State, ok: boolean): Promise<void> {
  while (s.discards.length) {
    const d = s.discards.shift()!;
    if (!ok) continue;
    try {
      await s.file.pdiscard(d.offset, d.bytes);
    } catch {
      // discard is a hint
    }
  }
}

/**
 * update_refcount(): add or subtract `addend` for every cluster touched by [offset, offset + length). On any
 * failure (and on AGAIN) what was changed is undone.
 */
export async function updateRefcount(
  s: Qcow2State,
  offset: number,
  length: number,
  addend: number,
  decrease: boolean,
  type: DiscardType,
  /** The references dropped were replaced in an L2 table whose old entry must stay valid until it is on disk. */
  replacedInL2 = false,
): Promise<'ok' | Again> {
  if (length < 0) throw new BlockError('EINVAL');
  if (length === 0) return 'ok';
  if (decrease) await s.refCache.setDependency(s.l2Cache);

  const cs = s.clusterSize;
  const entries = s.g.refcountBlockEntries;
  const order = s.g.refcountOrder;
  const max = refcountMax(order);
  const start = offset - (offset % cs);
  const lastByte = offset + length - 1;
  const last = lastByte - (lastByte % cs);
  let block: CacheEntry | null = null;
  let oldTableIndex = -1;
  let clusterOffset = start;
  let result: 'ok' | Again = 'ok';
  let error: unknown = null;
  try {
    for (; clusterOffset <= last; clusterOffset += cs) {
      const ci = clusterOffset / cs;
      const ti = Math.floor(ci / entries);
      if (ti !== oldTableIndex || block === null) {
        if (block) {
          s.refCache.put(block);
          block = null;
        }
        const r = await allocRefcountBlock(s, ci);
        if (r === AGAIN) {
          if (s.freeClusterIndex > start / cs) s.freeClusterIndex = start / cs;
          result = AGAIN;
          break;
        }
        block = r;
      }
      oldTableIndex = ti;
      s.refCache.markDirty(block);
      const bi = ci % entries;
      let rc = getRefcountEntry(block.buf, bi, order);
      if (rc > Number.MAX_SAFE_INTEGER || (order === 6 && !decrease && rc + addend > Number.MAX_SAFE_INTEGER)) {
        // A 64-bit entry at or past 2^53 (only a damaged image gets there): QEMU's uint64_t arithmetic, exactly. It
        // cannot drop to zero from here.
        const big = getRefcount64(block.buf, bi) + BigInt(decrease ? -addend : addend);
        if (big > 0xffffffffffffffffn) {
          throw new BlockError('EINVAL', `qcow2: refcount of cluster ${hex(clusterOffset)} would exceed ${0xffffffffffffffffn}`);
        }
        setRefcount64(block.buf, bi, big);
        continue;
      }
      if (decrease ? addend > rc : rc + addend > max) {
        throw new BlockError(
          'EINVAL',
          decrease
            ? `qcow2: refcount of cluster ${hex(clusterOffset)} would drop below zero`
            : `qcow2: refcount of cluster ${hex(clusterOffset)} would exceed ${max}`,
        );
      }
      rc = decrease ? rc - addend : rc + addend;
      if (rc === 0 && ci < s.freeClusterIndex) s.freeClusterIndex = ci;
      setRefcountEntry(block.buf, bi, order, rc);
      if (rc === 0) {
        // A freed table must never be written back from a cache: the cluster may be reused.
        if (block.offset === clusterOffset) {
          s.refCache.put(block);
          block = null;
          oldTableIndex = -1;
        }
        s.refCache.discardRange(clusterOffset, cs);
        s.l2Cache.discardRange(clusterOffset, cs);
        s.tickets.hold(ci);
        if (replacedInL2) s.tickets.holdUntilL2Stable(ci, s.l2Cache.writesStarted + 1);
        // The compressed-write position must not outlive its cluster. QEMU 7.2 keeps it, and its next compressed
        // write lands in whatever the freed cluster was reallocated as (data or an L2 table).
        if (s.freeByteOffset && Math.floor(s.freeByteOffset / cs) === ci) s.freeByteOffset = 0;
        if (s.options.discardPassthrough[type]) queueDiscard(s, clusterOffset, cs);
      }
    }
  } catch (e) {
    error = e;
  }
  if (!s.cacheDiscards) await processDiscards(s, error === null && result === 'ok');
  if (block) s.refCache.put(block);
  if (error !== null || result === AGAIN) {
    if (clusterOffset > offset) {
      try {
        await updateRefcount(s, offset, clusterOffset - offset, addend, !decrease, DiscardType.NEVER);
      } catch {
        // best effort, as in QEMU
      }
    }
  }
  if (error !== null) throw error;
  return result;
}

/**
 * Quarantined clusters become allocatable again once the I/O that was in flight when they were freed is done and,
 * for those an L2 update freed, once that update is stable on disk (see IoTickets).
 */
function releaseQuarantine(s: Qcow2State): void {
  const file = s.file.node;
  const lowest = s.tickets.release(s.l2Cache.writtenThrough, file.writeGen, file.flushedGen);
  if (lowest >= 0 && lowest < s.freeClusterIndex) s.freeClusterIndex = lowest;
}

/** alloc_clusters_noref(): the first run of free clusters, without taking a reference. */
export async function allocClustersNoref(s: Qcow2State, size: number, max: number): Promise<number> {
  if (s.cacheDiscards) await processDiscards(s, true);
  releaseQuarantine(s);
  const cs = s.clusterSize;
  const nb = Math.ceil(size / cs);
  const quarantined = s.tickets.quarantined;
  for (let i = 0; i < nb; ) {
    const idx = s.freeClusterIndex++;
    let rc = getRefcountCached(s, idx);
    if (rc === undefined) rc = await getRefcount(s, idx);
    if (rc !== 0 || (quarantined.size !== 0 && quarantined.has(idx))) {
      i = 0;
      continue;
    }
    i++;
  }
  if (s.freeClusterIndex > 0 && s.freeClusterIndex - 1 > Math.floor(max / cs)) {
    throw new BlockError('EFBIG', 'qcow2: image file would grow beyond the largest offset qcow2 can address');
  }
  return (s.freeClusterIndex - nb) * cs;
}

/** qcow2_alloc_clusters(): allocate and take a reference. */
export async function allocClusters(s: Qcow2State, size: number): Promise<number> {
  for (;;) {
    const offset = await allocClustersNoref(s, size, MAX_OFFSET);
    const r = await updateRefcount(s, offset, size, 1, false, DiscardType.NEVER);
    if (r === 'ok') {
      s.trace('cluster_alloc', { offset, bytes: size });
      return offset;
    }
  }
}

/** qcow2_alloc_clusters_at(): as many free clusters as possible (up to `nb`) starting exactly at `offset`. */
export async function allocClustersAt(s: Qcow2State, offset: number, nb: number): Promise<number> {
  if (nb === 0) return 0;
  const cs = s.clusterSize;
  releaseQuarantine(s);
  for (;;) {
    let ci = offset / cs;
    let i = 0;
    for (; i < nb; i++, ci++) {
      let rc = getRefcountCached(s, ci);
      if (rc === undefined) rc = await getRefcount(s, ci);
      if (rc !== 0 || s.tickets.quarantined.has(ci)) break;
    }
    const r = await updateRefcount(s, offset, i * cs, 1, false, DiscardType.NEVER);
    if (r === 'ok') {
      if (i) s.trace('cluster_alloc', { offset, bytes: i * cs });
      return i;
    }
  }
}

/** qcow2_alloc_bytes(): `size` bytes for compressed data, packed byte-adjacent after the previous ones. */
export async function allocBytes(s: Qcow2State, size: number): Promise<number> {
  const cs = s.clusterSize;
  if (!(size > 0 && size <= cs)) throw new BlockError('EINVAL', `qcow2: invalid compressed size ${size}`);
  let offset = s.freeByteOffset;
  if (offset) {
    const rc = await getRefcount(s, Math.floor(offset / cs));
    if (rc === refcountMax(s.g.refcountOrder)) offset = 0;
  }
  let freeInCluster = cs - (offset % cs);
  const maxOffset = Math.min(2 ** s.g.csizeShift - 1, MAX_OFFSET);
  for (;;) {
    if (!offset || freeInCluster < size) {
      const newCluster = await allocClustersNoref(s, cs, maxOffset);
      if (newCluster === 0) {
        throw await signalCorruption(s, true, -1, -1, 'Preventing invalid allocation of compressed cluster at offset 0');
      }
      const roundedUp = offset % cs ? offset + cs - (offset % cs) : offset;
      if (!offset || roundedUp !== newCluster) {
        offset = newCluster;
        freeInCluster = cs;
      } else {
        freeInCluster += cs;
      }
    }
    const r = await updateRefcount(s, offset, size, 1, false, DiscardType.NEVER);
    if (r === 'ok') break;
    offset = 0;
  }
  // The refcounts were raised: they must reach the disk before the caller's L2 update.
  await s.l2Cache.setDependency(s.refCache);
  s.freeByteOffset = offset + size;
  if (s.freeByteOffset % cs === 0) s.freeByteOffset = 0;
  return offset;
}

/**
 * qcow2_free_clusters(): drop one reference from every cluster touched. A failure leaks the clusters and is only
 * reported, as QEMU's "qcow2_free_clusters failed: <strerror>" line; that includes EAGAIN, when the update had
 * to allocate a refcount block (a damaged refcount table), which QEMU does not retry for a free.
 * `replacedInL2`: see {@link freeAnyCluster}.
 */
export async function freeClusters(
  s: Qcow2State,
  offset: number,
  size: number,
  type: DiscardType,
  replacedInL2 = false,
): Promise<void> {
  let code: BlockErrorCode;
  try {
    if ((await updateRefcount(s, offset, size, 1, true, type, replacedInL2)) === 'ok') return;
    code = 'EAGAIN';
  } catch (e) {
    code = toBlockError(e).code;
  }
  s.trace('free_clusters_failed', { offset, size, error: code });
  s.graph.message(s.node, `qcow2_free_clusters failed: ${STRERROR[code]}`);
}

/**
 * qcow2_free_any_cluster(): free what an L2 entry references (normal, preallocated zero or compressed).
 * `replacedInL2`: the entry was replaced by one pointing at a copy, and until that L2 update is on disk the old
 * entry is what a crash leaves; clusters freed here are not reused before then (see IoTickets).
 */
export async function freeAnyCluster(
  s: Qcow2State,
  hi: number,
  lo: number,
  type: DiscardType,
  replacedInL2 = false,
): Promise<void> {
  const ctype = l2ClusterType(hi, lo, s.mode);
  if (s.hasDataFile) {
    if (s.options.discardPassthrough[type] && (ctype === ClusterType.NORMAL || ctype === ClusterType.ZERO_ALLOC)) {
      try {
        await s.dataFile.pdiscard(l2EntryHostOffset(hi, lo), s.clusterSize);
      } catch {
        // advisory
      }
    }
    return;
  }
  switch (ctype) {
    case ClusterType.COMPRESSED: {
      const coffset = compressedHostOffset(hi, lo, s.g);
      await freeClusters(s, coffset, compressedReadLength(hi, lo, s.g), type, replacedInL2);
      break;
    }
    case ClusterType.NORMAL:
    case ClusterType.ZERO_ALLOC: {
      const off = l2EntryHostOffset(hi, lo);
      if (off % s.clusterSize) {
        await signalCorruption(s, false, -1, -1, `Cannot free unaligned cluster ${hexAlt(off)}`);
      } else {
        await freeClusters(s, off, s.clusterSize, type, replacedInL2);
      }
      break;
    }
    default:
      break;
  }
}

/** qcow2_get_last_cluster(): index of the last cluster with a non-zero refcount below `size`. */
export async function getLastCluster(s: Qcow2State, size: number): Promise<number> {
  for (let i = Math.ceil(size / s.clusterSize) - 1; i >= 0; i--) {
    if ((await getRefcount(s, i)) > 0) return i;
  }
  throw await signalCorruption(s, true, -1, -1, 'There are no references in the refcount table.');
}

/** qcow2_discard_refcount_block(): drop the reference of a refcount block that no longer describes anything. */
async function discardRefcountBlock(s: Qcow2State, blockOffset: number): Promise<void> {
  const cs = s.clusterSize;
  const ci = blockOffset / cs;
  const { tableIndex, offset } = refblockOffsetFor(s, ci);
  if (!offset) {
    throw await signalCorruption(s, true, -1, -1, `Refblock at ${hexAlt(blockOffset)} is not covered by the refcount table`);
  }
  if (offset < 0 || offset % cs) throw await refblockUnaligned(s, offset, tableIndex);
  const e = await s.refCache.get(offset);
  try {
    const bi = ci % s.g.refcountBlockEntries;
    const rc = getRefcountEntry(e.buf, bi, s.g.refcountOrder);
    if (rc !== 1) {
      await signalCorruption(
        s,
        true,
        -1,
        -1,
        `Invalid refcount: refblock offset ${hexAlt(offset)}, reftable index ${tableIndex}, block offset ${hexAlt(blockOffset)}, refcount ${hexAlt(rc)}`,
      );
      throw new BlockError('EINVAL');
    }
    setRefcountEntry(e.buf, bi, s.g.refcountOrder, 0);
    s.refCache.markDirty(e);
  } finally {
    s.refCache.put(e);
  }
  if (ci < s.freeClusterIndex) s.freeClusterIndex = ci;
  s.refCache.discardRange(blockOffset, cs);
  queueDiscard(s, blockOffset, cs);
}

/**
 * qcow2_shrink_reftable() (after a shrink): refcount blocks that count nothing but possibly themselves leave the
 * refcount table, which is rewritten at once and synced, and their clusters are freed, so that the file can be
 * truncated behind the last cluster still in use.
 */
export async function shrinkReftable(s: Qcow2State): Promise<void> {
  const cs = s.clusterSize;
  const entries = s.g.refcountBlockEntries;
  const order = s.g.refcountOrder;
  const table = new Uint8Array(s.reftable.length * 8);
  const view = new DataView(table.buffer);
  const unused: boolean[] = [];
  for (let i = 0; i < s.reftable.length; i++) {
    const offset = s.reftable[i]!;
    unused[i] = false;
    if (!offset) continue;
    if (offset < 0 || offset % cs) throw await refblockUnaligned(s, offset, i);
    const e = await s.refCache.get(offset);
    try {
      // A block that describes itself holds its own reference: that one does not count.
      const self = Math.floor(offset / cs / entries) === i ? (offset / cs) % entries : -1;
      const own = self >= 0 ? getRefcountEntry(e.buf, self, order) : 0;
      if (self >= 0) setRefcountEntry(e.buf, self, order, 0);
      unused[i] = isZeroBuffer(e.buf);
      if (self >= 0) setRefcountEntry(e.buf, self, order, own);
    } finally {
      s.refCache.put(e);
    }
    if (!unused[i]) {
      view.setUint32(i * 8, Math.floor(offset / 4294967296));
      view.setUint32(i * 8 + 4, offset >>> 0);
    }
  }
  let error: unknown = null;
  try {
    await s.writeFileSync(s.reftableOffset, table);
  } catch (e) {
    error = e;
  }
  // After a failed write the table on disk may be partly new: forgetting the blocks in memory too is safer.
  for (let i = 0; i < s.reftable.length; i++) {
    if (!unused[i]) continue;
    if (error === null) {
      try {
        await discardRefcountBlock(s, s.reftable[i]!);
      } catch (e) {
        error = e;
      }
    }
    s.setReftableEntry(i, 0);
  }
  if (!s.cacheDiscards) await processDiscards(s, error === null);
  if (error !== null) throw error;
}
