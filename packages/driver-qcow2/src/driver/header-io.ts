import {
  INCOMPAT_DIRTY,
  incompatibleFeaturesPatch,
  serializeHeader,
} from '../format/index.js';
import type { Qcow2State } from './state.js';

/**
 * Header writes: full rewrites of cluster 0 (qcow2_update_header) and the dirty bit (qcow2_mark_dirty /
 * qcow2_mark_clean). The in-memory header is the source of truth; everything that changes a header field
 * updates it first.
 */

/** qcow2_update_header(): rewrite cluster 0 from the in-memory header (not synced). */
export async function updateHeader(s: Qcow2State): Promise<void> {
  const h = s.header;
  h.size = s.size;
  h.l1Size = s.l1Size;
  h.l1TableOffset = s.l1Offset;
  h.refcountTableOffset = s.reftableOffset;
  h.refcountTableClusters = (s.reftable.length * 8) / s.clusterSize;
  const bytes = serializeHeader(h);
  await s.writeFile(0, bytes);
}

/** qcow2_write_caches(): L2 tables, then refcount blocks unless lazy refcounts postpone them. */
export async function writeCaches(s: Qcow2State): Promise<void> {
  await s.l2Cache.write();
  if (s.needAccurateRefcounts) await s.refCache.write();
}

/** qcow2_flush_caches(). */
export async function flushCaches(s: Qcow2State): Promise<void> {
  await writeCaches(s);
  await s.flushFile();
}

/** qcow2_mark_dirty(): set the dirty bit on disk (synced) before the first postponed refcount update. */
export async function markDirty(s: Qcow2State): Promise<void> {
  if (s.isDirty) return;
  const patch = incompatibleFeaturesPatch(s.header.incompatibleFeatures | INCOMPAT_DIRTY);
  await s.writeFileSync(patch.offset, patch.bytes);
  s.header.incompatibleFeatures |= INCOMPAT_DIRTY;
}

/** qcow2_mark_clean(): write everything (refcounts included), then clear the dirty bit. */
export async function markClean(s: Qcow2State): Promise<void> {
  if (!s.isDirty) return;
  s.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
  try {
    await s.l2Cache.write();
    await s.refCache.write();
    await s.flushFile();
    await updateHeader(s);
    await s.flushFile();
  } catch (e) {
    s.header.incompatibleFeatures |= INCOMPAT_DIRTY;
    throw e;
  }
}
