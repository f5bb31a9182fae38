import { HeaderOffset } from './constants.js';
import { viewOf, writeU64 } from './u64.js';

/**
 * Targeted header writes. Outside full rewrites (qcow2_update_header), QEMU patches a few header fields in place
 * with small synced writes so that a crash leaves either the old or the new value; a driver doing the same
 * writes `bytes` at `offset` of the image file and flushes.
 */
export interface HeaderPatch {
  /** Byte offset in the image file (inside cluster 0). */
  offset: number;
  bytes: Uint8Array;
}

/** incompatible_features (8 bytes at 72): how QEMU sets the dirty bit (qcow2_mark_dirty). */
export function incompatibleFeaturesPatch(incompatibleFeatures: bigint): HeaderPatch {
  const bytes = new Uint8Array(8);
  viewOf(bytes).setBigUint64(0, incompatibleFeatures);
  return { offset: HeaderOffset.incompatibleFeatures, bytes };
}

/** l1_size + l1_table_offset (12 bytes at 36): the switch to a grown L1 table (qcow2_grow_l1_table). */
export function l1TablePatch(l1Size: number, l1TableOffset: number): HeaderPatch {
  const bytes = new Uint8Array(12);
  const view = viewOf(bytes);
  view.setUint32(0, l1Size);
  writeU64(view, 4, l1TableOffset);
  return { offset: HeaderOffset.l1Size, bytes };
}

/** refcount_table_offset + refcount_table_clusters (12 bytes at 48): the switch to a new refcount table. */
export function refcountTablePatch(refcountTableOffset: number, refcountTableClusters: number): HeaderPatch {
  const bytes = new Uint8Array(12);
  const view = viewOf(bytes);
  writeU64(view, 0, refcountTableOffset);
  view.setUint32(8, refcountTableClusters);
  return { offset: HeaderOffset.refcountTableOffset, bytes };
}

/** nb_snapshots + snapshots_offset (12 bytes at 60): the switch to a new snapshot table (qcow2_write_snapshots). */
export function snapshotTablePatch(nbSnapshots: number, snapshotsOffset: number): HeaderPatch {
  const bytes = new Uint8Array(12);
  const view = viewOf(bytes);
  view.setUint32(0, nbSnapshots);
  writeU64(view, 4, snapshotsOffset);
  return { offset: HeaderOffset.nbSnapshots, bytes };
}

/** Apply a patch to an in-memory copy of cluster 0. */
export function applyHeaderPatch(cluster0: Uint8Array, patch: HeaderPatch): void {
  cluster0.set(patch.bytes, patch.offset);
}
