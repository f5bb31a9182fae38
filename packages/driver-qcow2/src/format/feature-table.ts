import { FeatureType } from './constants.js';

/**
 * The feature-name table header extension (0x6803f857): 48-byte entries { u8 type, u8 bit, char name[46] } that
 * let a reader name the features it does not know, e.g. in "Unsupported qcow2 feature(s): ...".
 */

export const FEATURE_TABLE_ENTRY_SIZE = 48;
export const FEATURE_NAME_SIZE = 46;

export interface FeatureTableEntry {
  type: number;
  bit: number;
  name: string;
}

/** The table QEMU 7.2 writes, in its order (qcow2_update_header). */
export const QEMU_FEATURE_TABLE: readonly FeatureTableEntry[] = Object.freeze([
  { type: FeatureType.INCOMPATIBLE, bit: 0, name: 'dirty bit' },
  { type: FeatureType.INCOMPATIBLE, bit: 1, name: 'corrupt bit' },
  { type: FeatureType.INCOMPATIBLE, bit: 2, name: 'external data file' },
  { type: FeatureType.INCOMPATIBLE, bit: 3, name: 'compression type' },
  { type: FeatureType.INCOMPATIBLE, bit: 4, name: 'extended L2 entries' },
  { type: FeatureType.COMPATIBLE, bit: 0, name: 'lazy refcounts' },
  { type: FeatureType.AUTOCLEAR, bit: 0, name: 'bitmaps' },
  { type: FeatureType.AUTOCLEAR, bit: 1, name: 'raw external data' },
]);

const utf8 = new TextDecoder('utf-8');
const utf8Encoder = new TextEncoder();

/** A NUL-terminated (or field-filling) C string. */
function cString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return utf8.decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

/**
 * Decode a feature table payload the way QEMU walks it: entry after entry, a truncated last entry reads as if
 * zero-padded, and the walk stops at the first entry whose name starts with NUL.
 */
export function parseFeatureTable(payload: Uint8Array): FeatureTableEntry[] {
  const entries: FeatureTableEntry[] = [];
  for (let off = 0; off < payload.length; off += FEATURE_TABLE_ENTRY_SIZE) {
    const raw = new Uint8Array(FEATURE_TABLE_ENTRY_SIZE);
    raw.set(payload.subarray(off, off + FEATURE_TABLE_ENTRY_SIZE));
    if (raw[2] === 0) break;
    entries.push({ type: raw[0]!, bit: raw[1]!, name: cString(raw.subarray(2)) });
  }
  return entries;
}

/** Encode entries as 48-byte records (names longer than 46 bytes are cut, as the C struct would). */
export function serializeFeatureTable(entries: readonly FeatureTableEntry[]): Uint8Array {
  const out = new Uint8Array(entries.length * FEATURE_TABLE_ENTRY_SIZE);
  entries.forEach((e, i) => {
    const off = i * FEATURE_TABLE_ENTRY_SIZE;
    out[off] = e.type;
    out[off + 1] = e.bit;
    out.set(utf8Encoder.encode(e.name).subarray(0, FEATURE_NAME_SIZE), off + 2);
  });
  return out;
}

/**
 * QEMU's report_unsupported_feature(): the names of the set incompatible bits found in the image's own table
 * (in table order, each bit once), then "Unknown incompatible feature: <hex>" for the bits left over.
 * `mask` holds only the unsupported bits.
 */
export function describeUnsupportedFeatures(table: readonly FeatureTableEntry[] | null, mask: bigint): string {
  const parts: string[] = [];
  for (const entry of table ?? []) {
    if (entry.type !== FeatureType.INCOMPATIBLE) continue;
    // C's 1ULL << bit on x86-64 uses the shift count modulo 64.
    const bit = 1n << BigInt(entry.bit & 63);
    if (mask & bit) {
      parts.push(entry.name);
      mask &= ~bit;
    }
  }
  if (mask) parts.push('Unknown incompatible feature: ' + mask.toString(16));
  return 'Unsupported qcow2 feature(s): ' + parts.join(', ');
}
