import { BlockError } from '@blockgraph/block-core';
import {
  AUTOCLEAR_BITMAPS,
  BACKING_FORMAT_BUFFER_SIZE,
  CryptMethod,
  HeaderExtensionType,
  QCOW2_MAX_BITMAPS,
  QCOW2_MAX_BITMAP_DIRECTORY_SIZE,
} from './constants.js';
import { parseFeatureTable, type FeatureTableEntry } from './feature-table.js';
import { readU64, viewOf, writeU64 } from './u64.js';

/**
 * Header extensions: { u32 type, u32 length, payload padded to 8 } records that follow the fixed header in
 * cluster 0 and end with a type-0 record. Parsing follows QEMU 7.2's qcow2_read_extensions() rule by rule,
 * including its error texts; serialization follows qcow2_update_header() (order, padding).
 */

export interface BitmapsExtension {
  nbBitmaps: number;
  directorySize: number;
  directoryOffset: number;
}

/** Full disk encryption (LUKS) header pointer. */
export interface CryptoHeaderExtension {
  offset: number;
  length: number;
}

/** An extension this package does not know; kept verbatim so a header rewrite can carry it along. */
export interface UnknownHeaderExtension {
  type: number;
  data: Uint8Array;
}

export interface HeaderExtensions {
  backingFormat: string | null;
  /** External data file name (extension "DATA"). */
  dataFile: string | null;
  /** The image's own feature-name table, if it has one (a rewrite emits QEMU's table instead). */
  featureTable: FeatureTableEntry[] | null;
  /** Valid only while the autoclear "bitmaps" bit is set; otherwise null and `bitmapsInconsistent` is true. */
  bitmaps: BitmapsExtension | null;
  /**
   * A bitmaps extension was present but the autoclear bit was clear: some program without bitmap support
   * wrote the image, so QEMU warns, ignores the bitmaps and drops the extension at the next header rewrite.
   */
  bitmapsInconsistent: boolean;
  cryptoHeader: CryptoHeaderExtension | null;
  /** Unknown extensions, in the order they appear in the file. */
  unknown: UnknownHeaderExtension[];
}

/** What extension parsing needs to know from the fixed header. */
export interface ExtensionContext {
  clusterSize: number;
  cryptMethod: number;
  autoclearFeatures: bigint;
}

export function emptyHeaderExtensions(): HeaderExtensions {
  return {
    backingFormat: null,
    dataFile: null,
    featureTable: null,
    bitmaps: null,
    bitmapsInconsistent: false,
    cryptoHeader: null,
    unknown: [],
  };
}

/** QEMU's warning for a bitmaps extension without the autoclear bit (v3 wording). */
export const BITMAPS_INCONSISTENT_WARNING =
  'a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent';

/** The same warning for a version 2 image. */
export const BITMAPS_INCONSISTENT_WARNING_V2 =
  'This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent ' +
  'bitmap support; so now they must all be considered inconsistent';

/** What QEMU prints after either warning (error_printf(), without a final newline). */
export const BITMAPS_INCONSISTENT_HINT =
  "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.";

const utf8 = new TextDecoder('utf-8');
const utf8Encoder = new TextEncoder();

/** QEMU reads names into NUL-terminated buffers: an embedded NUL ends the name. */
function cString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return utf8.decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

function einval(message: string): BlockError {
  return new BlockError('EINVAL', message);
}

/**
 * Parse the extensions in cluster0[start, end) where `end` is backing_file_offset if set, else the cluster
 * size. In `lenient` mode (QEMU's pass that only looks for the feature table before refusing unknown
 * incompatible features) the first problem ends the walk silently and what was found so far is returned.
 */
export function parseHeaderExtensions(
  cluster0: Uint8Array,
  start: number,
  end: number,
  ctx: ExtensionContext,
  lenient = false,
): HeaderExtensions {
  const exts = emptyHeaderExtensions();
  const view = viewOf(cluster0);
  let offset = start;
  try {
    while (offset < end) {
      // QEMU reads the 8-byte record header even when it straddles `end`; bytes past cluster 0 read as zero.
      const type = offset + 4 <= cluster0.length ? view.getUint32(offset) : 0;
      const len = offset + 8 <= cluster0.length ? view.getUint32(offset + 4) : 0;
      offset += 8;
      if (offset > end || len > end - offset) throw einval('Header extension too large');
      const payload = cluster0.subarray(offset, offset + len);

      switch (type) {
        case HeaderExtensionType.END:
          return exts;

        case HeaderExtensionType.BACKING_FORMAT:
          if (len >= BACKING_FORMAT_BUFFER_SIZE) {
            throw einval(`ERROR: ext_backing_format: len=${len} too large (>=${BACKING_FORMAT_BUFFER_SIZE})`);
          }
          exts.backingFormat = cString(payload);
          break;

        case HeaderExtensionType.FEATURE_TABLE:
          exts.featureTable = parseFeatureTable(payload);
          break;

        case HeaderExtensionType.CRYPTO_HEADER: {
          if (ctx.cryptMethod !== CryptMethod.LUKS) {
            throw einval('CRYPTO header extension only expected with LUKS encryption method');
          }
          if (len !== 16) throw einval(`CRYPTO header extension size ${len}, but expected size 16`);
          const pv = viewOf(payload);
          const cryptoOffset = readU64(pv, 0, 'Encryption header offset');
          if (cryptoOffset % ctx.clusterSize !== 0) {
            throw einval(
              `Encryption header offset '${cryptoOffset}' is not a multiple of cluster size '${ctx.clusterSize}'`,
            );
          }
          exts.cryptoHeader = { offset: cryptoOffset, length: readU64(pv, 8, 'Encryption header length') };
          break;
        }

        case HeaderExtensionType.BITMAPS: {
          if (len !== 24) throw einval('bitmaps_ext: Invalid extension length');
          if (!(ctx.autoclearFeatures & AUTOCLEAR_BITMAPS)) {
            exts.bitmapsInconsistent = true;
            break;
          }
          const pv = viewOf(payload);
          const nbBitmaps = pv.getUint32(0);
          if (pv.getUint32(4) !== 0) throw einval('bitmaps_ext: Reserved field is not zero');
          if (nbBitmaps > QCOW2_MAX_BITMAPS) {
            throw einval(
              `bitmaps_ext: Image has ${nbBitmaps} bitmaps, exceeding the QEMU supported maximum of ${QCOW2_MAX_BITMAPS}`,
            );
          }
          if (nbBitmaps === 0) throw einval('found bitmaps extension with zero bitmaps');
          // Checked as 64-bit values before any conversion so that huge values get QEMU's messages.
          const dirSize = pv.getBigUint64(8);
          const dirOffset = pv.getBigUint64(16);
          if (dirOffset % BigInt(ctx.clusterSize) !== 0n) throw einval('bitmaps_ext: invalid bitmap directory offset');
          if (dirSize > BigInt(QCOW2_MAX_BITMAP_DIRECTORY_SIZE)) {
            throw einval(
              `bitmaps_ext: bitmap directory size (${dirSize}) exceeds the maximum supported size (${QCOW2_MAX_BITMAP_DIRECTORY_SIZE})`,
            );
          }
          exts.bitmaps = {
            nbBitmaps,
            directorySize: Number(dirSize),
            directoryOffset: readU64(pv, 16, 'Bitmap directory offset'),
          };
          break;
        }

        case HeaderExtensionType.DATA_FILE:
          exts.dataFile = cString(payload);
          break;

        default:
          exts.unknown.push({ type, data: payload.slice() });
          break;
      }
      offset += (len + 7) & ~7;
    }
  } catch (e) {
    if (!lenient) throw e;
  }
  return exts;
}

/** Bytes one extension record takes: 8-byte record header + payload padded to 8. */
export function headerExtensionSize(payloadLength: number): number {
  return 8 + ((payloadLength + 7) & ~7);
}

/**
 * Append one extension record at `offset` of `out` (whose spare bytes must be zero); returns the new offset.
 * Throws ENOSPC, as qcow2_update_header does, if it does not fit.
 */
export function writeHeaderExtension(out: Uint8Array, offset: number, type: number, payload: Uint8Array): number {
  const size = headerExtensionSize(payload.length);
  if (out.length - offset < size) throw new BlockError('ENOSPC');
  const view = viewOf(out);
  view.setUint32(offset, type >>> 0);
  view.setUint32(offset + 4, payload.length);
  out.set(payload, offset + 8);
  return offset + size;
}

export function encodeName(name: string): Uint8Array {
  return utf8Encoder.encode(name);
}

export function encodeBitmapsExtension(ext: BitmapsExtension): Uint8Array {
  const out = new Uint8Array(24);
  const view = viewOf(out);
  view.setUint32(0, ext.nbBitmaps);
  writeU64(view, 8, ext.directorySize);
  writeU64(view, 16, ext.directoryOffset);
  return out;
}

export function encodeCryptoHeaderExtension(ext: CryptoHeaderExtension): Uint8Array {
  const out = new Uint8Array(16);
  const view = viewOf(out);
  writeU64(view, 0, ext.offset);
  writeU64(view, 8, ext.length);
  return out;
}
