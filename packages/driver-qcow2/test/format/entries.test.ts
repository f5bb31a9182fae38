import { BlockError } from '@blockgraph/block-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ClusterType,
  L2EntryFlag,
  L2Mode,
  SubclusterType,
  l1EntryCopied,
  l1EntryHasReservedBits,
  l1EntryL2Offset,
  l1TableL2Offset,
  l2AllocBitsAt,
  l2BitmapIsInvalid,
  l2ClusterType,
  l2ClusterTypeAt,
  l2EntryCopied,
  l2EntryHasReservedBits,
  l2EntryHostOffset,
  l2HostOffsetAt,
  l2SubclusterType,
  l2SubclusterTypeAt,
  l2ZeroBitsAt,
  subclusterRange,
  subclusterRunLength,
  writeL1Entry,
  writeL2Bitmap,
  writeL2Entry,
} from '../../src/format/index.js';
import { Workdir, dataView, hasQemu } from './qemu.js';
import { l2EntryOf, mapImage, openImage, parseQemuMap } from './map.js';

const hiOf = (x: bigint) => Number(x >> 32n);
const loOf = (x: bigint) => Number(x & 0xffffffffn);
const STD = L2Mode.STANDARD;
const EXT = L2Mode.EXTENDED;
const DATA = L2Mode.EXTERNAL_DATA_FILE;

describe('L1 entries', () => {
  it('decode offset, COPIED and reserved bits', () => {
    const e = 0x8000000000040000n;
    expect(l1EntryL2Offset(hiOf(e), loOf(e))).toBe(0x40000);
    expect(l1EntryCopied(hiOf(e))).toBe(true);
    expect(l1EntryHasReservedBits(hiOf(e), loOf(e))).toBe(false);
    for (const bad of [0x1n, 0x100n, 1n << 56n, 1n << 62n]) {
      expect(l1EntryHasReservedBits(hiOf(e | bad), loOf(e | bad))).toBe(true);
    }
    // The highest offset bits 53..55 cannot be held exactly: refused rather than rounded.
    expect(l1EntryL2Offset(hiOf(0x001f_ffff_ffff_fe00n), loOf(0x001f_ffff_ffff_fe00n))).toBe(2 ** 53 - 512);
    expect(() => l1EntryL2Offset(hiOf(1n << 53n), 0)).toThrowError(BlockError);
  });

  it('write/read round trip', () => {
    const view = new DataView(new ArrayBuffer(32));
    writeL1Entry(view, 2, 0x1234_5678_0000, true);
    expect(view.getBigUint64(16)).toBe(0x8000_1234_5678_0000n);
    expect(l1TableL2Offset(view, 2)).toBe(0x1234_5678_0000);
    writeL1Entry(view, 2, 0, false);
    expect(view.getBigUint64(16)).toBe(0n);
    expect(() => writeL1Entry(view, 0, 0x100, true)).toThrowError(BlockError);
  });
});

describe('L2 entries: classification (QEMU qcow2_get_cluster_type / qcow2_get_subcluster_type)', () => {
  const type = (e: bigint, mode: number = STD) => l2ClusterType(hiOf(e), loOf(e), mode);

  it('standard entries', () => {
    expect(type(0n)).toBe(ClusterType.UNALLOCATED);
    expect(type(0x1n)).toBe(ClusterType.ZERO_PLAIN);
    expect(type(0x8000000000050001n)).toBe(ClusterType.ZERO_ALLOC);
    expect(type(0x0000000000050001n)).toBe(ClusterType.ZERO_ALLOC);
    expect(type(0x8000000000050000n)).toBe(ClusterType.NORMAL);
    expect(type(0x4000000000050000n)).toBe(ClusterType.COMPRESSED);
    // Compressed wins over the zero flag, which is part of the compressed offset there.
    expect(type(0x4000000000050001n)).toBe(ClusterType.COMPRESSED);
    // COPIED alone: unallocated, unless the data lives in an external file where offset 0 is real.
    expect(type(0x8000000000000000n)).toBe(ClusterType.UNALLOCATED);
    expect(type(0x8000000000000000n, DATA)).toBe(ClusterType.NORMAL);
    expect(type(0x0000000000000000n, DATA)).toBe(ClusterType.UNALLOCATED);
  });

  it('extended entries: bit 0 is no zero flag, the bitmap decides', () => {
    expect(type(0x1n, EXT)).toBe(ClusterType.UNALLOCATED);
    const sc = (e: bigint, alloc: number, zero: number, i: number) => l2SubclusterType(hiOf(e), loOf(e), alloc, zero, i, EXT);
    const normal = 0x8000000000050000n;
    expect(sc(normal, 0x3, 0, 0)).toBe(SubclusterType.NORMAL);
    expect(sc(normal, 0x3, 0, 2)).toBe(SubclusterType.UNALLOCATED_ALLOC);
    expect(sc(normal, 0x3, 0x4, 2)).toBe(SubclusterType.ZERO_ALLOC);
    expect(sc(normal, 0x3, 0x1, 5)).toBe(SubclusterType.INVALID); // subcluster 0 both allocated and zero
    expect(sc(0n, 0, 0xf, 3)).toBe(SubclusterType.ZERO_PLAIN);
    expect(sc(0n, 0, 0xf, 4)).toBe(SubclusterType.UNALLOCATED_PLAIN);
    expect(sc(0n, 0x10, 0, 0)).toBe(SubclusterType.INVALID); // allocation bits without a cluster
    expect(sc(0x4000000000050000n, 0, 0, 7)).toBe(SubclusterType.COMPRESSED);
    expect(sc(normal, 0x80000000, 0, 31)).toBe(SubclusterType.NORMAL);
    expect(l2BitmapIsInvalid(ClusterType.COMPRESSED, 0, 1)).toBe(true);
    expect(l2BitmapIsInvalid(ClusterType.COMPRESSED, 0, 0)).toBe(false);
    expect(l2BitmapIsInvalid(ClusterType.UNALLOCATED, 0, 0xffffffff)).toBe(false);
    expect(l2BitmapIsInvalid(ClusterType.UNALLOCATED, 1, 0)).toBe(true);
    expect(l2BitmapIsInvalid(ClusterType.NORMAL, 0xff, 0xff00)).toBe(false);
    expect(l2BitmapIsInvalid(ClusterType.NORMAL, 0xff, 0x1ff)).toBe(true);
  });

  it('standard entries map 1:1 onto subcluster types', () => {
    const sc = (e: bigint) => l2SubclusterType(hiOf(e), loOf(e), 0, 0, 0, STD);
    expect(sc(0n)).toBe(SubclusterType.UNALLOCATED_PLAIN);
    expect(sc(0x1n)).toBe(SubclusterType.ZERO_PLAIN);
    expect(sc(0x8000000000050001n)).toBe(SubclusterType.ZERO_ALLOC);
    expect(sc(0x8000000000050000n)).toBe(SubclusterType.NORMAL);
    expect(sc(0x4000000000050000n)).toBe(SubclusterType.COMPRESSED);
  });

  it('runs of equal subclusters (qcow2_get_subcluster_range_type)', () => {
    const run = (t: SubclusterType, alloc: number, zero: number, from: number) => subclusterRunLength(t, alloc, zero, from, 32);
    expect(run(SubclusterType.NORMAL, 0x3, 0, 0)).toBe(2);
    expect(run(SubclusterType.NORMAL, 0x3, 0, 1)).toBe(1);
    expect(run(SubclusterType.UNALLOCATED_ALLOC, 0x3, 0, 2)).toBe(30);
    expect(run(SubclusterType.UNALLOCATED_ALLOC, 0xf8, 0, 0)).toBe(3);
    expect(run(SubclusterType.NORMAL, 0xffffffff, 0, 0)).toBe(32);
    expect(run(SubclusterType.NORMAL, 0xffffffff, 0, 31)).toBe(1);
    expect(run(SubclusterType.ZERO_PLAIN, 0, 0xf, 1)).toBe(3);
    expect(run(SubclusterType.UNALLOCATED_PLAIN, 0, 0xf0, 0)).toBe(4);
    expect(run(SubclusterType.UNALLOCATED_PLAIN, 0, 0, 5)).toBe(27);
    expect(run(SubclusterType.COMPRESSED, 0, 0, 3)).toBe(29);
    expect(run(SubclusterType.INVALID, 1, 1, 0)).toBe(0);
    expect(subclusterRunLength(SubclusterType.NORMAL, 0, 0, 0, 1)).toBe(1);
    expect(subclusterRange(0, 32)).toBe(0xffffffff);
    expect(subclusterRange(3, 8)).toBe(0xf8);
    expect(subclusterRange(31, 32)).toBe(0x80000000);
    expect(subclusterRange(4, 4)).toBe(0);
  });

  it('reserved bits of standard descriptors', () => {
    expect(l2EntryHasReservedBits(hiOf(0x8000000000050001n), loOf(0x8000000000050001n))).toBe(false);
    for (const bad of [0x2n, 0x100n, 1n << 56n, 1n << 61n]) {
      const e = 0x8000000000050000n | bad;
      expect(l2EntryHasReservedBits(hiOf(e), loOf(e))).toBe(true);
    }
  });

  it('write/read round trip, standard and extended', () => {
    const std = new DataView(new ArrayBuffer(64));
    writeL2Entry(std, 1, STD, 0x50000, L2EntryFlag.COPIED);
    writeL2Entry(std, 2, STD, 0x60000, L2EntryFlag.COPIED | L2EntryFlag.ZERO);
    writeL2Entry(std, 3, STD, 0, L2EntryFlag.ZERO);
    expect(std.getBigUint64(8)).toBe(0x8000000000050000n);
    expect(std.getBigUint64(16)).toBe(0x8000000000060001n);
    expect(std.getBigUint64(24)).toBe(0x1n);
    expect([0, 1, 2, 3].map((i) => l2ClusterTypeAt(std, i, STD))).toEqual([
      ClusterType.UNALLOCATED,
      ClusterType.NORMAL,
      ClusterType.ZERO_ALLOC,
      ClusterType.ZERO_PLAIN,
    ]);
    expect(l2HostOffsetAt(std, 2, STD)).toBe(0x60000);
    expect(l2EntryCopied(std.getUint32(16))).toBe(true);

    const ext = new DataView(new ArrayBuffer(64));
    writeL2Entry(ext, 1, EXT, 0x1_0000_0000, L2EntryFlag.COPIED);
    writeL2Bitmap(ext, 1, 0xf8, 0x0000_0f00);
    expect(ext.getBigUint64(16)).toBe(0x8000000100000000n);
    expect(ext.getBigUint64(24)).toBe(0x00000f00_000000f8n);
    expect(l2AllocBitsAt(ext, 1)).toBe(0xf8);
    expect(l2ZeroBitsAt(ext, 1)).toBe(0xf00);
    expect(l2SubclusterTypeAt(ext, 1, 3, EXT)).toBe(SubclusterType.NORMAL);
    expect(l2SubclusterTypeAt(ext, 1, 9, EXT)).toBe(SubclusterType.ZERO_ALLOC);
    expect(l2SubclusterTypeAt(ext, 1, 20, EXT)).toBe(SubclusterType.UNALLOCATED_ALLOC);
    expect(() => writeL2Entry(ext, 0, EXT, 0, L2EntryFlag.ZERO)).toThrowError(BlockError);
    expect(() => writeL2Entry(std, 0, STD, 0x50001, 0)).toThrowError(BlockError);
    expect(() => l2EntryHostOffset(0x00200000, 0)).toThrowError(expect.objectContaining({ code: 'EFBIG' }));
  });
});

describe.skipIf(!hasQemu)('L2 entries in qemu-img 7.2 images', () => {
  let wd: Workdir;
  beforeAll(() => {
    wd = new Workdir();
  });
  afterAll(() => wd.cleanup());

  function expectMapParity(name: string) {
    const img = openImage(wd.read(name));
    const ours = mapImage(img);
    const theirs = parseQemuMap(wd.qemuImg('map', '--output=json', '-f', 'qcow2', name));
    // QEMU may probe the host file for zeros in data clusters; compare `zero` only where the L2 entry decides.
    const strip = (es: typeof ours) => es.map((e) => (e.data ? { ...e, zero: false } : e));
    expect(strip(ours)).toEqual(strip(theirs));
  }

  it('std.qcow2: the measured entries (reference §4.1) and map parity', () => {
    wd.create('std.qcow2', '64M');
    wd.qemuIo('std.qcow2', 'write -P 0xab 0 1M', 'write -P 0xcd 4M 64k', 'write -z 8M 128k');
    const img = openImage(wd.read('std.qcow2'));
    const l1 = dataView(img.file.subarray(0x30000, 0x30008));
    expect(l1.getBigUint64(0)).toBe(0x8000000000040000n);
    expect(l1TableL2Offset(l1, 0)).toBe(0x40000);
    const raw = (i: number) => {
      const e = l2EntryOf(img, i);
      return (BigInt(e.hi) << 32n) | BigInt(e.lo);
    };
    for (let i = 0; i < 16; i++) expect(raw(i)).toBe(0x8000000000000000n | BigInt(0x50000 + i * 0x10000));
    expect(raw(64)).toBe(0x8000000000150000n);
    expect(raw(128)).toBe(0x1n);
    expect(raw(129)).toBe(0x1n);
    expect(raw(16)).toBe(0n);
    expectMapParity('std.qcow2');
  });

  it('zero-alloc entries (write -z without unmap on allocated clusters)', () => {
    wd.create('za.qcow2', '4M');
    wd.qemuIo('za.qcow2', 'write -P 1 0 256k', 'write -z 64k 64k', 'write -z -u 128k 64k', 'discard 192k 64k');
    const img = openImage(wd.read('za.qcow2'));
    const t = (c: number) => {
      const e = l2EntryOf(img, c);
      return l2ClusterType(e.hi, e.lo, img.mode);
    };
    expect([0, 1, 2, 3, 4].map(t)).toEqual([
      ClusterType.NORMAL,
      ClusterType.ZERO_ALLOC,
      ClusterType.ZERO_PLAIN,
      ClusterType.ZERO_PLAIN,
      ClusterType.UNALLOCATED,
    ]);
    expectMapParity('za.qcow2');
  });

  it('el2.qcow2: the measured extended entries (reference §4.3) and map parity', () => {
    wd.create('el2.qcow2', '64M', ['extended_l2=on']);
    wd.qemuIo('el2.qcow2', 'write -P 1 0 4k', 'write -P 2 70k 10k', 'write -z 1M 8k', 'write -P 3 2M 64k');
    const img = openImage(wd.read('el2.qcow2'));
    const entry = (i: number) => {
      const e = l2EntryOf(img, i);
      return [(BigInt(e.hi) << 32n) | BigInt(e.lo), (BigInt(e.zero) << 32n) | BigInt(e.alloc)];
    };
    expect(entry(0)).toEqual([0x8000000000050000n, 0x3n]);
    expect(entry(1)).toEqual([0x8000000000060000n, 0xf8n]);
    expect(entry(16)).toEqual([0n, 0x0000000f00000000n]);
    expect(entry(32)).toEqual([0x8000000000070000n, 0xffffffffn]);
    expectMapParity('el2.qcow2');
  });

  it('v2 and small-cluster images: map parity', () => {
    wd.create('v2.qcow2', '64M', ['compat=0.10']);
    wd.qemuIo('v2.qcow2', 'write -P 0xab 0 1M', 'write -z 8M 128k', 'write -P 0x11 16M 64k', 'write -z 16M 64k');
    expectMapParity('v2.qcow2');
    wd.create('c512.qcow2', '1M', ['cluster_size=512']);
    wd.qemuIo('c512.qcow2', 'write -P 1 0 3k', 'write -z 4k 2k', 'write -P 2 100k 1k');
    expectMapParity('c512.qcow2');
    wd.create('c2m.qcow2', '64M', ['cluster_size=2M', 'extended_l2=on']);
    wd.qemuIo('c2m.qcow2', 'write -P 1 0 64k', 'write -z 4M 128k', 'write -P 2 6M 2M');
    expectMapParity('c2m.qcow2');
  });

  it('data_file_raw: every entry is COPIED with host offset = guest offset, the first one exactly 0x8000000000000000', () => {
    wd.create('dfr.qcow2', '8M', ['data_file=dfr.raw', 'data_file_raw=on']);
    const img = openImage(wd.read('dfr.qcow2'));
    expect(img.mode).toBe(L2Mode.EXTERNAL_DATA_FILE);
    for (let c = 0; c < 128; c++) {
      const e = l2EntryOf(img, c);
      expect(l2ClusterType(e.hi, e.lo, img.mode)).toBe(ClusterType.NORMAL);
      expect(l2EntryHostOffset(e.hi, e.lo)).toBe(c * 65536);
    }
    expect(l2EntryOf(img, 0)).toMatchObject({ hi: 0x80000000, lo: 0 });
  });
});
