/**
 * qcow2 on-disk constants, named after QEMU's (block/qcow2.h) so that a reader can map them to QEMU 7.2's
 * source and to docs/interop/qcow2.txt. Everything on disk is big-endian.
 */

/** "QFI\xfb" */
export const QCOW_MAGIC = 0x514649fb;

export const QCOW_VERSION_2 = 2;
export const QCOW_VERSION_3 = 3;

/** Cluster sizes QEMU accepts: 512 B .. 2 MiB. */
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
export const DEFAULT_CLUSTER_BITS = 16;

/** Size of the v2 header; the v3 fields start here. */
export const V2_HEADER_LENGTH = 72;
/** Smallest valid v3 header_length (everything up to and including header_length itself). */
export const V3_MIN_HEADER_LENGTH = 104;
/** sizeof(QCowHeader) in QEMU 7.2: v3 fields + compression_type + 7 bytes padding. QEMU always writes this. */
export const QEMU_HEADER_LENGTH = 112;

/** Header field offsets (bytes from the start of the file). */
export const HeaderOffset = {
  magic: 0,
  version: 4,
  backingFileOffset: 8,
  backingFileSize: 16,
  clusterBits: 20,
  size: 24,
  cryptMethod: 32,
  l1Size: 36,
  l1TableOffset: 40,
  refcountTableOffset: 48,
  refcountTableClusters: 56,
  nbSnapshots: 60,
  snapshotsOffset: 64,
  incompatibleFeatures: 72,
  compatibleFeatures: 80,
  autoclearFeatures: 88,
  refcountOrder: 96,
  headerLength: 100,
  compressionType: 104,
} as const;

export const CryptMethod = { NONE: 0, AES: 1, LUKS: 2 } as const;

export const CompressionType = { ZLIB: 0, ZSTD: 1 } as const;
export type CompressionType = (typeof CompressionType)[keyof typeof CompressionType];

/* Feature bits. They all live in the low 32 bits; the header fields themselves are 64-bit (bigint). */
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
/** Incompatible features QEMU 7.2 (and this package) understands; any other bit refuses the open. */
export const INCOMPAT_MASK = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
export const COMPAT_MASK = COMPAT_LAZY_REFCOUNTS;

export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;
/** Autoclear features QEMU 7.2 keeps; a writer clears all others before its first write. */
export const AUTOCLEAR_MASK = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW;

/** Header extension types. */
export const HeaderExtensionType = {
  END: 0x00000000,
  BACKING_FORMAT: 0xe2792aca,
  FEATURE_TABLE: 0x6803f857,
  CRYPTO_HEADER: 0x0537be77,
  BITMAPS: 0x23852875,
  DATA_FILE: 0x44415441,
} as const;

/** Feature-name table entry types. */
export const FeatureType = { INCOMPATIBLE: 0, COMPATIBLE: 1, AUTOCLEAR: 2 } as const;
export type FeatureType = (typeof FeatureType)[keyof typeof FeatureType];

/* QEMU implementation limits (block/qcow2.h, qcow2-bitmap.c). */
export const QCOW_MAX_CRYPT_CLUSTERS = 32;
export const QCOW_MAX_SNAPSHOTS = 65536;
/** Largest host offset of a normal cluster the format can express: bits 9..55. */
export const QCOW_MAX_CLUSTER_OFFSET = 2 ** 56 - 1;
export const QCOW_MAX_REFTABLE_SIZE = 8 * 1024 * 1024;
export const QCOW_MAX_L1_SIZE = 32 * 1024 * 1024;
/** An average of 1 KiB per snapshot table entry. */
export const QCOW_MAX_SNAPSHOTS_SIZE = 1024 * QCOW_MAX_SNAPSHOTS;
export const QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024;
export const QCOW2_MAX_BITMAPS = 65535;
export const QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS;
/** QEMU's bs->backing_format buffer: a backing format name must be shorter than this. */
export const BACKING_FORMAT_BUFFER_SIZE = 16;
/** Backing file names longer than this are refused. */
export const MAX_BACKING_FILE_NAME = 1023;
/** QEMU's bs->backing_file buffer (PATH_MAX). */
export const BACKING_FILE_BUFFER_SIZE = 4096;

/** Entry sizes. */
export const L1E_SIZE = 8;
export const L2E_SIZE_NORMAL = 8;
export const L2E_SIZE_EXTENDED = 16;
export const REFTABLE_ENTRY_SIZE = 8;

/** Extended L2 entries split every cluster into this many subclusters. */
export const EXTL2_SUBCLUSTERS_PER_CLUSTER = 32;

/** Compressed cluster descriptors count 512-byte sectors. */
export const COMPRESSED_SECTOR_SIZE = 512;

/** The limit of exactly representable integers in a JS number; host offsets at or above it are refused. */
export const MAX_SAFE_OFFSET = Number.MAX_SAFE_INTEGER;
