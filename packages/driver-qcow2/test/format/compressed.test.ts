import { BlockError } from '@blockgraph/block-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ClusterType,
  compressedAdditionalSectors,
  compressedDescriptorHi,
  compressedHostClusters,
  compressedHostOffset,
  compressedReadLength,
  computeGeometry,
  getRefcount,
  l2ClusterType,
  l2EntryHostOffset,
  reftableBlockOffset,
  writeCompressedDescriptor,
} from '../../src/format/index.js';
import { Workdir, dataView, hasQemu } from './qemu.js';
import { l2EntryOf, openImage, type ImageView } from './map.js';
import { makeSourceData } from './source-data.js';

const g64k = computeGeometry(16, 4, false);
const hiOf = (x: bigint) => Number(x >> 32n);
const loOf = (x: bigint) => Number(x & 0xffffffffn);

describe('compressed descriptors', () => {
  it('decode the measured comp.qcow2 descriptors (reference §4.5)', () => {
    const cases: Array<[bigint, number, number, number]> = [
      // entry, host offset, additional sectors, read length
      [0x4000000000050000n, 0x50000, 0, 512],
      [0x40000000000500fcn, 0x500fc, 0, 512 - 0xfc],
      [0x40400000000501fen, 0x501fe, 1, 1024 - 0x1fe],
      [0x404000000005213cn, 0x5213c, 1, 1024 - 0x13c],
      [0x4000000000050062n, 0x50062, 0, 512 - 0x62],
    ];
    for (const [e, offset, n, len] of cases) {
      expect(l2ClusterType(hiOf(e), loOf(e), 0)).toBe(ClusterType.COMPRESSED);
      expect(compressedHostOffset(hiOf(e), loOf(e), g64k)).toBe(offset);
      expect(compressedAdditionalSectors(hiOf(e), g64k)).toBe(n);
      expect(compressedReadLength(hiOf(e), loOf(e), g64k)).toBe(len);
    }
    // QEMU packs byte-adjacently: cluster 1 is 0x1fe - 0xfc bytes long and fits in sector 0x280.
    expect(compressedDescriptorHi(0x500fc, 0x1fe - 0xfc, g64k)).toBe(0x40000000);
    expect(compressedDescriptorHi(0x501fe, 3, g64k)).toBe(0x40400000);
    expect(compressedDescriptorHi(0x501fe, 2, g64k)).toBe(0x40000000);
  });

  it('encode/decode round trip for every cluster size', () => {
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
    for (let bits = 9; bits <= 21; bits++) {
      const g = computeGeometry(bits, 4, false);
      expect(g.csizeShift).toBe(62 - (bits - 8));
      for (let i = 0; i < 200; i++) {
        const offset = Math.floor(random() * Math.min(2 ** g.csizeShift, 2 ** 50));
        const length = 1 + Math.floor(random() * g.clusterSize);
        const view = new DataView(new ArrayBuffer(8));
        writeCompressedDescriptor(view, 0, offset, length, g);
        const hi = view.getUint32(0);
        const lo = view.getUint32(4);
        expect(l2ClusterType(hi, lo, 0)).toBe(ClusterType.COMPRESSED);
        expect(hi & 0x80000000).toBe(0);
        expect(compressedHostOffset(hi, lo, g)).toBe(offset);
        const readLength = compressedReadLength(hi, lo, g);
        expect(readLength).toBeGreaterThanOrEqual(length);
        expect(readLength - length).toBeLessThan(512);
        expect((offset + readLength) % 512).toBe(0);
      }
    }
  });

  it('limits: offsets must fit the descriptor, lengths the sector field', () => {
    const g2m = computeGeometry(21, 4, false);
    expect(g2m.csizeShift).toBe(49);
    expect(() => compressedDescriptorHi(2 ** 49, 100, g2m)).toThrowError(expect.objectContaining({ code: 'EFBIG' }));
    expect(compressedDescriptorHi(2 ** 49 - 512, 100, g2m) & 0x1ffff).toBe(0x1ffff);
    // 2 MiB of data starting at an odd sector offset still fits: the field holds up to 8191 extra sectors.
    expect(compressedAdditionalSectors(compressedDescriptorHi(511, 2 * 1024 * 1024, g2m), g2m)).toBe(4096);
    const g512 = computeGeometry(9, 4, false);
    expect(() => compressedDescriptorHi(0, 513, g512)).not.toThrow();
    expect(() => compressedDescriptorHi(511, 1026, g512)).toThrowError(BlockError);
    expect(() => compressedDescriptorHi(0, 0, g64k)).toThrowError(BlockError);
    // 64 KiB clusters: offsets up to 2^54 fit the format, but above 2^53 are refused when decoding.
    expect(() => compressedHostOffset(0x40200000, 0, g64k)).toThrowError(expect.objectContaining({ code: 'EFBIG' }));
  });

  it('host clusters touched', () => {
    expect(compressedHostClusters(0x50000, 512, 16)).toEqual({ first: 5, last: 5 });
    expect(compressedHostClusters(0x5fe00, 1024, 16)).toEqual({ first: 5, last: 6 });
    expect(compressedHostClusters(0x5ff00, 256, 16)).toEqual({ first: 5, last: 5 });
  });
});

/** Recompute every cluster's refcount from the metadata, as qemu-img check does, for a snapshot-free image. */
function expectedRefcounts(img: ImageView): number[] {
  const { header: h, geometry: g, file } = img;
  const counts = new Array<number>(Math.ceil(file.length / g.clusterSize) + 1).fill(0);
  const addRange = (offset: number, length: number) => {
    for (let c = Math.floor(offset / g.clusterSize); c <= Math.floor((offset + length - 1) / g.clusterSize); c++) counts[c]!++;
  };
  addRange(0, g.clusterSize);
  addRange(h.refcountTableOffset, h.refcountTableClusters * g.clusterSize);
  const reftable = dataView(file.subarray(h.refcountTableOffset, h.refcountTableOffset + h.refcountTableClusters * g.clusterSize));
  for (let i = 0; i < (h.refcountTableClusters * g.clusterSize) / 8; i++) {
    const rb = reftableBlockOffset(reftable, i);
    if (rb) addRange(rb, g.clusterSize);
  }
  addRange(h.l1TableOffset, h.l1Size * 8);
  const l1 = dataView(file.subarray(h.l1TableOffset, h.l1TableOffset + h.l1Size * 8));
  for (let i = 0; i < h.l1Size; i++) {
    const l2 = Number(l1.getBigUint64(i * 8) & 0x00fffffffffffe00n);
    if (l2) addRange(l2, g.clusterSize);
  }
  for (let c = 0; c < Math.ceil(h.size / g.clusterSize); c++) {
    const e = l2EntryOf(img, c);
    const type = l2ClusterType(e.hi, e.lo, img.mode);
    if (type === ClusterType.COMPRESSED) {
      const off = compressedHostOffset(e.hi, e.lo, g);
      const { first, last } = compressedHostClusters(off, compressedReadLength(e.hi, e.lo, g), g.clusterBits);
      for (let k = first; k <= last; k++) counts[k]!++;
    } else if (type === ClusterType.NORMAL || type === ClusterType.ZERO_ALLOC) {
      addRange(l2EntryHostOffset(e.hi, e.lo), g.clusterSize);
    }
  }
  return counts;
}

function onDiskRefcount(img: ImageView, cluster: number): number {
  const { header: h, geometry: g, file } = img;
  const reftable = dataView(file.subarray(h.refcountTableOffset, h.refcountTableOffset + g.clusterSize));
  const rb = reftableBlockOffset(reftable, Math.floor(cluster / g.refcountBlockEntries));
  if (!rb) return 0;
  return getRefcount(file.subarray(rb, rb + g.clusterSize), cluster % g.refcountBlockEntries, g.refcountOrder);
}

describe.skipIf(!hasQemu)('compressed clusters in qemu-img 7.2 images', () => {
  let wd: Workdir;
  let source: Uint8Array;
  beforeAll(() => {
    wd = new Workdir();
    source = makeSourceData();
    wd.write('src.raw', source);
    wd.qemuImg('convert', '-c', '-O', 'qcow2', 'src.raw', 'comp.qcow2');
    wd.qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', 'src.raw', 'compz.qcow2');
  });
  afterAll(() => wd.cleanup());

  for (const name of ['comp.qcow2', 'compz.qcow2']) {
    it(`${name}: byte-adjacent packing, descriptors re-encode exactly, refcounts match (cluster 5 = 63)`, () => {
      const img = openImage(wd.read(name));
      const descriptors: Array<{ cluster: number; hi: number; lo: number; offset: number }> = [];
      for (let c = 0; c < 64; c++) {
        const e = l2EntryOf(img, c);
        const type = l2ClusterType(e.hi, e.lo, img.mode);
        if (c === 32) {
          // The random cluster does not compress: stored as a normal cluster.
          expect(type).toBe(ClusterType.NORMAL);
          continue;
        }
        expect(type).toBe(ClusterType.COMPRESSED);
        descriptors.push({ cluster: c, ...e, offset: compressedHostOffset(e.hi, e.lo, img.geometry) });
      }
      expect(descriptors[0]!.offset).toBe(0x50000);
      expect((BigInt(descriptors[0]!.hi) << 32n) | BigInt(descriptors[0]!.lo)).toBe(0x4000000000050000n);
      for (let i = 0; i + 1 < descriptors.length; i++) {
        const d = descriptors[i]!;
        const next = descriptors[i + 1]!;
        // Packed in guest order, each one right after the previous; the normal cluster goes elsewhere.
        expect(next.offset).toBeGreaterThan(d.offset);
        if (next.offset - d.offset < 65536) {
          expect(compressedDescriptorHi(d.offset, next.offset - d.offset, img.geometry)).toBe(d.hi);
        }
      }
      const expected = expectedRefcounts(img);
      for (let c = 0; c < expected.length - 1; c++) expect(onDiskRefcount(img, c)).toBe(expected[c]);
      expect(onDiskRefcount(img, 5)).toBe(63);
    });
  }

  it('qemu-io write -c: the second cluster starts mid-sector and its read window passes EOF', () => {
    wd.create('wc.qcow2', '64M');
    wd.qemuIo('wc.qcow2', 'write -c -P 0x5a 0 64k', 'write -c -P 0xa5 64k 64k');
    const file = wd.read('wc.qcow2');
    const img = openImage(file);
    const e0 = l2EntryOf(img, 0);
    const e1 = l2EntryOf(img, 1);
    expect(compressedHostOffset(e0.hi, e0.lo, img.geometry)).toBe(0x50000);
    const off1 = compressedHostOffset(e1.hi, e1.lo, img.geometry);
    expect(off1 % 512).not.toBe(0);
    expect(off1 + compressedReadLength(e1.hi, e1.lo, img.geometry)).toBeGreaterThan(file.length);
  });
});
