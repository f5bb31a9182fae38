/**
 * Internal snapshots through the driver API, on one open node: what the CLI tests (a fresh process per step)
 * cannot see — cached L2 tables and COPIED flags after create/goto/delete, I/O racing a snapshot, size changes
 * seen by the node and its users, refusal on read-only nodes. qemu-img check and qemu-io are the oracle.
 */
import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { type BlockBackend, type BlockNode, type Graph } from '@blockgraph/block-core';
import { Workdir, allBytes, expectCode, fill, hasQemu, newGraph, openQcow2, qemuCheck, run } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe.skipIf(!hasQemu)('qcow2 internal snapshots (driver API)', () => {
  let w: Workdir;
  let g: Graph;
  let node: BlockNode;
  let be: BlockBackend;

  beforeEach(async () => {
    w = new Workdir();
    w.create('a.qcow2', '16M');
    w.qemuIo('a.qcow2', 'write -P 0x11 0 1M', 'write -P 0x12 4M 64k');
    g = newGraph();
    ({ node, be } = await openQcow2(g, w.path('a.qcow2')));
  });

  afterEach(async () => {
    await g.close();
    w.cleanup();
  });

  const closeAndCheck = async () => {
    await g.close();
    const r = qemuCheck(w.path('a.qcow2'));
    expect(r.out).toMatch(/No errors were found on the image\./);
    expect(r.status).toBe(0);
  };

  test('create, write, goto, read back on the same node: no stale cached tables', async () => {
    await node.impl.snapshotCreate!({ name: 's1', dateSec: 1_700_000_000, dateNsec: 5 });
    // Overwrite shared clusters (COW away from the snapshot), partially and fully, and allocate new ones.
    await be.pwrite(0, fill(64 * KiB, 0x21));
    await be.pwrite(100 * KiB, fill(4 * KiB, 0x22));
    await be.pwrite(8 * MiB, fill(128 * KiB, 0x23));
    await node.impl.snapshotCreate!({ name: 's2' });
    await be.pwrite(32 * KiB, fill(64 * KiB, 0x31));
    await be.pwriteZeroes(4 * MiB, 64 * KiB);

    await node.impl.snapshotGoto!('s1');
    expect(allBytes(await be.read(0, MiB), 0x11)).toBe(true);
    expect(allBytes(await be.read(4 * MiB, 64 * KiB), 0x12)).toBe(true);
    expect(allBytes(await be.read(8 * MiB, 128 * KiB), 0)).toBe(true);
    // Writing after the goto must COW again (the clusters are shared with s1 and s2).
    await be.pwrite(0, fill(4 * KiB, 0x41));

    await node.impl.snapshotGoto!('2');
    const got = await be.read(0, 128 * KiB);
    expect(allBytes(got.subarray(0, 64 * KiB), 0x21)).toBe(true);
    expect(allBytes(got.subarray(100 * KiB, 104 * KiB), 0x22)).toBe(true);
    expect(allBytes(await be.read(8 * MiB, 128 * KiB), 0x23)).toBe(true);

    const list = await node.impl.snapshotList!();
    expect(list.map((s) => [s.id, s.name])).toEqual([
      ['1', 's1'],
      ['2', 's2'],
    ]);
    expect(list[0]).toMatchObject({ dateSec: 1_700_000_000, dateNsec: 5, vmStateSize: 0, vmClockNsec: 0n });

    await node.impl.snapshotDelete!('1', 's1');
    await node.impl.snapshotDelete!(undefined, 's2');
    expect(await node.impl.snapshotList!()).toEqual([]);
    // Everything is referenced once again: writes go in place.
    await be.pwrite(0, fill(64 * KiB, 0x51));
    await closeAndCheck();
    const r = run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x51 0 64k', '-c', 'read -P 0x23 8M 128k', w.path('a.qcow2')]);
    expect(r.out).not.toMatch(/Pattern verification failed/);
  });

  test('writes racing a snapshot land either before it (in it) or after it (not in it), never half', async () => {
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 16; i++) writes.push(be.pwrite(i * 64 * KiB, fill(64 * KiB, 0x60 + i)));
    const snap = node.impl.snapshotCreate!({ name: 'race' });
    for (let i = 0; i < 16; i++) writes.push(be.pwrite(MiB + i * 64 * KiB, fill(64 * KiB, 0x80 + i)));
    await Promise.all([...writes, snap]);
    await closeAndCheck();
    // Each 64k cluster of the snapshot holds one whole pattern.
    must(w, ['convert', '-U', '-l', 'snapshot.name=race', '-O', 'raw', w.path('a.qcow2'), w.path('race.raw')]);
    const raw = readFileSync(w.path('race.raw'));
    for (let c = 0; c < 32; c++) {
      const chunk = raw.subarray(c * 64 * KiB, (c + 1) * 64 * KiB);
      expect(chunk.every((b) => b === chunk[0]), `cluster ${c}`).toBe(true);
    }
  });

  test('goto a snapshot of another size resizes the node and tells its users', async () => {
    await node.impl.snapshotCreate!({ name: 'small' });
    await be.truncate(32 * MiB, false, 'off');
    await be.pwrite(30 * MiB, fill(64 * KiB, 0x77));
    await node.impl.snapshotCreate!({ name: 'big' });
    await node.impl.snapshotGoto!('small');
    expect(node.totalBytes).toBe(16 * MiB);
    expect(be.getLength()).toBe(16 * MiB);
    await node.impl.snapshotGoto!('big');
    expect(node.totalBytes).toBe(32 * MiB);
    expect(allBytes(await be.read(30 * MiB, 64 * KiB), 0x77)).toBe(true);
    await closeAndCheck();
  });

  test('errors: missing snapshot, id and name that do not match, read-only node', async () => {
    await node.impl.snapshotCreate!({ name: 's1' });
    await expectCode(node.impl.snapshotGoto!('nope'), 'ENOENT', /^Failed to load snapshot: No such file or directory$/);
    await expectCode(node.impl.snapshotDelete!('1', 'other'), 'ENOENT', /Can't find the snapshot/);
    await expectCode(node.impl.snapshotDelete!('7', undefined), 'ENOENT');
    await g.close();
    const before = readFileSync(w.path('a.qcow2'));

    g = newGraph();
    ({ node } = await openQcow2(g, w.path('a.qcow2'), { readOnly: true }));
    expect((await node.impl.snapshotList!()).map((s) => s.name)).toEqual(['s1']);
    await expectCode(node.impl.snapshotCreate!({ name: 'x' }), 'EACCES');
    await expectCode(node.impl.snapshotGoto!('s1'), 'EACCES');
    await expectCode(node.impl.snapshotDelete!('1', 's1'), 'EACCES');
    await g.close();
    expect(readFileSync(w.path('a.qcow2')).equals(before)).toBe(true);
  });

  test('snapshotLoadTmp: a read-only node reads the snapshot until closed, cannot become writable, and the file is untouched', async () => {
    await node.impl.snapshotCreate!({ name: 's1' });
    await be.pwrite(0, fill(64 * KiB, 0x21));
    await g.close();
    g = newGraph();
    ({ node, be } = await openQcow2(g, w.path('a.qcow2'), { readOnly: true }));
    const before = readFileSync(w.path('a.qcow2'));
    // A read through the active L1 table first, so the cache holds active L2 slices when the table switches.
    expect(allBytes(await be.read(0, 64 * KiB), 0x21)).toBe(true);
    await expectCode(node.impl.snapshotLoadTmp!('1', 'other'), 'ENOENT', /^Can't find snapshot$/);
    await node.impl.snapshotLoadTmp!(undefined, 's1');
    expect(allBytes(await be.read(0, MiB), 0x11)).toBe(true);
    expect(allBytes(await be.read(4 * MiB, 64 * KiB), 0x12)).toBe(true);
    expect(node.totalBytes).toBe(16 * MiB);
    await expectCode(g.reopen(node, { readOnly: false }), 'EPERM', /internal snapshot is loaded/);
    expect(node.readOnly).toBe(true);
    await g.close();
    expect(readFileSync(w.path('a.qcow2')).equals(before)).toBe(true);
    // The active image still has its own data and is clean.
    g = newGraph();
    ({ node, be } = await openQcow2(g, w.path('a.qcow2'), { readOnly: true }));
    expect(allBytes(await be.read(0, 64 * KiB), 0x21)).toBe(true);
    await g.close();
    expect(qemuCheck(w.path('a.qcow2')).status).toBe(0);
  });

  test('snapshotLoadTmp refuses a writable node', async () => {
    await node.impl.snapshotCreate!({ name: 's1' });
    await expectCode(node.impl.snapshotLoadTmp!('1', undefined), 'EINVAL', /^Device is not readonly$/);
  });

  test('an image with an external data file has no internal snapshots', async () => {
    await g.close();
    w.qemuImg('create', '-q', '-f', 'qcow2', '-o', `data_file=${w.path('data.raw')}`, w.path('ext.qcow2'), '1M');
    g = newGraph();
    ({ node } = await openQcow2(g, w.path('ext.qcow2')));
    await expectCode(node.impl.snapshotCreate!({ name: 'x' }), 'ENOTSUP');
    await expectCode(node.impl.snapshotGoto!('x'), 'ENOTSUP', /^Failed to load snapshot: Operation not supported$/);
  });
});

function must(w: Workdir, args: string[]): void {
  w.qemuImg(...args);
}
