import { BlockError } from '@blockgraph/block-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  getRefcount,
  getRefcount64,
  refcountBlockEntries,
  refcountMax,
  reftableBlockOffset,
  reftableEntryHasReservedBits,
  reftableEntryOffset,
  setRefcount,
  setRefcount64,
  writeReftableEntry,
} from '../../src/format/index.js';
import { Workdir, dataView, hasQemu } from './qemu.js';
import { openImage } from './map.js';

describe('refcount blocks', () => {
  it('max value per width', () => {
    expect([0, 1, 2, 3, 4, 5].map(refcountMax)).toEqual([1, 3, 15, 255, 65535, 4294967295]);
    expect(refcountMax(6)).toBe(Number.MAX_SAFE_INTEGER);
    expect(refcountBlockEntries(16, 4)).toBe(32768);
    expect(refcountBlockEntries(16, 0)).toBe(524288);
    expect(refcountBlockEntries(9, 6)).toBe(64);
  });

  it('round trip at every width, neighbours untouched', () => {
    for (let order = 0; order <= 6; order++) {
      const block = new Uint8Array(512);
      const n = (512 * 8) >> order;
      const max = refcountMax(order);
      const values: number[] = [];
      let x = 12345 + order;
      for (let i = 0; i < n; i++) {
        x = (x * 1103515245 + 12345) % 2147483648;
        const v = i % 7 === 0 ? max : i % 5 === 0 ? 0 : Math.floor((x / 2147483648) * max);
        values.push(v);
        setRefcount(block, i, order, v);
      }
      for (let i = 0; i < n; i++) expect(getRefcount(block, i, order)).toBe(values[i]);
    }
  });

  it('sub-byte widths pack LSB-first; wider ones are big-endian', () => {
    const b1 = new Uint8Array(2);
    for (let i = 0; i < 6; i++) setRefcount(b1, i, 0, 1);
    expect(b1[0]).toBe(0x3f);
    const b2 = new Uint8Array(1);
    setRefcount(b2, 0, 1, 1);
    setRefcount(b2, 3, 1, 2);
    expect(b2[0]).toBe(0b10_00_00_01);
    const b4 = new Uint8Array(1);
    setRefcount(b4, 1, 2, 0xa);
    expect(b4[0]).toBe(0xa0);
    const b16 = new Uint8Array(4);
    setRefcount(b16, 1, 4, 0x1234);
    expect([...b16]).toEqual([0, 0, 0x12, 0x34]);
    const b64 = new Uint8Array(8);
    setRefcount(b64, 0, 6, 2 ** 53 - 1);
    expect(dataView(b64).getBigUint64(0)).toBe(2n ** 53n - 1n);
  });

  it('refuses what it cannot represent', () => {
    const b = new Uint8Array(16);
    expect(() => setRefcount(b, 0, 0, 2)).toThrowError(BlockError);
    expect(() => setRefcount(b, 0, 4, -1)).toThrowError(BlockError);
    expect(() => setRefcount(b, 0, 5, 1.5)).toThrowError(BlockError);
    expect(() => setRefcount(b, 0, 6, 2 ** 53)).toThrowError(BlockError);
    expect(() => getRefcount(b, 0, 7)).toThrowError(BlockError);
  });

  it('64-bit entries of 2^53 and more (damaged images): rounded by getRefcount, exact with getRefcount64', () => {
    const b = new Uint8Array(16);
    dataView(b).setBigUint64(8, 2n ** 62n + 5n);
    expect(getRefcount(b, 1, 6)).toBeGreaterThanOrEqual(2 ** 53);
    expect(getRefcount64(b, 1)).toBe(2n ** 62n + 5n);
    setRefcount64(b, 0, 2n ** 64n - 1n);
    expect(dataView(b).getBigUint64(0)).toBe(2n ** 64n - 1n);
    expect(getRefcount64(b, 1)).toBe(2n ** 62n + 5n);
  });

  it('refcount table entries: bits 9..63 offset, 0..8 reserved, no flags', () => {
    const v = new DataView(new ArrayBuffer(16));
    writeReftableEntry(v, 1, 0x20000);
    expect(v.getBigUint64(8)).toBe(0x20000n);
    expect(reftableBlockOffset(v, 1)).toBe(0x20000);
    expect(reftableEntryOffset(0, 0x20001)).toBe(0x20000);
    expect(reftableEntryHasReservedBits(0x20001)).toBe(true);
    expect(reftableEntryHasReservedBits(0x20000)).toBe(false);
    expect(() => reftableEntryOffset(0x80000000, 0)).toThrowError(BlockError);
  });
});

describe.skipIf(!hasQemu)('refcount blocks of qemu-img 7.2 images, every width', () => {
  let wd: Workdir;
  beforeAll(() => {
    wd = new Workdir();
  });
  afterAll(() => wd.cleanup());

  it.each([1, 2, 4, 8, 16, 32, 64])('refcount_bits=%i: read what QEMU wrote; QEMU reads what we write', (bits) => {
    const name = `rc${bits}.qcow2`;
    wd.create(name, '64M', [`refcount_bits=${bits}`]);
    wd.qemuIo(name, 'write -P 1 0 64k');
    const file = wd.read(name);
    const img = openImage(file);
    const rt = dataView(file.subarray(img.header.refcountTableOffset, img.header.refcountTableOffset + 65536));
    const rbOffset = reftableBlockOffset(rt, 0);
    expect(rbOffset).toBe(0x20000);
    const block = file.subarray(rbOffset, rbOffset + 65536);
    // header, refcount table, refcount block, L1, L2, one data cluster
    for (let c = 0; c < 6; c++) expect(getRefcount(block, c, img.header.refcountOrder)).toBe(1);
    for (let c = 6; c < 64; c++) expect(getRefcount(block, c, img.header.refcountOrder)).toBe(0);
    if (bits === 1) expect(block[0]).toBe(0x3f);

    // Raise the data cluster's refcount to the width's maximum (capped for the test): QEMU's check must see it.
    const value = Math.min(refcountMax(img.header.refcountOrder), 1000);
    setRefcount(block, 5, img.header.refcountOrder, value);
    wd.write(name, file);
    let out = '';
    try {
      wd.qemuImg('check', name);
    } catch (e) {
      out = String((e as { stderr?: string }).stderr) + String((e as { stdout?: string }).stdout);
    }
    if (bits === 1) {
      expect(out).toBe(''); // 1 is already the maximum: nothing changed
    } else {
      expect(out).toContain(`Leaked cluster 5 refcount=${value} reference=1`);
    }
  });
});
