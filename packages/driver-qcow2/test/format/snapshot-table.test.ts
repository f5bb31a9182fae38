/// <reference types="node" />
import { BlockError } from '@blockgraph/block-core';
import { closeSync, openSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ICOUNT_NONE,
  parseSnapshotTable,
  serializeSnapshotTable,
  snapshotL1TableOffset,
  snapshotTableLength,
  type SnapshotEntry,
} from '../../src/format/index.js';
import { Workdir, dataView, hasQemu, qemuOpenMessage } from './qemu.js';
import { openImage } from './map.js';

function entry(overrides: Partial<SnapshotEntry> = {}): SnapshotEntry {
  return {
    l1TableOffset: 0x60000,
    l1Size: 1,
    id: '1',
    name: 'snap1',
    dateSec: 1700000000,
    dateNsec: 123456789,
    vmClockNsec: 0n,
    vmStateSize: 0,
    diskSize: 64 * 1024 * 1024,
    icount: ICOUNT_NONE,
    extraDataSize: 24,
    unknownExtraData: new Uint8Array(0),
    ...overrides,
  };
}

describe('snapshot table codec', () => {
  it('entry layout: 40 + 24 + id + name, next entry aligned to 8', () => {
    const bytes = serializeSnapshotTable([entry(), entry({ id: '2', name: 'second' })]);
    expect(snapshotTableLength(bytes, 1)).toBe(70);
    expect(snapshotTableLength(bytes, 2)).toBe(72 + 70 + 1);
    expect(bytes.length).toBe(143);
    expect(dataView(bytes).getUint32(72 + 8)).toBe(1); // second entry's l1_size at offset 72
    expect(parseSnapshotTable(bytes, 2, 0).map((e) => e.name)).toEqual(['snap1', 'second']);
  });

  it('asks for more bytes until it can tell the length', () => {
    const bytes = serializeSnapshotTable([entry(), entry({ id: '2', name: 'x'.repeat(300) })]);
    expect(snapshotTableLength(bytes.subarray(0, 10), 2)).toBe(40);
    expect(snapshotTableLength(bytes.subarray(0, 40), 2)).toBe(72 + 40);
    expect(snapshotTableLength(bytes.subarray(0, 112), 2)).toBe(bytes.length);
    expect(() => parseSnapshotTable(bytes.subarray(0, 112), 2, 0)).toThrowError('Failed to read snapshot table');
  });

  it('old entries: 16 bytes of extra data (no icount) or none (no disk size)', () => {
    const table = serializeSnapshotTable([entry({ vmStateSize: 4096 })]);
    const v = dataView(table);
    // Rewrite as an entry with only 16 bytes of extra data.
    const old = new Uint8Array(table.length - 8);
    old.set(table.subarray(0, 56));
    old.set(table.subarray(64), 56);
    dataView(old).setUint32(36, 16);
    const [e] = parseSnapshotTable(old, 1, 999);
    expect(e).toMatchObject({ vmStateSize: 4096, diskSize: 64 * 1024 * 1024, icount: ICOUNT_NONE, extraDataSize: 16 });
    // QEMU rewrites it with 24 bytes of extra data and icount -1.
    expect(Buffer.from(serializeSnapshotTable([e!])).equals(Buffer.from(table))).toBe(true);

    const none = new Uint8Array(40 + 6);
    none.set(table.subarray(0, 40));
    dataView(none).setUint32(36, 0);
    none.set(new TextEncoder().encode('1snap1'), 40);
    expect(parseSnapshotTable(none, 1, 777)[0]).toMatchObject({ vmStateSize: 4096, diskSize: 777, name: 'snap1' });
    expect(v.getUint32(32)).toBe(4096);
  });

  it('unknown extra data is kept; a VM state beyond 32 bits zeroes the old field', () => {
    const e = entry({ extraDataSize: 40, unknownExtraData: new Uint8Array(16).fill(7), vmStateSize: 2 ** 40 });
    const bytes = serializeSnapshotTable([e]);
    expect(dataView(bytes).getUint32(32)).toBe(0);
    const [back] = parseSnapshotTable(bytes, 1, 0);
    expect(back).toEqual(e);
  });

  it('64-bit fields beyond 2^53 (damage) parse, keep their exact values and serialize back byte for byte', () => {
    const bytes = serializeSnapshotTable([entry({ extraDataSize: 24 })]);
    const v = dataView(bytes);
    v.setBigUint64(0, 0x514649fb00000003n); // l1_table_offset
    v.setBigUint64(40, 0xfedcba9876543211n); // vm_state_size_large
    v.setBigUint64(48, 0x0020000000000001n); // disk_size: 2^53 + 1
    const [e] = parseSnapshotTable(bytes, 1, 0);
    expect(e!.wide).toEqual({ l1TableOffset: 0x514649fb00000003n, vmStateSize: 0xfedcba9876543211n, diskSize: 0x0020000000000001n });
    expect(snapshotL1TableOffset(e!)).toBe(0x514649fb00000003n);
    // The approximations stay beyond every real offset and size.
    expect(e!.l1TableOffset).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
    expect(e!.vmStateSize).toBeGreaterThan(0xffffffff);
    expect(e!.diskSize).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
    expect(Buffer.from(serializeSnapshotTable([e!])).equals(Buffer.from(bytes))).toBe(true);
    // Below 2^53 nothing is wide.
    expect(parseSnapshotTable(serializeSnapshotTable([entry()]), 1, 0)[0]!.wide).toBeUndefined();
  });

  it('random damage: a BlockError or a table, nothing else', () => {
    const good = serializeSnapshotTable([entry(), entry({ id: '2', name: 'second', extraDataSize: 30, unknownExtraData: new Uint8Array(6) })]);
    let x = 99;
    const random = () => ((x = (x * 1103515245 + 12345) % 2147483648) / 2147483648);
    for (let i = 0; i < 500; i++) {
      const bytes = good.slice();
      for (let k = 0; k < 3; k++) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
      try {
        const n = 1 + Math.floor(random() * 3);
        const length = snapshotTableLength(bytes, n);
        if (length <= bytes.length) serializeSnapshotTable(parseSnapshotTable(bytes, n, 0));
      } catch (e) {
        expect(e).toBeInstanceOf(BlockError);
      }
    }
  });

  it('limits and messages (qcow2_do_read_snapshots)', () => {
    const bytes = serializeSnapshotTable([entry()]);
    dataView(bytes).setUint32(36, 1025);
    expect(() => snapshotTableLength(bytes, 1)).toThrowError('Too much extra metadata in snapshot table entry 0');
    expect(() => parseSnapshotTable(bytes, 1, 0)).toThrowError(expect.objectContaining({ code: 'EFBIG' }));
    expect(() => serializeSnapshotTable([entry({ name: 'x'.repeat(65536) })])).toThrowError(BlockError);
  });
});

describe.skipIf(!hasQemu)('snapshot tables written by qemu-img 7.2', () => {
  let wd: Workdir;
  beforeAll(() => {
    wd = new Workdir();
  });
  afterAll(() => wd.cleanup());

  it('parse matches qemu-img info, serialize reproduces the table byte for byte', () => {
    wd.create('snap.qcow2', '64M');
    wd.qemuIo('snap.qcow2', 'write -P 1 0 64k');
    wd.qemuImg('snapshot', '-c', 'snap1', 'snap.qcow2');
    wd.qemuIo('snap.qcow2', 'write -P 2 0 64k');
    wd.qemuImg('snapshot', '-c', 'a-much-longer-snapshot-name', 'snap.qcow2');
    wd.qemuImg('snapshot', '-c', 's3', 'snap.qcow2');
    wd.qemuImg('snapshot', '-d', 'a-much-longer-snapshot-name', 'snap.qcow2');
    const file = wd.read('snap.qcow2');
    const { header } = openImage(file);
    expect(header.nbSnapshots).toBe(2);
    const region = file.subarray(header.snapshotsOffset);
    const length = snapshotTableLength(region, header.nbSnapshots);
    const table = parseSnapshotTable(region.subarray(0, length), header.nbSnapshots, header.size);

    const info = JSON.parse(wd.qemuImg('info', '--output=json', 'snap.qcow2')) as {
      snapshots: Array<Record<string, number | string>>;
    };
    expect(table.map((s) => ({
      id: s.id,
      name: s.name,
      'vm-state-size': s.vmStateSize,
      'date-sec': s.dateSec,
      'date-nsec': s.dateNsec,
      'vm-clock-sec': Number(s.vmClockNsec / 1_000_000_000n),
      'vm-clock-nsec': Number(s.vmClockNsec % 1_000_000_000n),
      ...(s.icount === ICOUNT_NONE ? {} : { icount: Number(s.icount) }),
    }))).toEqual(info.snapshots);
    expect(table[0]).toMatchObject({ id: '1', name: 'snap1', extraDataSize: 24, diskSize: 64 * 1024 * 1024, l1Size: 1 });
    // 40 + 24 + "1" + "snap1" = 70, padded to 72 before the next entry.
    expect(length).toBe(72 + 40 + 24 + 1 + 2);

    const again = serializeSnapshotTable(table);
    expect(Buffer.from(again).equals(Buffer.from(region.subarray(0, length)))).toBe(true);
  });

  it('"Too much extra metadata" and "Snapshot table is too big" as qemu-img reports them', () => {
    wd.create('bad.qcow2', '64M');
    wd.qemuImg('snapshot', '-c', 'x', 'bad.qcow2');
    const file = wd.read('bad.qcow2');
    const { header } = openImage(file);
    dataView(file).setUint32(header.snapshotsOffset + 36, 1025);
    wd.write('bad.qcow2', file);
    const message = 'Too much extra metadata in snapshot table entry 0';
    expect(qemuOpenMessage(wd.infoError('bad.qcow2').stderr)).toBe(message);
    expect(() => snapshotTableLength(file.subarray(header.snapshotsOffset), 1)).toThrowError(message);

    // 520 entries of 40 + 65535 + 65535 bytes pass 64 MiB; a sparse file holds just their headers.
    wd.create('big.qcow2', '64M');
    const path = wd.path('big.qcow2');
    const tableOffset = 0x100000;
    const fd = openSync(path, 'r+');
    const patch = new Uint8Array(12);
    dataView(patch).setUint32(0, 520);
    dataView(patch).setBigUint64(4, BigInt(tableOffset));
    writeSync(fd, patch, 0, 12, 60);
    const entryLength = 40 + 65535 * 2;
    const h = new Uint8Array(40);
    dataView(h).setUint16(12, 65535);
    dataView(h).setUint16(14, 65535);
    let offset = 0;
    for (let i = 0; i < 520; i++) {
      offset = Math.ceil(offset / 8) * 8;
      writeSync(fd, h, 0, 40, tableOffset + offset);
      offset += entryLength;
    }
    writeSync(fd, new Uint8Array(1), 0, 1, tableOffset + offset);
    closeSync(fd);
    expect(qemuOpenMessage(wd.infoError('big.qcow2').stderr)).toBe('Snapshot table is too big');
    const big = wd.read('big.qcow2');
    expect(() => snapshotTableLength(big.subarray(tableOffset), 520)).toThrowError('Snapshot table is too big');
  });
});
