import { STRERROR, isBlockError, toBlockError } from '@blockgraph/block-core';
import {
  ClusterType,
  QCOW_MAX_L1_SIZE,
  bitmapTableEntryIsValid,
  compressedReadLength,
  l2ClusterType,
} from '../format/index.js';
import { CheckAbort, FIX_ERRORS } from './check-abort.js';
import type { CheckCounters } from './check-counters.js';
import { refreshFileLength, type CheckState } from './check-state.js';
import { readFull, readFullOrBeyondEof } from './image-io.js';
import { Overlap, preWriteOverlapCheck } from './metadata-overlap.js';
import type { RefcountArray } from './refcount-array.js';
import { exceedsBy, hex, hex64, hexAlt, offsetIntoCluster, u64, type Offset } from './u64-text.js';

/**
 * Building the in-memory refcount array: QEMU's calculate_refcounts() with qcow2_inc_refcounts_imrt(),
 * check_refcounts_l1/l2(), qcow2_check_bitmaps_refcounts() and check_refblocks(), including their
 * validations, message texts and the repairs they make themselves (unaligned preallocated zero clusters,
 * refcount blocks beyond the end of the file).
 */

/** One pass over the image's references. */
export interface RefcountPass {
  st: CheckState;
  res: CheckCounters;
  imrt: RefcountArray;
  /** Set when the refcount structures cannot be repaired in place. */
  rebuild: boolean;
}

/** check_refcounts_l2 flag: count allocated/fragmented/compressed clusters (active L1 only). */
const CHECK_FRAG_INFO = 2;

const L1E_OFFSET_MASK_HI = 0x00ffffff;
const OFFSET_MASK_LO = 0xfffffe00;
const COPIED_HI = 0x80000000;

/** qcow2_inc_refcounts_imrt(): one more reference to every cluster of [offset, offset + size). */
export function incRefcounts(p: RefcountPass, offset: Offset, size: number): void {
  if (size <= 0) return;
  const { st, res, imrt } = p;
  const cs = st.clusterSize;
  // The last cluster of an image may be partly allocated, so a reference may reach less than one
  // cluster past EOF.
  if (exceedsBy(offset, size, st.fileLength, cs)) {
    st.messages.push(
      'ERROR: counting reference for region exceeding the end of the file by one cluster or more: ' +
        `offset 0x${hex(offset)} size 0x${hex(size)}`,
    );
    res.corruptions++;
    return;
  }
  const off = offset as number;
  const start = Math.floor(off / cs);
  const last = Math.floor((off + size - 1) / cs);
  for (let k = start; k <= last; k++) {
    if (k >= imrt.size) imrt.resize(k + 1);
    const refcount = imrt.get(k);
    if (refcount === imrt.max) {
      st.messages.push(`ERROR: overflow cluster offset=0x${hex(k * cs)}`);
      st.messages.push(
        'Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if ' +
          'the image cannot be opened for writing',
      );
      res.corruptions++;
      continue;
    }
    imrt.set(k, refcount + 1);
  }
}

/** Read an L1/L2 table; an I/O error ends the check like QEMU's "I/O error in check_refcounts_l1/l2". */
async function readTable(p: RefcountPass, offset: Offset, length: number, which: 'l1' | 'l2'): Promise<Uint8Array> {
  return (await readTableOrBeyondEof(p, offset, length, which)) ?? new Uint8Array(length);
}

/** {@link readTable}; null when the table lies wholly beyond EOF (it reads as zeroes: nothing to walk). */
async function readTableOrBeyondEof(
  p: RefcountPass,
  offset: Offset,
  length: number,
  which: 'l1' | 'l2',
): Promise<Uint8Array | null> {
  try {
    return await readFullOrBeyondEof(p.st.io, offset, length);
  } catch (e) {
    p.st.messages.push(`ERROR: I/O error in check_refcounts_${which}`);
    p.res.checkErrors++;
    throw new CheckAbort(isBlockError(e) ? e.code : 'EIO');
  }
}

/** fix_l2_entry_by_zero(): turn an unaligned preallocated zero cluster into a plain zero cluster. */
async function fixL2EntryByZero(
  p: RefcountPass,
  l2Offset: number,
  table: Uint8Array,
  index: number,
  active: boolean,
): Promise<'fixed' | 'failed' | 'overlap'> {
  const { st, res } = p;
  const es = st.g.l2EntrySize;
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const at = index * es;
  if (st.g.extendedL2) {
    // Allocated subclusters become zero subclusters.
    const zero = view.getUint32(at + 8) | view.getUint32(at + 12);
    view.setUint32(at, 0);
    view.setUint32(at + 4, 0);
    view.setUint32(at + 8, zero >>> 0);
    view.setUint32(at + 12, 0);
  } else {
    view.setUint32(at, 0);
    view.setUint32(at + 4, 1);
  }
  const entryOffset = l2Offset + at;
  try {
    await preWriteOverlapCheck(st, active ? Overlap.ACTIVE_L2 : Overlap.INACTIVE_L2, entryOffset, es);
  } catch (e) {
    st.messages.push('ERROR: Overlap check failed');
    res.checkErrors++;
    if (e instanceof CheckAbort) return 'overlap';
    throw e;
  }
  try {
    await st.io.writeAt(entryOffset, table.slice(at, at + es));
    await st.io.flush();
  } catch (e) {
    st.messages.push(`ERROR: Failed to overwrite L2 table entry: ${STRERROR[toBlockError(e).code]}`);
    res.checkErrors++;
    return 'failed';
  }
  res.corruptions--;
  res.corruptionsFixed++;
  return 'fixed';
}

/** check_refcounts_l2(): references of one L2 table, with its entry checks. */
async function checkRefcountsL2(p: RefcountPass, l2Offset: Offset, flags: number, fix: number, active: boolean) {
  const { st, res } = p;
  const g = st.g;
  const cs = st.clusterSize;
  const es = g.l2EntrySize;
  const table = await readTableOrBeyondEof(p, l2Offset, g.l2Entries * es, 'l2');
  if (!table) return;
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const extended = g.extendedL2;
  const coffsetHiMask = 2 ** (g.csizeShift - 32) - 1;
  let nextContiguous: Offset = 0;

  for (let i = 0; i < g.l2Entries; i++) {
    const at = i * es;
    let hi = view.getUint32(at);
    const lo = view.getUint32(at + 4);
    const zeroBits = extended ? view.getUint32(at + 8) : 0;
    const allocBits = extended ? view.getUint32(at + 12) : 0;
    const type = l2ClusterType(hi, lo, st.l2Mode);

    if (type !== ClusterType.COMPRESSED && (hi & 0x3f000000 || lo & 0x1fe)) {
      st.messages.push(`ERROR found l2 entry with reserved bits set: ${hex64(hi, lo)}`);
      res.corruptions++;
    }

    switch (type) {
      case ClusterType.COMPRESSED: {
        if (hi & COPIED_HI) {
          st.messages.push(
            `ERROR: coffset=0x${hex64(hi & coffsetHiMask, lo)}: copied flag must never be set for compressed clusters`,
          );
          hi = (hi & ~COPIED_HI) >>> 0;
          res.corruptions++;
        }
        if (st.hasDataFile) {
          st.messages.push(`ERROR compressed cluster ${i} with data file, entry=0x${hex64(hi, lo)}`);
          res.corruptions++;
          break;
        }
        if (zeroBits || allocBits) {
          st.messages.push(
            `ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex64(hi, lo)}`,
          );
          res.corruptions++;
          break;
        }
        const coffset = u64(hi & coffsetHiMask, lo);
        incRefcounts(p, coffset, compressedReadLength(hi, lo, g));
        if (flags & CHECK_FRAG_INFO) {
          res.allocatedClusters++;
          res.compressedClusters++;
          // Compressed clusters are fragmented by nature (sub-sector packing).
          res.fragmentedClusters++;
        }
        break;
      }

      case ClusterType.ZERO_ALLOC:
      case ClusterType.NORMAL: {
        const offset = u64(hi & L1E_OFFSET_MASK_HI, lo & OFFSET_MASK_LO);
        if ((zeroBits & allocBits) !== 0) {
          res.corruptions++;
          st.messages.push(
            `ERROR offset=${hex(offset)}: Allocated cluster has corrupted subcluster allocation bitmap`,
          );
        }
        if ((lo & OFFSET_MASK_LO) % cs !== 0) {
          res.corruptions++;
          const containsData = extended ? allocBits !== 0 : !(lo & 1);
          if (!containsData) {
            st.messages.push(
              `${fix & FIX_ERRORS ? 'Repairing' : 'ERROR'} offset=${hex(offset)}: Preallocated cluster is not ` +
                'properly aligned; L2 entry corrupted.',
            );
            if (fix & FIX_ERRORS && typeof l2Offset === 'number') {
              const r = await fixL2EntryByZero(p, l2Offset, table, i, active);
              if (r === 'overlap') throw new CheckAbort('EIO');
              // Fixed: the cluster is unused now.
              if (r === 'fixed') continue;
            }
          } else {
            st.messages.push(`ERROR offset=${hex(offset)}: Data cluster is not properly aligned; L2 entry corrupted.`);
          }
        }
        if (flags & CHECK_FRAG_INFO) {
          res.allocatedClusters++;
          if (nextContiguous !== 0 && offset !== nextContiguous) res.fragmentedClusters++;
          nextContiguous = typeof offset === 'number' ? offset + cs : offset + BigInt(cs);
        }
        if (!st.hasDataFile) incRefcounts(p, offset, cs);
        break;
      }

      case ClusterType.ZERO_PLAIN:
        break;

      default: // UNALLOCATED
        if (allocBits) {
          res.corruptions++;
          st.messages.push('ERROR: Unallocated cluster has non-zero subcluster allocation map');
        }
        break;
    }
  }
}

/** check_refcounts_l1(): the L1 table itself, its L2 tables and everything they reference. */
async function checkRefcountsL1(
  p: RefcountPass,
  l1Offset: Offset,
  l1Size: number,
  flags: number,
  fix: number,
  active: boolean,
): Promise<void> {
  const { st, res } = p;
  if (!l1Size) return;
  incRefcounts(p, l1Offset, l1Size * 8);
  const bytes = await readTable(p, l1Offset, l1Size * 8, 'l1');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < l1Size; i++) {
    const hi = view.getUint32(i * 8);
    const lo = view.getUint32(i * 8 + 4);
    if (!hi && !lo) continue;
    if (hi & 0x7f000000 || lo & 0x1ff) {
      st.messages.push(`ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`);
      res.corruptions++;
    }
    const l2Offset = u64(hi & L1E_OFFSET_MASK_HI, lo & OFFSET_MASK_LO);
    incRefcounts(p, l2Offset, st.clusterSize);
    if ((lo & OFFSET_MASK_LO) % st.clusterSize !== 0) {
      st.messages.push(`ERROR l2_offset=${hex(l2Offset)}: Table is not cluster aligned; L1 entry corrupted`);
      res.corruptions++;
    }
    await checkRefcountsL2(p, l2Offset, flags, fix, active);
  }
}

/** qcow2_check_bitmaps_refcounts(): bitmap directory, bitmap tables and bitmap data clusters. */
async function checkBitmapsRefcounts(p: RefcountPass): Promise<void> {
  const { st, res } = p;
  const ext = st.header.extensions.bitmaps;
  if (!ext) return;
  incRefcounts(p, ext.directoryOffset, ext.directorySize);
  for (const bm of st.bitmaps) {
    incRefcounts(p, bm.bitmapTableOffset, bm.bitmapTableSize * 8);
    const bytes = await readFull(st.io, bm.bitmapTableOffset, bm.bitmapTableSize * 8);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < bm.bitmapTableSize; i++) {
      const hi = view.getUint32(i * 8);
      const lo = view.getUint32(i * 8 + 4);
      // bitmap_table_load() refuses a table with an invalid entry: the check stops there.
      if (!bitmapTableEntryIsValid(hi, lo, st.clusterSize)) {
        res.corruptions++;
        throw new CheckAbort('EINVAL');
      }
    }
    for (let i = 0; i < bm.bitmapTableSize; i++) {
      const offset = u64(view.getUint32(i * 8) & L1E_OFFSET_MASK_HI, view.getUint32(i * 8 + 4) & OFFSET_MASK_LO);
      if (offset !== 0) incRefcounts(p, offset, st.clusterSize);
    }
  }
}

/** check_refblocks(): every refcount block is referenced once; broken table entries force a rebuild. */
async function checkRefblocks(p: RefcountPass, fix: number): Promise<void> {
  const { st, res } = p;
  const rt = st.refcounts;
  const cs = st.clusterSize;
  for (let i = 0; i < rt.tableEntries; i++) {
    const lo = rt.entryLo(i);
    const offset = rt.blockOffset(i);
    if (lo & 0x1ff) {
      st.messages.push(`ERROR refcount table entry ${i} has reserved bits set`);
      res.corruptions++;
      p.rebuild = true;
      continue;
    }
    if ((lo >>> 0) % cs !== 0) {
      st.messages.push(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      res.corruptions++;
      p.rebuild = true;
      continue;
    }
    const cluster = typeof offset === 'number' ? offset / cs : Infinity;
    if (cluster >= p.imrt.size) {
      res.corruptions++;
      st.messages.push(`${fix & FIX_ERRORS ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
      if (fix & FIX_ERRORS) {
        let err: string;
        if (typeof offset === 'number' && offset + cs <= Number.MAX_SAFE_INTEGER) {
          try {
            try {
              if (st.io.truncate) await st.io.truncate(offset + cs);
              else await st.io.writeAt(offset, new Uint8Array(cs));
            } catch (e) {
              // QEMU's file driver reports its own error first (error_report_err).
              st.messages.push(`qemu-img: Could not resize file: ${STRERROR[toBlockError(e).code]}`);
              throw e;
            }
            await refreshFileLength(st);
            const newNb = Math.ceil(st.fileLength / cs);
            if (newNb > p.imrt.size) p.imrt.resize(newNb);
            if (cluster < p.imrt.size) {
              res.corruptions--;
              res.corruptionsFixed++;
              incRefcounts(p, offset, cs);
              continue;
            }
            err = STRERROR.EINVAL;
          } catch (e) {
            err = STRERROR[toBlockError(e).code];
          }
        } else if (BigInt(offset) > (1n << 63n) - 1n - BigInt(cs)) {
          err = STRERROR.EINVAL;
        } else {
          // Beyond 2^53 no file can grow; report what a file system says (ext4 and friends: EFBIG).
          st.messages.push(`qemu-img: Could not resize file: ${STRERROR.EFBIG}`);
          err = STRERROR.EFBIG;
        }
        p.rebuild = true;
        st.messages.push(`ERROR could not resize image: ${err}`);
      }
      continue;
    }
    if (offset !== 0) {
      incRefcounts(p, offset, cs);
      const rc = p.imrt.get(cluster as number);
      if (rc !== 1) {
        st.messages.push(`ERROR refcount block ${i} refcount=${rc}`);
        res.corruptions++;
        p.rebuild = true;
      }
    }
  }
}

/**
 * calculate_refcounts(): add every reference the image makes to the array — header, active L1 and its L2
 * tables and data, every snapshot's L1/L2/data, the snapshot table, the refcount table, the LUKS header,
 * bitmaps, and the refcount blocks.
 */
export async function calculateRefcounts(p: RefcountPass, fix: number): Promise<void> {
  const { st, res } = p;
  const h = st.header;
  incRefcounts(p, 0, st.clusterSize);
  await checkRefcountsL1(p, st.l1Offset, h.l1Size, CHECK_FRAG_INFO, fix, true);

  if (st.hasDataFile && st.snapshots.length) {
    st.messages.push(`ERROR ${st.snapshots.length} snapshots in image with data file`);
    res.corruptions++;
  }
  for (const sn of st.snapshots) {
    if (offsetIntoCluster(sn.l1TableOffset, st.clusterSize) !== 0) {
      st.messages.push(
        `ERROR snapshot ${sn.id} (${sn.name}) l1_offset=${hexAlt(sn.l1TableOffset)}: ` +
          'L1 table is not cluster aligned; snapshot table entry corrupted',
      );
      res.corruptions++;
      continue;
    }
    if (sn.l1Size > QCOW_MAX_L1_SIZE / 8) {
      st.messages.push(
        `ERROR snapshot ${sn.id} (${sn.name}) l1_size=${hexAlt(sn.l1Size)}: ` +
          'L1 table is too large; snapshot table entry corrupted',
      );
      res.corruptions++;
      continue;
    }
    await checkRefcountsL1(p, sn.l1TableOffset, sn.l1Size, 0, fix, false);
  }
  incRefcounts(p, st.snapshotsOffset, st.snapshotsSize);
  incRefcounts(p, st.refcounts.tableOffset, st.refcounts.tableEntries * 8);
  const crypto = h.extensions.cryptoHeader;
  if (crypto && crypto.length) incRefcounts(p, crypto.offset, crypto.length);
  await checkBitmapsRefcounts(p);
  await checkRefblocks(p, fix);
}
