import { STRERROR, toBlockError } from '@blockgraph/block-core';
import { QCOW_MAX_REFTABLE_SIZE } from '../format/index.js';
import { CheckAbort } from './check-abort.js';
import { refreshFileLength, signalCorruption, type CheckState } from './check-state.js';

/**
 * Allocating and freeing clusters through the on-disk refcounts, for the one repair that needs new space
 * outside the rebuild: rewriting the snapshot table. This follows QEMU's qcow2_alloc_clusters() /
 * alloc_clusters_noref() (first fit from the image's free-cluster index, 0 after open), update_refcount()
 * (with its undo on failure and the EAGAIN restart) and alloc_refcount_block() for a missing refcount block
 * whose refcount table entry exists. Growing the refcount table is left to the driver: a check that would
 * need it fails with ENOSPC.
 */

/** alloc_refcount_block() created a block: the caller restarts its search (QEMU's -EAGAIN). */
class Restart extends Error {}

/** alloc_clusters_noref(): `count` free clusters from st.freeClusterIndex on; returns the first index. */
async function allocClustersNoref(st: CheckState, count: number): Promise<number> {
  let found = 0;
  while (found < count) {
    const next = st.freeClusterIndex++;
    if ((await st.refcounts.get(next)) !== 0) found = 0;
    else found++;
  }
  return st.freeClusterIndex - count;
}

/** alloc_refcount_block(): make sure a refcount block covers `cluster`; throws Restart after creating one. */
async function allocRefcountBlock(st: CheckState, cluster: number): Promise<void> {
  const rt = st.refcounts;
  const cs = st.clusterSize;
  const perBlock = st.g.refcountBlockEntries;
  const index = Math.floor(cluster / perBlock);
  if (index < rt.tableEntries && rt.blockOffset(index) !== 0) {
    await rt.blockData(cluster); // unaligned offsets fail here, as in QEMU
    return;
  }
  const newBlock = await allocClustersNoref(st, 1);
  if (newBlock === 0) {
    await signalCorruption(st, 'Preventing invalid allocation of refcount block at offset 0');
    throw new CheckAbort('EIO');
  }
  const data = new Uint8Array(cs);
  if (Math.floor(newBlock / perBlock) === index) {
    // The block describes itself.
    await rt.installBlock(newBlock * cs, data);
    rt.setIn(data, newBlock, 1);
  } else {
    // Described by another block (which may itself have to be created first).
    await updateRefcount(st, newBlock * cs, cs, 1, false);
    await rt.writeBack();
    await rt.installBlock(newBlock * cs, data);
  }
  await st.io.writeAt(newBlock * cs, data);
  await st.io.flush();
  if (index >= rt.tableEntries) {
    // The refcount table must grow first (QEMU: new self-describing structures past the end of the image,
    // qcow2_refcount_area). The new block stays allocated but unhooked, as when QEMU's growth fails.
    await refreshFileLength(st);
    const blocksUsed = Math.ceil(Math.max(cluster + 1, newBlock + 1) / perBlock);
    if (blocksUsed > QCOW_MAX_REFTABLE_SIZE / 8) throw new CheckAbort('EFBIG');
    throw new CheckAbort('ENOSPC', 'Growing the refcount table is not supported by the check');
  }
  const entry = new Uint8Array(8);
  new DataView(entry.buffer).setBigUint64(0, BigInt(newBlock * cs));
  await st.io.writeAt(Number(rt.tableOffset) + index * 8, entry);
  await st.io.flush();
  rt.setEntry(index, newBlock * cs);
  await refreshFileLength(st);
  // The new block may be where the caller meant to put its data.
  throw new Restart();
}

/** update_refcount(): add (or subtract) `addend` for every cluster of [offset, offset + length). */
async function updateRefcount(
  st: CheckState,
  offset: number,
  length: number,
  addend: number,
  decrease: boolean,
): Promise<void> {
  if (length <= 0) return;
  const cs = st.clusterSize;
  const start = Math.floor(offset / cs);
  const last = Math.floor((offset + length - 1) / cs);
  const done: number[] = [];
  let lastBlock = -1;
  try {
    for (let c = start; c <= last; c++) {
      const block = Math.floor(c / st.g.refcountBlockEntries);
      if (block !== lastBlock) {
        try {
          await allocRefcountBlock(st, c);
        } catch (e) {
          if (e instanceof Restart && st.freeClusterIndex > start) st.freeClusterIndex = start;
          throw e;
        }
        lastBlock = block;
      }
      const rc = await st.refcounts.get(c);
      const next = decrease ? rc - addend : rc + addend;
      if (next < 0 || next > st.refcounts.max) throw new CheckAbort('EINVAL');
      if (next === 0 && c < st.freeClusterIndex) st.freeClusterIndex = c;
      await st.refcounts.set(c, next);
      done.push(c);
    }
  } catch (e) {
    // Undo what was done (QEMU's best-effort revert).
    for (const c of done) {
      const rc = await st.refcounts.get(c);
      await st.refcounts.set(c, decrease ? rc + addend : rc - addend);
    }
    throw e;
  }
}

/**
 * qcow2_alloc_clusters(): allocate clusters for `size` bytes. Their new refcounts stay in the refcount cache;
 * the caller flushes the node before pointing anything at them.
 */
export async function allocClusters(st: CheckState, size: number): Promise<number> {
  const count = Math.ceil(size / st.clusterSize);
  for (;;) {
    const offset = (await allocClustersNoref(st, count)) * st.clusterSize;
    try {
      await updateRefcount(st, offset, size, 1, false);
    } catch (e) {
      if (e instanceof Restart) continue;
      throw e;
    }
    return offset;
  }
}

/**
 * qcow2_free_clusters(): one reference less for every cluster of [offset, offset + size). Like QEMU, a
 * failure only prints a message (the clusters leak). The lower refcounts stay in the refcount cache; the
 * clusters that became free are discarded at once (update_refcount's qcow2_process_discards).
 */
export async function freeClusters(st: CheckState, offset: number | bigint, size: number): Promise<void> {
  try {
    await updateRefcount(st, Number(offset), size, 1, true);
  } catch (e) {
    const code = e instanceof Restart ? 'EAGAIN' : toBlockError(e).code;
    st.messages.push(`qcow2_free_clusters failed: ${STRERROR[code]}`);
  }
  await st.refcounts.processDiscards();
  await refreshFileLength(st);
}
