import { BlockError } from '@blockgraph/block-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BME_FLAG_AUTO,
  BME_FLAG_IN_USE,
  bitmapDirectorySize,
  bitmapTableEntryAllOnes,
  bitmapTableEntryIsValid,
  bitmapTableEntryOffset,
  bitmapTableSizeFor,
  parseBitmapDirectory,
  serializeBitmapDirectory,
  writeBitmapTableEntry,
  type BitmapDirectoryEntry,
} from '../../src/format/index.js';
import { Workdir, dataView, hasQemu, qemuOpenMessage } from './qemu.js';
import { openImage } from './map.js';

const ctx = { clusterSize: 65536, virtualSize: 64 * 1024 * 1024 };

function bitmap(overrides: Partial<BitmapDirectoryEntry> = {}): BitmapDirectoryEntry {
  return {
    bitmapTableOffset: 0x90000,
    bitmapTableSize: 1,
    flags: BME_FLAG_AUTO,
    type: 1,
    granularityBits: 16,
    name: 'bitmap0',
    ...overrides,
  };
}

describe('bitmap directory codec', () => {
  it('entries are 24 bytes + name, padded to 8', () => {
    const entries = [bitmap(), bitmap({ name: 'x', bitmapTableOffset: 0xa0000 }), bitmap({ name: 'exactly8' })];
    expect(bitmapDirectorySize(entries)).toBe(32 + 32 + 32);
    const bytes = serializeBitmapDirectory(entries);
    expect(parseBitmapDirectory(bytes, 3, ctx)).toEqual(entries);
  });

  it('QEMU constraints', () => {
    const check = (e: Partial<BitmapDirectoryEntry>, nb = 1) => () =>
      parseBitmapDirectory(serializeBitmapDirectory([bitmap(e)]), nb, ctx);
    expect(check({ granularityBits: 8 })).toThrowError("Bitmap 'bitmap0' doesn't satisfy the constraints");
    expect(check({ granularityBits: 32 })).toThrowError("doesn't satisfy the constraints");
    expect(check({ bitmapTableOffset: 0x90200 })).toThrowError("doesn't satisfy the constraints");
    expect(check({ flags: 4 })).toThrowError("doesn't satisfy the constraints");
    // One table cluster at 512-byte granularity covers 256 MiB: too small for 1 GiB unless marked in use.
    const big = { clusterSize: 65536, virtualSize: 2 ** 30 };
    const small = serializeBitmapDirectory([bitmap({ granularityBits: 9 })]);
    expect(() => parseBitmapDirectory(small, 1, big)).toThrowError("doesn't satisfy the constraints");
    const inUse = serializeBitmapDirectory([bitmap({ granularityBits: 9, flags: BME_FLAG_IN_USE })]);
    expect(() => parseBitmapDirectory(inUse, 1, big)).not.toThrow();
    expect(check({}, 2)).toThrowError('Less bitmaps found than specified in header extension');
    expect(check({}, 0)).toThrowError('More bitmaps found than specified in header extension');
    const bytes = serializeBitmapDirectory([bitmap()]);
    expect(() => parseBitmapDirectory(bytes.subarray(0, 24), 1, ctx)).toThrowError('Broken bitmap directory');
    expect(() => parseBitmapDirectory(new Uint8Array(0), 1, ctx)).toThrowError('Requested bitmap directory size is zero');
    dataView(bytes).setUint32(20, 8);
    expect(() => parseBitmapDirectory(bytes, 1, ctx)).toThrowError('Broken bitmap directory');
    const longer = new Uint8Array(40);
    longer.set(bytes);
    expect(() => parseBitmapDirectory(longer, 1, ctx)).toThrowError('Bitmap extra data is not supported');
  });

  it('random damage: a BlockError or entries, nothing else', () => {
    const good = serializeBitmapDirectory([bitmap(), bitmap({ name: 'second' })]);
    let x = 5;
    const random = () => ((x = (x * 1103515245 + 12345) % 2147483648) / 2147483648);
    for (let i = 0; i < 500; i++) {
      const bytes = good.slice(0, Math.floor(random() * 8) === 0 ? Math.floor(random() * good.length) : good.length);
      for (let k = 0; k < 3; k++) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
      try {
        parseBitmapDirectory(bytes, 1 + Math.floor(random() * 2), ctx);
      } catch (e) {
        expect(e).toBeInstanceOf(BlockError);
      }
    }
  });

  it('bitmap table entries', () => {
    const v = new DataView(new ArrayBuffer(24));
    writeBitmapTableEntry(v, 0, 0x80000, false);
    writeBitmapTableEntry(v, 1, 0, true);
    writeBitmapTableEntry(v, 2, 0, false);
    expect(v.getBigUint64(0)).toBe(0x80000n);
    expect(v.getBigUint64(8)).toBe(1n);
    const at = (i: number) => [v.getUint32(i * 8), v.getUint32(i * 8 + 4)] as const;
    expect(bitmapTableEntryOffset(...at(0))).toBe(0x80000);
    expect(bitmapTableEntryAllOnes(at(1)[1])).toBe(true);
    expect(bitmapTableEntryAllOnes(at(2)[1])).toBe(false);
    expect([0, 1, 2].map((i) => bitmapTableEntryIsValid(...at(i), 65536))).toEqual([true, true, true]);
    expect(bitmapTableEntryIsValid(0, 0x80001, 65536)).toBe(false); // offset plus the all-ones flag
    expect(bitmapTableEntryIsValid(0, 0x80200, 65536)).toBe(false); // unaligned
    expect(bitmapTableEntryIsValid(0, 0x2, 65536)).toBe(false); // reserved bit 1
    expect(bitmapTableEntryIsValid(0x01000000, 0, 65536)).toBe(false); // reserved bit 56
    expect(() => writeBitmapTableEntry(v, 0, 0x80000, true)).toThrowError(BlockError);
    expect(bitmapTableSizeFor(64 * 1024 * 1024, 16, 65536)).toBe(1);
    expect(bitmapTableSizeFor(64 * 1024 * 1024, 9, 65536)).toBe(1);
    expect(bitmapTableSizeFor(2 ** 30, 9, 65536)).toBe(4);
    expect(bitmapTableSizeFor(2 ** 40, 9, 65536)).toBe(4096);
  });
});

describe.skipIf(!hasQemu)('bitmaps written by qemu-img 7.2', () => {
  let wd: Workdir;
  beforeAll(() => {
    wd = new Workdir();
  });
  afterAll(() => wd.cleanup());

  function directoryOf(name: string) {
    const file = wd.read(name);
    const img = openImage(file);
    const ext = img.header.extensions.bitmaps!;
    const bytes = file.subarray(ext.directoryOffset, ext.directoryOffset + ext.directorySize);
    const entries = parseBitmapDirectory(bytes, ext.nbBitmaps, { clusterSize: img.geometry.clusterSize, virtualSize: img.header.size });
    return { file, img, bytes, entries };
  }

  it('directory parses as qemu-img info lists it and re-serializes byte for byte', () => {
    wd.create('bm.qcow2', '64M');
    wd.qemuImg('bitmap', '--add', 'bm.qcow2', 'bitmap0');
    wd.qemuImg('bitmap', '--add', '-g', '512', 'bm.qcow2', 'fine-grained');
    wd.qemuImg('bitmap', '--add', '--disable', 'bm.qcow2', 'off');
    const { bytes, entries } = directoryOf('bm.qcow2');
    expect(entries.map(({ name, flags, granularityBits, bitmapTableSize, type }) => ({ name, flags, granularityBits, bitmapTableSize, type }))).toEqual([
      { name: 'bitmap0', flags: BME_FLAG_AUTO, granularityBits: 16, bitmapTableSize: 1, type: 1 },
      { name: 'fine-grained', flags: BME_FLAG_AUTO, granularityBits: 9, bitmapTableSize: 1, type: 1 },
      { name: 'off', flags: 0, granularityBits: 16, bitmapTableSize: 1, type: 1 },
    ]);
    const info = JSON.parse(wd.qemuImg('info', '--output=json', 'bm.qcow2')) as {
      'format-specific': { data: { bitmaps: Array<{ name: string; granularity: number; flags: string[] }> } };
    };
    expect(info['format-specific'].data.bitmaps).toEqual(
      entries.map((e) => ({
        name: e.name,
        granularity: 2 ** e.granularityBits,
        flags: [...(e.flags & BME_FLAG_IN_USE ? ['in-use'] : []), ...(e.flags & BME_FLAG_AUTO ? ['auto'] : [])],
      })),
    );
    expect(Buffer.from(serializeBitmapDirectory(entries)).equals(Buffer.from(bytes))).toBe(true);
  });

  it('a written range shows up as a data cluster in the bitmap table, bit 0 first', () => {
    wd.create('bmw.qcow2', '64M');
    wd.qemuImg('bitmap', '--add', 'bmw.qcow2', 'b');
    wd.qemuIo('bmw.qcow2', 'write -P 1 0 64k', 'write -P 1 192k 64k');
    const { file, entries } = directoryOf('bmw.qcow2');
    const [e] = entries;
    const table = dataView(file.subarray(e!.bitmapTableOffset, e!.bitmapTableOffset + 8));
    const hi = table.getUint32(0);
    const lo = table.getUint32(4);
    expect(bitmapTableEntryIsValid(hi, lo, 65536)).toBe(true);
    const data = bitmapTableEntryOffset(hi, lo);
    expect(data).toBeGreaterThan(0);
    expect(file[data]).toBe(0b1001); // granularity 64 KiB: clusters 0 and 3
  });

  it('damaged directories: the messages qemu-img prints', () => {
    wd.create('base.qcow2', '64M');
    wd.qemuImg('bitmap', '--add', 'base.qcow2', 'bitmap0');
    const { file, img } = directoryOf('base.qcow2');
    const dir = img.header.extensions.bitmaps!.directoryOffset;
    const extAt = 112 + 8 + 384; // the bitmaps extension follows QEMU's feature table
    expect(dataView(file).getUint32(extAt)).toBe(0x23852875);
    const cases: Array<[string, (b: Uint8Array, v: DataView) => void, string]> = [
      ['granularity', (b) => { b[dir + 17] = 8; }, "Bitmap 'bitmap0' doesn't satisfy the constraints"],
      ['type', (b) => { b[dir + 16] = 2; }, "Bitmap 'bitmap0' doesn't satisfy the constraints"],
      ['extra data', (_b, v) => { v.setUint32(dir + 20, 8); v.setBigUint64(extAt + 16, 40n); }, 'Bitmap extra data is not supported'],
      ['extra data past the directory', (_b, v) => v.setUint32(dir + 20, 8), 'Broken bitmap directory'],
      ['fewer than announced', (_b, v) => v.setUint32(extAt + 8, 2), 'Less bitmaps found than specified in header extension'],
      ['broken', (_b, v) => v.setBigUint64(extAt + 16, 24n), 'Broken bitmap directory'],
      ['name too long for the directory', (_b, v) => v.setUint16(dir + 18, 100), 'Broken bitmap directory'],
    ];
    for (const [name, mutate, message] of cases) {
      const copy = file.slice();
      mutate(copy, dataView(copy));
      wd.write(`${name}.qcow2`, copy);
      const q = wd.infoError(`${name}.qcow2`);
      expect(qemuOpenMessage(q.stderr), name).toBe(message);
      // The directory is the last thing in the file; QEMU reads past EOF as zeros.
      const padded = new Uint8Array(copy.length + 65536);
      padded.set(copy);
      const h = openImage(padded).header;
      const ext = h.extensions.bitmaps!;
      expect(() =>
        parseBitmapDirectory(padded.subarray(ext.directoryOffset, ext.directoryOffset + ext.directorySize), ext.nbBitmaps, {
          clusterSize: 65536,
          virtualSize: h.size,
        }),
      ).toThrowError(message);
    }
  });
});
