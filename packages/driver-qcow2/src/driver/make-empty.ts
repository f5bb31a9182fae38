/**
 * qcow2_make_empty() (bdrv_make_empty; `qemu-img commit` empties the committed top with it). A v3 image without
 * snapshots, bitmaps, LUKS encryption or external data file is rebuilt in place as QEMU's make_completely_empty()
 * does — header, one-cluster refcount table, one refcount block, a zeroed L1 table, nothing else — so the file
 * comes out as QEMU's; any other image has every guest cluster discarded.
 */
import { BlockError, isBlockError } from '@blockgraph/block-core';
import { CryptMethod, INT_MAX } from '../format/index.js';
import { clusterDiscard } from './cluster.js';
import { markClean, markDirty } from './header-io.js';
import { allocClusters, processDiscards } from './refcount.js';
import { DiscardType, type Qcow2State } from './state.js';

export async function makeEmpty(s: Qcow2State): Promise<void> {
  const cs = s.clusterSize;
  const l1Clusters = Math.ceil(s.l1Size / (cs / 8));
  const refblockEntries = (cs * 8) / s.g.refcountBits;
  if (
    s.version >= 3 &&
    s.snapshots.length === 0 &&
    !s.header.extensions.bitmaps?.nbBitmaps &&
    3 + l1Clusters <= refblockEntries &&
    s.header.cryptMethod !== CryptMethod.LUKS &&
    !s.hasDataFile
  ) {
    await makeCompletelyEmpty(s, l1Clusters);
    return;
  }
  const step = Math.floor(INT_MAX / cs) * cs;
  for (let offset = 0; offset < s.size; offset += step) {
    // After a commit the data lives on in the backing file: QCOW2_DISCARD_SNAPSHOT passes the discard down.
    await clusterDiscard(s, offset, Math.min(step, s.size - offset), DiscardType.SNAPSHOT, true);
  }
}

/**
 * make_completely_empty(). The dirty bit covers the steps in between: until the refcounts are rebuilt, a crash
 * leaves an image that the next read-write open repairs. A failure in between leaves the in-memory refcounts
 * wrong, so the node stops (QEMU's fail_broken_refcounts: bs->drv = NULL): no more I/O, and the dirty bit stays
 * set for that repair, because close() does not mark a broken image clean.
 */
async function makeCompletelyEmpty(s: Qcow2State, l1Clusters: number): Promise<void> {
  await processDiscards(s, true);
  // qcow2_cache_empty(): write back, then forget every cached table.
  await s.l2Cache.flush();
  s.l2Cache.dropAll();
  await s.refCache.flush();
  s.refCache.dropAll();
  await markDirty(s);
  try {
    await rebuildEmpty(s, l1Clusters);
  } catch (e) {
    s.broken = new BlockError(isBlockError(e) ? e.code : 'EIO', `Emptying the image failed, it needs a repair: ${(e as Error).message}`, { cause: e });
    throw e;
  }
  await markClean(s);
  await s.file.truncate((3 + l1Clusters) * s.clusterSize, false, 'off', 0);
}

async function rebuildEmpty(s: Qcow2State, l1Clusters: number): Promise<void> {
  const cs = s.clusterSize;
  await s.file.pwriteZeroes(s.l1Offset, l1Clusters * cs, 0);
  s.l1.fill(0);
  s.l1Changed();
  // The refcount table, the first refcount block and the L1 table go to clusters 1, 2 and 3 on.
  await s.file.pwriteZeroes(cs, (2 + l1Clusters) * cs, 0);
  const fields = new DataView(new ArrayBuffer(20));
  fields.setBigUint64(0, BigInt(3 * cs));
  fields.setBigUint64(8, BigInt(cs));
  fields.setUint32(16, 1);
  await s.writeFileSync(40, new Uint8Array(fields.buffer));
  s.setL1Table(s.l1, s.l1Size, 3 * cs);
  s.setReftable(new Float64Array(cs / 8));
  s.reftableOffset = cs;
  s.header.refcountTableOffset = cs;
  s.header.refcountTableClusters = 1;

  const entry = new DataView(new ArrayBuffer(8));
  entry.setBigUint64(0, BigInt(2 * cs));
  await s.writeFileSync(cs, new Uint8Array(entry.buffer));
  s.setReftableEntry(0, 2 * cs);
  s.updateMaxRefcountTableIndex();

  s.freeClusterIndex = 0;
  s.freeByteOffset = 0;
  s.metadataPreallocation = null;
  const offset = await allocClusters(s, 3 * cs + s.l1Size * 8);
  if (offset !== 0) throw new BlockError('EIO', 'First cluster in emptied image is in use');
}
