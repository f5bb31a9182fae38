import type { Qcow2Header } from '../../src/format/index.js';

/** A valid empty-image header built in code, for tests without QEMU. */
export function minimalHeader(clusterBits: number): Qcow2Header {
  const cs = 2 ** clusterBits;
  return {
    version: 3,
    clusterBits,
    size: 0,
    cryptMethod: 0,
    l1Size: 0,
    l1TableOffset: 3 * cs,
    refcountTableOffset: cs,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: 112,
    compressionType: 0,
    unknownHeaderFields: new Uint8Array(0),
    backingFile: null,
    backingFileOffset: 0,
    backingFileSize: 0,
    extensions: {
      backingFormat: null,
      dataFile: null,
      featureTable: null,
      bitmaps: null,
      bitmapsInconsistent: false,
      cryptoHeader: null,
      unknown: [],
    },
  };
}
