import {
  EXTL2_SUBCLUSTERS_PER_CLUSTER,
  L2E_SIZE_EXTENDED,
  L2E_SIZE_NORMAL,
} from './constants.js';

/**
 * The numbers every qcow2 structure is sized by, derived once from cluster_bits, refcount_order and the
 * extended-L2 feature (QEMU computes the same set in qcow2_do_open).
 */
export interface Qcow2Geometry {
  clusterBits: number;
  clusterSize: number;
  extendedL2: boolean;
  /** Bytes per L2 entry: 8, or 16 with extended L2 entries. */
  l2EntrySize: number;
  /** log2 of the number of entries in one L2 table. */
  l2Bits: number;
  l2Entries: number;
  /** 1 without extended L2 entries, 32 with. */
  subclustersPerCluster: number;
  subclusterBits: number;
  subclusterSize: number;
  refcountOrder: number;
  refcountBits: number;
  /** log2 of the number of entries in one refcount block. */
  refcountBlockBits: number;
  refcountBlockEntries: number;
  /** Bit position of the sector-count field in a compressed cluster descriptor (62 - (cluster_bits - 8)). */
  csizeShift: number;
  /** Mask of the sector-count field once shifted down. */
  csizeMask: number;
  /** Guest bytes one L1 entry (one L2 table) maps. */
  bytesPerL2Table: number;
}

export function computeGeometry(clusterBits: number, refcountOrder: number, extendedL2: boolean): Qcow2Geometry {
  const clusterSize = 2 ** clusterBits;
  const l2EntrySize = extendedL2 ? L2E_SIZE_EXTENDED : L2E_SIZE_NORMAL;
  const l2Bits = clusterBits - Math.log2(l2EntrySize);
  const subclustersPerCluster = extendedL2 ? EXTL2_SUBCLUSTERS_PER_CLUSTER : 1;
  const subclusterSize = clusterSize / subclustersPerCluster;
  const refcountBlockBits = clusterBits + 3 - refcountOrder;
  return {
    clusterBits,
    clusterSize,
    extendedL2,
    l2EntrySize,
    l2Bits,
    l2Entries: 2 ** l2Bits,
    subclustersPerCluster,
    subclusterBits: Math.log2(subclusterSize),
    subclusterSize,
    refcountOrder,
    refcountBits: 2 ** refcountOrder,
    refcountBlockBits,
    refcountBlockEntries: 2 ** refcountBlockBits,
    csizeShift: 62 - (clusterBits - 8),
    csizeMask: 2 ** (clusterBits - 8) - 1,
    bytesPerL2Table: 2 ** (clusterBits + l2Bits),
  };
}

/** Number of L1 entries needed to map `size` guest bytes (QEMU's size_to_l1). */
export function l1EntriesForSize(size: number, g: Qcow2Geometry): number {
  return Math.ceil(size / g.bytesPerL2Table);
}

/** Guest offset -> L1 index. */
export function l1Index(guestOffset: number, g: Qcow2Geometry): number {
  return Math.floor(guestOffset / g.bytesPerL2Table);
}

/** Guest offset -> index of its cluster inside the L2 table. */
export function l2Index(guestOffset: number, g: Qcow2Geometry): number {
  return Math.floor(guestOffset / g.clusterSize) % g.l2Entries;
}

/** Guest offset -> subcluster index inside its cluster (always 0 without extended L2 entries). */
export function subclusterIndex(guestOffset: number, g: Qcow2Geometry): number {
  return Math.floor(guestOffset / g.subclusterSize) % g.subclustersPerCluster;
}

/** Host offset -> (refcount table index, index inside that refcount block). */
export function refcountTableIndex(hostOffset: number, g: Qcow2Geometry): number {
  return Math.floor(hostOffset / 2 ** (g.refcountBlockBits + g.clusterBits));
}

export function refcountBlockIndex(hostOffset: number, g: Qcow2Geometry): number {
  return Math.floor(hostOffset / g.clusterSize) % g.refcountBlockEntries;
}
