import { BlockError, errnoError, ReqFlag, toBlockError, type PreallocMode, type ReqFlags } from '@blockgraph/block-core';
import { performCow } from './rw.js';
import { HeaderOffset, l1EntriesForSize } from '../format/index.js';
import { clusterDiscard, finishL2Meta, linkL2, subclusterZeroize, allocHostOffset, abortL2Meta } from './cluster.js';
import { writeCaches } from './header-io.js';
import { L2Meta } from './inflight.js';
import { growL1Table, shrinkL1Table } from './l1.js';
import { allocClustersAt, freeClusters, getLastCluster, refcountArea, shrinkReftable } from './refcount.js';
import { DiscardType, type Qcow2State } from './state.js';

/**
 * qcow2_co_truncate(): grow (with preallocation off, metadata, falloc or full) or shrink the guest disk.
 * Runs under the metadata lock; the core serialises it against requests beyond the smaller size.
 */

/** preallocate_co(): allocate (and link) clusters for [from, to) without writing guest data. */
export async function preallocate(s: Qcow2State, from: number, to: number, mode: PreallocMode): Promise<void> {
  let offset = from;
  let bytes = to - from;
  let hostEnd = 0;
  while (bytes) {
    const cur = Math.min(bytes, Math.floor(0x7fffffff / s.clusterSize) * s.clusterSize);
    const res = await allocHostOffset(s, offset, cur);
    let i = 0;
    try {
      for (const m of res.metas) m.prealloc = true;
      // perform_cow(): the COW regions of a partial last cluster are written too.
      for (; i < res.metas.length; i++) {
        const m = res.metas[i]!;
        if (m.hasCow) await cowUnlocked(s, m);
        await linkL2(s, m);
        finishL2Meta(s, m);
      }
    } finally {
      for (; i < res.metas.length; i++) await abortL2Meta(s, res.metas[i]!);
    }
    hostEnd = res.hostOffset + res.bytes;
    bytes -= res.bytes;
    offset += res.bytes;
  }
  const len = s.dataFile.node.totalBytes;
  if (hostEnd > len) {
    await s.dataFile.truncate(hostEnd, false, mode === 'metadata' ? 'off' : mode, 0);
  }
}

export async function truncateImage(
  s: Qcow2State,
  offset: number,
  exact: boolean,
  prealloc: PreallocMode,
  flags: ReqFlags,
  writeZeroData: (offset: number, bytes: number) => Promise<void>,
): Promise<void> {
  if (prealloc !== 'off' && prealloc !== 'metadata' && prealloc !== 'falloc' && prealloc !== 'full') {
    throw new BlockError('ENOTSUP', `Unsupported preallocation mode '${String(prealloc)}'`);
  }
  if (offset % 512) throw new BlockError('EINVAL', 'The new size must be a multiple of 512');
  if (s.header.nbSnapshots && s.version < 3) {
    throw new BlockError('ENOTSUP', "Can't resize a v2 image which has snapshots");
  }
  const cs = s.clusterSize;
  const oldLength = s.size;
  const newL1Size = l1EntriesForSize(offset, s.g);

  if (offset < oldLength) {
    if (prealloc !== 'off') throw new BlockError('EINVAL', "Preallocation can't be used for shrinking an image");
    const from = Math.ceil(offset / cs) * cs;
    // Each step fails in QEMU's words (error_setg_errno).
    const step = async (what: string, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (e) {
        throw errnoError(toBlockError(e), what);
      }
    };
    if (oldLength > from) {
      await step('Failed to discard cropped clusters', () => clusterDiscard(s, from, oldLength - from, DiscardType.ALWAYS, true));
    }
    await step('Failed to reduce the number of L2 tables', () => shrinkL1Table(s, newL1Size));
    await step('Failed to discard unused refblocks', () => shrinkReftable(s));
    const oldFileSize = s.fileLength;
    const last = await getLastCluster(s, oldFileSize);
    if ((last + 1) * cs < oldFileSize) {
      try {
        await s.file.truncate((last + 1) * cs, false, 'off', 0);
      } catch {
        // QEMU only warns: "Failed to truncate the tail of the image"
      }
    }
  } else {
    await growL1Table(s, newL1Size, true);
    if (s.dataFileIsRaw && prealloc === 'off') prealloc = 'metadata';
  }

  switch (prealloc) {
    case 'off':
      if (s.hasDataFile) await s.dataFile.truncate(offset, exact, 'off', 0);
      break;
    case 'metadata':
      if (offset > oldLength) await preallocate(s, oldLength, offset, prealloc);
      break;
    case 'falloc':
    case 'full': {
      if (s.hasDataFile) {
        if (offset > oldLength) await preallocate(s, oldLength, offset, prealloc);
        break;
      }
      if (offset <= oldLength) break;
      let oldFileSize = s.fileLength;
      try {
        oldFileSize = (await getLastCluster(s, oldFileSize) + 1) * cs;
      } catch {
        oldFileSize = Math.ceil(oldFileSize / cs) * cs;
      }
      const oldStart = oldLength - (oldLength % cs);
      const nbData = (Math.ceil(offset / cs) * cs - oldStart) / cs;
      const nbL2 = Math.ceil(nbData / (cs / s.g.l2EntrySize)) + 1;
      const allocationStart = await refcountArea(s, oldFileSize, nbData + nbL2, true, 0, 0);
      const got = await allocClustersAt(s, allocationStart, nbData);
      if (got !== nbData) throw new BlockError('ENOSPC', 'qcow2: could not allocate the preallocated clusters');
      const newFileSize = allocationStart + nbData * cs;
      let zeroed = false;
      if (flags & ReqFlag.ZERO_WRITE) {
        try {
          await s.file.truncate(newFileSize, false, prealloc, ReqFlag.ZERO_WRITE);
          flags &= ~ReqFlag.ZERO_WRITE;
          zeroed = true;
        } catch {
          zeroed = false;
        }
      }
      if (!zeroed) {
        try {
          await s.file.truncate(newFileSize, false, prealloc, 0);
        } catch (e) {
          await freeClusters(s, allocationStart, nbData * cs, DiscardType.OTHER);
          throw (e as BlockError).prepend ? (e as BlockError).prepend('Failed to resize underlying file: ') : e;
        }
      }
      let host = allocationStart;
      let guest = oldLength;
      let left = nbData;
      while (left) {
        const idx = Math.floor(guest / cs) % s.l2SliceEntries;
        const n = Math.min(left, s.l2SliceEntries - idx);
        const cowStartLength = guest % cs;
        guest -= cowStartLength;
        const m = new L2Meta(guest, host, n, false, { offset: 0, bytes: cowStartLength }, { offset: n * cs, bytes: 0 }, false);
        m.prealloc = !zeroed;
        try {
          if (m.hasCow) await cowUnlocked(s, m);
          await linkL2(s, m);
        } catch (e) {
          await freeClusters(s, host, left * cs, DiscardType.OTHER);
          throw e;
        }
        guest += n * cs;
        host += n * cs;
        left -= n;
      }
      break;
    }
  }

  if (flags & ReqFlag.ZERO_WRITE && offset > oldLength) {
    const scs = s.g.subclusterSize;
    const zeroStart = Math.ceil(oldLength / scs) * scs;
    const sizeBefore = s.size;
    s.size = offset;
    try {
      if (offset > zeroStart) {
        try {
          await subclusterZeroize(s, zeroStart, offset - zeroStart, false);
        } catch (e) {
          throw errnoError(e, 'Failed to zero out new clusters');
        }
      }
      if (zeroStart > oldLength) {
        const len = Math.min(zeroStart, offset) - oldLength;
        s.lock.unlock();
        try {
          await writeZeroData(oldLength, len);
        } catch (e) {
          throw errnoError(e, 'Failed to zero out the new area');
        } finally {
          await s.lock.lock();
        }
      }
    } finally {
      s.size = sizeBefore;
    }
  }

  if (prealloc !== 'off') await writeCaches(s);

  s.size = offset;
  const sizeBytes = new Uint8Array(8);
  const v = new DataView(sizeBytes.buffer);
  v.setUint32(0, Math.floor(offset / 4294967296));
  v.setUint32(4, offset >>> 0);
  await s.writeFileSync(HeaderOffset.size, sizeBytes);
  s.header.size = offset;
}

/** perform_cow() with the metadata lock released around the data I/O. */
async function cowUnlocked(s: Qcow2State, m: L2Meta): Promise<void> {
  s.lock.unlock();
  try {
    await performCow(s, m);
  } finally {
    await s.lock.lock();
  }
}
