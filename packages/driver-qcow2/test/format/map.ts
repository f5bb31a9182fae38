import {
  SubclusterType,
  compressedHostOffset,
  l1TableL2Offset,
  l2EntryHostOffset,
  l2Mode,
  l2SubclusterType,
  parseHeader,
  peekClusterSize,
  type Qcow2Geometry,
  type Qcow2Header,
  headerGeometry,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
} from '../../src/format/index.js';
import { dataView } from './qemu.js';

/**
 * A tiny test-side reader: walks L1 -> L2 of an image file held in memory and reports, per subcluster, what
 * `qemu-img map` reports — so the entry decoders are checked against QEMU's own interpretation.
 */

export interface Extent {
  start: number;
  length: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

export interface ImageView {
  file: Uint8Array;
  header: Qcow2Header;
  geometry: Qcow2Geometry;
  mode: number;
}

export function openImage(file: Uint8Array): ImageView {
  const header = parseHeader(file.subarray(0, peekClusterSize(file)));
  return {
    file,
    header,
    geometry: headerGeometry(header),
    mode: l2Mode((header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n, (header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n),
  };
}

/** The L2 table (as a DataView) mapping guest cluster `cluster`, or null. */
export function l2TableFor(img: ImageView, cluster: number): DataView | null {
  const { geometry: g, file, header } = img;
  const l1 = dataView(file.subarray(header.l1TableOffset, header.l1TableOffset + header.l1Size * 8));
  const l1Index = Math.floor(cluster / g.l2Entries);
  const l2Offset = l1TableL2Offset(l1, l1Index);
  if (l2Offset === 0) return null;
  return dataView(file.subarray(l2Offset, l2Offset + g.clusterSize));
}

/** Raw halves of the L2 entry for guest cluster `cluster` (zeros when there is no L2 table). */
export function l2EntryOf(img: ImageView, cluster: number): { hi: number; lo: number; alloc: number; zero: number } {
  const table = l2TableFor(img, cluster);
  if (!table) return { hi: 0, lo: 0, alloc: 0, zero: 0 };
  const i = cluster % img.geometry.l2Entries;
  const size = img.geometry.l2EntrySize;
  return {
    hi: table.getUint32(i * size),
    lo: table.getUint32(i * size + 4),
    alloc: size === 16 ? table.getUint32(i * size + 12) : 0,
    zero: size === 16 ? table.getUint32(i * size + 8) : 0,
  };
}

/** Per-subcluster extents as qemu-img map (no backing file) would print them, merged. */
export function mapImage(img: ImageView): Extent[] {
  const { geometry: g, header } = img;
  const out: Extent[] = [];
  const clusters = Math.ceil(header.size / g.clusterSize);
  for (let c = 0; c < clusters; c++) {
    const e = l2EntryOf(img, c);
    for (let sc = 0; sc < g.subclustersPerCluster; sc++) {
      const start = c * g.clusterSize + sc * g.subclusterSize;
      if (start >= header.size) break;
      const length = Math.min(g.subclusterSize, header.size - start);
      const type = l2SubclusterType(e.hi, e.lo, e.alloc, e.zero, sc, img.mode);
      const hostCluster = () => l2EntryHostOffset(e.hi, e.lo) + sc * g.subclusterSize;
      let ext: Extent;
      switch (type) {
        case SubclusterType.NORMAL:
          ext = { start, length, present: true, zero: false, data: true, offset: hostCluster() };
          break;
        case SubclusterType.ZERO_ALLOC:
          ext = { start, length, present: true, zero: true, data: false, offset: hostCluster() };
          break;
        case SubclusterType.ZERO_PLAIN:
          ext = { start, length, present: true, zero: true, data: false };
          break;
        case SubclusterType.UNALLOCATED_ALLOC:
          ext = { start, length, present: false, zero: true, data: false, offset: hostCluster() };
          break;
        case SubclusterType.COMPRESSED:
          // Checked to decode, though map does not print it.
          compressedHostOffset(e.hi, e.lo, g);
          ext = { start, length, present: true, zero: false, data: true };
          break;
        case SubclusterType.UNALLOCATED_PLAIN:
          ext = { start, length, present: false, zero: true, data: false };
          break;
        default:
          throw new Error(`invalid L2 entry for cluster ${c}`);
      }
      appendExtent(out, ext);
    }
  }
  return out;
}

/** Append `e`, or lengthen the last extent when `e` continues it (qemu-img map's merging of equal neighbours). */
export function appendExtent<E extends Extent & { depth?: number }>(out: E[], e: E): void {
  const last = out[out.length - 1];
  if (
    last &&
    last.depth === e.depth &&
    last.present === e.present &&
    last.zero === e.zero &&
    last.data === e.data &&
    (last.offset === undefined) === (e.offset === undefined) &&
    (last.offset === undefined || last.offset + last.length === e.offset)
  ) {
    last.length += e.length;
  } else {
    out.push(e);
  }
}

/** qemu-img map --output=json, reduced to the same fields. */
export function parseQemuMap(json: string): Extent[] {
  return (JSON.parse(json) as Array<Extent & { depth: number }>).map(({ start, length, present, zero, data, offset }) =>
    offset === undefined ? { start, length, present, zero, data } : { start, length, present, zero, data, offset },
  );
}

