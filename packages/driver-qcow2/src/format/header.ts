import { BlockError } from '@blockgraph/block-core';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  AUTOCLEAR_MASK,
  BACKING_FILE_BUFFER_SIZE,
  CompressionType,
  CryptMethod,
  EXTL2_SUBCLUSTERS_PER_CLUSTER,
  HeaderExtensionType,
  HeaderOffset as O,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  INCOMPAT_MASK,
  L1E_SIZE,
  L2E_SIZE_EXTENDED,
  L2E_SIZE_NORMAL,
  MAX_BACKING_FILE_NAME,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
  QCOW_MAGIC,
  QCOW_MAX_L1_SIZE,
  QCOW_MAX_REFTABLE_SIZE,
  QCOW_MAX_SNAPSHOTS,
  QEMU_HEADER_LENGTH,
  V2_HEADER_LENGTH,
  V3_MIN_HEADER_LENGTH,
} from './constants.js';
import { QEMU_FEATURE_TABLE, describeUnsupportedFeatures, serializeFeatureTable } from './feature-table.js';
import {
  encodeBitmapsExtension,
  encodeCryptoHeaderExtension,
  encodeName,
  parseHeaderExtensions,
  writeHeaderExtension,
  type HeaderExtensions,
} from './header-extensions.js';
import { computeGeometry, type Qcow2Geometry } from './geometry.js';
import { viewOf, writeU64 } from './u64.js';

/**
 * The qcow2 header (cluster 0): the fixed fields, the header extensions and the backing file name.
 *
 * parseHeader() validates exactly what QEMU 7.2's qcow2_do_open() validates, in the same order and with the
 * same messages and errno codes, so that an image QEMU refuses is refused here with the same words.
 * serializeHeader() produces the cluster qcow2_update_header() would write for the same state, byte for byte.
 */

export interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  /** Virtual disk size in bytes as stored; QEMU uses it rounded down to a multiple of 512. */
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  /** 64-bit feature masks (v2: always 0). See INCOMPAT_*, COMPAT_*, AUTOCLEAR_* in constants. */
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  /** refcount_bits = 1 << refcountOrder (v2: always 4). */
  refcountOrder: number;
  /** header_length as stored (v2: 72). The extensions start here. */
  headerLength: number;
  /** 0 zlib, 1 zstd (0 when header_length <= 104). */
  compressionType: number;
  /** Header bytes between QEMU's 112-byte struct and header_length, kept verbatim for rewrites. */
  unknownHeaderFields: Uint8Array;
  /** Backing file name; null when backing_file_offset is 0. */
  backingFile: string | null;
  /** backing_file_offset / backing_file_size as stored (serialization recomputes both). */
  backingFileOffset: number;
  backingFileSize: number;
  extensions: HeaderExtensions;
  /**
   * With {@link HeaderOpenOptions.deferLateErrors}: what qcow2_do_open() refuses only after its external data
   * file step (data-file-raw without a data file, a LUKS image without its header extension, a backing file
   * name that does not fit; the first of these), or null. Without the option parseHeader() throws it.
   */
  lateOpenError?: BlockError | null;
}

/** How the image is being opened: the QEMU open flags that change header validation. */
export interface HeaderOpenOptions {
  /** BDRV_O_RDWR: a corrupt image is then refused. */
  readWrite?: boolean;
  /**
   * BDRV_O_CHECK (`qemu-img check`): tolerate the corrupt bit, an empty refcount table and a bad snapshot
   * table pointer, so that the image can be examined and repaired.
   */
  check?: boolean;
  /**
   * BDRV_O_NO_IO-like metadata inspection (`qemu-img info`): skip the checks QEMU only makes when the image
   * is opened for I/O ("Missing CRYPTO header for crypt method 2", "data-file-raw requires a data file").
   */
  noIO?: boolean;
  /**
   * The caller opens the external data file first and then throws `lateOpenError`, so that a data file error
   * ("'data-file' is required for this image") is the one reported, as in QEMU.
   */
  deferLateErrors?: boolean;
}

const INT64_MAX = (1n << 63n) - 1n;
const U64_MOD = 1n << 64n;
/** C's INT_MAX: where QEMU counts in an int (L1 indexes, cache sizes, a block-status lookahead). */
export const INT_MAX = 0x7fffffff;

const utf8 = new TextDecoder('utf-8');

function fail(code: 'EINVAL' | 'ENOTSUP' | 'EFBIG' | 'EACCES', message: string): never {
  throw new BlockError(code, message);
}

/** Bytes [0, n) of `bytes`, zero-extended when the input is shorter (QEMU reads past EOF as zeros). */
function atLeast(bytes: Uint8Array, n: number): Uint8Array {
  if (bytes.length >= n) return bytes;
  const out = new Uint8Array(n);
  out.set(bytes);
  return out;
}

/**
 * Validate magic, version and cluster_bits and return the cluster size, so that a driver knows how many bytes
 * of the file make cluster 0 before it calls parseHeader(). Needs the first 24 bytes.
 */
export function peekClusterSize(firstBytes: Uint8Array): number {
  const view = viewOf(atLeast(firstBytes, 24));
  if (view.getUint32(O.magic) !== QCOW_MAGIC) fail('EINVAL', 'Image is not in qcow2 format');
  const version = view.getUint32(O.version);
  if (version < 2 || version > 3) fail('ENOTSUP', `Unsupported qcow2 version ${version}`);
  const clusterBits = view.getUint32(O.clusterBits);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    fail('EINVAL', `Unsupported cluster size: 2^${clusterBits}`);
  }
  return 2 ** clusterBits;
}

/** QEMU's validate_compression_type(). */
export function validateCompressionType(compressionType: number, incompatibleFeatures: bigint): void {
  if (compressionType !== CompressionType.ZLIB && compressionType !== CompressionType.ZSTD) {
    fail('ENOTSUP', `qcow2: unknown compression type: ${compressionType}`);
  }
  const bitSet = (incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n;
  if (compressionType === CompressionType.ZLIB && bitSet) {
    fail('EINVAL', 'qcow2: Compression type incompatible feature bit must not be set');
  }
  if (compressionType !== CompressionType.ZLIB && !bitSet) {
    fail('EINVAL', 'qcow2: Compression type incompatible feature bit must be set');
  }
}

/** QEMU's qcow2_validate_table(), on the raw 64-bit values. */
function validateTable(
  offset: bigint,
  entries: bigint,
  entryLength: number,
  maxSizeBytes: number,
  clusterSize: number,
  tableName: string,
): void {
  if (entries > BigInt(Math.floor(maxSizeBytes / entryLength))) fail('EFBIG', `${tableName} too large`);
  if (INT64_MAX - entries * BigInt(entryLength) < offset || offset % BigInt(clusterSize) !== 0n) {
    fail('EINVAL', `${tableName} offset invalid`);
  }
}

/** A validated 64-bit header value as an exact number; values no JS number can hold are refused. */
function exact(value: bigint, message: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) fail('EFBIG', message);
  return Number(value);
}

/**
 * Parse and validate cluster 0. Pass the whole first cluster (peekClusterSize() says how long it is); a
 * shorter buffer is read as if zero-padded, like QEMU reading past the end of a short file.
 */
export function parseHeader(cluster0: Uint8Array, options: HeaderOpenOptions = {}): Qcow2Header {
  const clusterSize = peekClusterSize(cluster0);
  const bytes = atLeast(cluster0, Math.max(clusterSize, QEMU_HEADER_LENGTH));
  const view = viewOf(bytes);
  const version = view.getUint32(O.version) as 2 | 3;
  const clusterBits = view.getUint32(O.clusterBits);

  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = 4;
  let headerLength = V2_HEADER_LENGTH;
  if (version === 3) {
    incompatibleFeatures = view.getBigUint64(O.incompatibleFeatures);
    compatibleFeatures = view.getBigUint64(O.compatibleFeatures);
    autoclearFeatures = view.getBigUint64(O.autoclearFeatures);
    refcountOrder = view.getUint32(O.refcountOrder);
    headerLength = view.getUint32(O.headerLength);
    if (headerLength < V3_MIN_HEADER_LENGTH) fail('EINVAL', 'qcow2 header too short');
  }
  if (headerLength > clusterSize) fail('EINVAL', 'qcow2 header exceeds cluster size');
  const unknownHeaderFields =
    headerLength > QEMU_HEADER_LENGTH ? bytes.slice(QEMU_HEADER_LENGTH, headerLength) : new Uint8Array(0);

  const backingFileOffset = view.getBigUint64(O.backingFileOffset);
  if (backingFileOffset > BigInt(clusterSize)) fail('EINVAL', 'Invalid backing file offset');
  const extEnd = backingFileOffset !== 0n ? Number(backingFileOffset) : clusterSize;

  const compressionType = headerLength > O.compressionType ? bytes[O.compressionType]! : CompressionType.ZLIB;
  validateCompressionType(compressionType, incompatibleFeatures);

  const cryptMethod = view.getUint32(O.cryptMethod);
  const extContext = { clusterSize, cryptMethod, autoclearFeatures };

  const unsupported = incompatibleFeatures & ~INCOMPAT_MASK;
  if (unsupported) {
    // Like QEMU, look for the image's own feature-name table (ignoring broken extensions) to name them.
    const table = parseHeaderExtensions(bytes, headerLength, extEnd, extContext, true).featureTable;
    fail('ENOTSUP', describeUnsupportedFeatures(table, unsupported));
  }

  if (incompatibleFeatures & INCOMPAT_CORRUPT && options.readWrite && !options.check) {
    fail('EACCES', 'qcow2: Image is corrupt; cannot be opened read/write');
  }

  const extendedL2 = (incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  const subclusterSize = extendedL2 ? clusterSize / EXTL2_SUBCLUSTERS_PER_CLUSTER : clusterSize;
  if (subclusterSize < 2 ** MIN_CLUSTER_BITS) fail('EINVAL', `Unsupported subcluster size: ${subclusterSize}`);

  if (refcountOrder > 6) fail('EINVAL', 'Reference count entry width too large; may not exceed 64 bits');

  const refcountTableOffset = view.getBigUint64(O.refcountTableOffset);
  const refcountTableClusters = view.getUint32(O.refcountTableClusters);
  if (refcountTableClusters === 0 && !options.check) {
    fail('EINVAL', 'Image does not contain a reference count table');
  }
  validateTable(
    refcountTableOffset,
    BigInt(refcountTableClusters),
    clusterSize,
    QCOW_MAX_REFTABLE_SIZE,
    clusterSize,
    'Reference count table',
  );

  const nbSnapshots = view.getUint32(O.nbSnapshots);
  const snapshotsOffset = view.getBigUint64(O.snapshotsOffset);
  if (!options.check) {
    // sizeof(QCowSnapshotHeader) == 40; the variable-sized rest is checked when the table is read.
    validateTable(snapshotsOffset, BigInt(nbSnapshots), 40, 40 * QCOW_MAX_SNAPSHOTS, clusterSize, 'Snapshot table');
  }

  const l1Size = view.getUint32(O.l1Size);
  const l1TableOffset = view.getBigUint64(O.l1TableOffset);
  validateTable(l1TableOffset, BigInt(l1Size), L1E_SIZE, QCOW_MAX_L1_SIZE, clusterSize, 'Active L1 table');

  // size_to_l1() in QEMU's unsigned 64-bit arithmetic (it wraps for absurd sizes; so do we).
  const size = view.getBigUint64(O.size);
  const l2Bits = clusterBits - Math.log2(extendedL2 ? L2E_SIZE_EXTENDED : L2E_SIZE_NORMAL);
  const shift = BigInt(clusterBits + l2Bits);
  const l1VmStateIndex = ((size + (1n << shift) - 1n) % U64_MOD) >> shift;
  if (l1VmStateIndex > BigInt(INT_MAX)) fail('EFBIG', 'Image is too big');
  if (BigInt(l1Size) < l1VmStateIndex) fail('EINVAL', 'L1 table is too small');

  if (cryptMethod !== CryptMethod.NONE && cryptMethod !== CryptMethod.AES && cryptMethod !== CryptMethod.LUKS) {
    // QEMU prints the field as a signed int.
    fail('EINVAL', `Unsupported encryption method ${cryptMethod | 0}`);
  }

  const extensions = parseHeaderExtensions(bytes, headerLength, extEnd, extContext);

  let lateOpenError: BlockError | null = null;
  const late = (message: string) => {
    lateOpenError ??= new BlockError('EINVAL', message);
  };
  if (!options.noIO) {
    if (!(incompatibleFeatures & INCOMPAT_DATA_FILE) && autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) {
      late('data-file-raw requires a data file');
    }
    if (cryptMethod === CryptMethod.LUKS && extensions.cryptoHeader === null) {
      late(`Missing CRYPTO header for crypt method ${cryptMethod}`);
    }
  }

  const backingFileSize = view.getUint32(O.backingFileSize);
  let backingFile: string | null = null;
  if (backingFileOffset !== 0n) {
    const off = Number(backingFileOffset);
    if (
      backingFileSize > Math.min(MAX_BACKING_FILE_NAME, clusterSize - off) ||
      backingFileSize >= BACKING_FILE_BUFFER_SIZE
    ) {
      late('Backing file name too long');
    } else {
      const raw = bytes.subarray(off, off + backingFileSize);
      const nul = raw.indexOf(0);
      backingFile = utf8.decode(nul < 0 ? raw : raw.subarray(0, nul));
    }
  }

  if (lateOpenError && !options.deferLateErrors) throw lateOpenError;

  // Everything QEMU accepts is now known to be in range for QEMU; what exceeds 2^53 is our own limit.
  const limit = 'is beyond the 2^53 bytes this implementation can address';
  // A table at 2^53 or beyond lies past the end of any file this implementation opens: QEMU reads it as
  // zeroes, and so can a read-only open (the offset is then only approximate, and never written). A writer
  // would have to write it back or write there, and is refused.
  const tableOffset = (value: bigint, message: string): number =>
    options.readWrite ? exact(value, message) : Number(value);
  return {
    version,
    clusterBits,
    size: exact(size, 'Image is too big'),
    cryptMethod,
    l1Size,
    l1TableOffset: tableOffset(l1TableOffset, `Active L1 table offset ${limit}`),
    refcountTableOffset: tableOffset(refcountTableOffset, `Reference count table offset ${limit}`),
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset: exact(snapshotsOffset, `Snapshot table offset ${limit}`),
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    compressionType,
    unknownHeaderFields,
    backingFile,
    backingFileOffset: Number(backingFileOffset),
    backingFileSize,
    extensions,
    lateOpenError,
  };
}

/** Derived sizes (L2 entries per table, refcount block entries, ...) of a parsed header. */
export function headerGeometry(h: Qcow2Header): Qcow2Geometry {
  return computeGeometry(h.clusterBits, h.refcountOrder, (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n);
}

/** The autoclear bits a writer must clear before its first write (QEMU does so on every read-write open). */
export function unknownAutoclearFeatures(h: Qcow2Header): bigint {
  return h.autoclearFeatures & ~AUTOCLEAR_MASK;
}

/**
 * Serialize the header cluster exactly as QEMU 7.2's qcow2_update_header() writes it:
 * fixed fields (72 bytes for v2; 112 for v3 with header_length = 112 + preserved unknown fields), the
 * preserved unknown header fields, then the extensions in QEMU's order — backing format, external data file,
 * FDE pointer, feature-name table (QEMU's own, v3 with clusters > 4 KiB only), bitmaps, unknown extensions
 * (QEMU keeps them in a list it prepends to, so they come out in reverse file order) — the end marker, the
 * backing file name right after it, and zeros up to the end of the cluster.
 * Throws ENOSPC when it does not fit in one cluster, as QEMU does.
 */
export function serializeHeader(h: Qcow2Header): Uint8Array {
  const clusterSize = 2 ** h.clusterBits;
  validateCompressionType(h.compressionType, h.incompatibleFeatures);
  const out = new Uint8Array(clusterSize);
  const view = viewOf(out);

  view.setUint32(O.magic, QCOW_MAGIC);
  view.setUint32(O.version, h.version);
  view.setUint32(O.clusterBits, h.clusterBits);
  // QEMU keeps the size in 512-byte sectors and writes total_sectors * 512.
  writeU64(view, O.size, Math.floor(h.size / 512) * 512);
  view.setUint32(O.cryptMethod, h.cryptMethod);
  view.setUint32(O.l1Size, h.l1Size);
  writeU64(view, O.l1TableOffset, h.l1TableOffset);
  writeU64(view, O.refcountTableOffset, h.refcountTableOffset);
  view.setUint32(O.refcountTableClusters, h.refcountTableClusters);
  view.setUint32(O.nbSnapshots, h.nbSnapshots);
  writeU64(view, O.snapshotsOffset, h.snapshotsOffset);

  let offset: number;
  if (h.version === 2) {
    offset = V2_HEADER_LENGTH;
  } else {
    view.setBigUint64(O.incompatibleFeatures, h.incompatibleFeatures);
    view.setBigUint64(O.compatibleFeatures, h.compatibleFeatures);
    view.setBigUint64(O.autoclearFeatures, h.autoclearFeatures);
    view.setUint32(O.refcountOrder, h.refcountOrder);
    view.setUint32(O.headerLength, QEMU_HEADER_LENGTH + h.unknownHeaderFields.length);
    out[O.compressionType] = h.compressionType;
    offset = QEMU_HEADER_LENGTH;
  }

  if (h.unknownHeaderFields.length) {
    if (clusterSize - offset < h.unknownHeaderFields.length) throw new BlockError('ENOSPC');
    out.set(h.unknownHeaderFields, offset);
    offset += h.unknownHeaderFields.length;
  }

  const ext = h.extensions;
  if (ext.backingFormat !== null) {
    offset = writeHeaderExtension(out, offset, HeaderExtensionType.BACKING_FORMAT, encodeName(ext.backingFormat));
  }
  if (h.incompatibleFeatures & INCOMPAT_DATA_FILE && ext.dataFile !== null) {
    offset = writeHeaderExtension(out, offset, HeaderExtensionType.DATA_FILE, encodeName(ext.dataFile));
  }
  if (ext.cryptoHeader !== null && ext.cryptoHeader.offset !== 0) {
    offset = writeHeaderExtension(
      out,
      offset,
      HeaderExtensionType.CRYPTO_HEADER,
      encodeCryptoHeaderExtension(ext.cryptoHeader),
    );
  }
  // QEMU omits its feature table for small clusters: it would leave almost no room for a backing file name.
  if (h.version >= 3 && clusterSize > 4096) {
    offset = writeHeaderExtension(
      out,
      offset,
      HeaderExtensionType.FEATURE_TABLE,
      serializeFeatureTable(QEMU_FEATURE_TABLE),
    );
  }
  if (ext.bitmaps !== null && ext.bitmaps.nbBitmaps > 0) {
    offset = writeHeaderExtension(out, offset, HeaderExtensionType.BITMAPS, encodeBitmapsExtension(ext.bitmaps));
  }
  for (let i = ext.unknown.length - 1; i >= 0; i--) {
    const u = ext.unknown[i]!;
    offset = writeHeaderExtension(out, offset, u.type, u.data);
  }
  offset = writeHeaderExtension(out, offset, HeaderExtensionType.END, new Uint8Array(0));

  if (h.backingFile !== null) {
    const name = encodeName(h.backingFile);
    if (clusterSize - offset < name.length) throw new BlockError('ENOSPC');
    out.set(name, offset);
    writeU64(view, O.backingFileOffset, offset);
    view.setUint32(O.backingFileSize, name.length);
  }
  return out;
}
