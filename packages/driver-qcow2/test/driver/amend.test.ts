/**
 * qemu-img amend through the driver API on an open node that keeps serving I/O afterwards: the new format
 * (v2 zero handling, refcount width, lazy refcounts, size) must be the one the next writes use. qemu-img check
 * and qemu-io are the oracle; the CLI tests compare the amended files with qemu-img's byte for byte.
 */
import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { type BlockBackend, type BlockNode, type Graph } from '@blockgraph/block-core';
import { Workdir, allBytes, expectCode, fill, hasQemu, newGraph, openQcow2, qemuCheck, run } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe.skipIf(!hasQemu)('qcow2 amend (driver API)', () => {
  let w: Workdir;
  let g: Graph;
  let node: BlockNode;
  let be: BlockBackend;

  beforeEach(async () => {
    w = new Workdir();
    w.create('a.qcow2', '16M');
    w.qemuIo('a.qcow2', 'write -P 0x11 0 1M', 'write -z 2M 128k', 'write -z -u 3M 64k');
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
  const info = () => JSON.parse(w.qemuImg('info', '--output=json', '-U', w.path('a.qcow2'))) as {
    'virtual-size': number;
    'format-specific': { data: Record<string, unknown> };
  };

  test('compat=0.10, then zero writes on the open node: v2 has no zero flag', async () => {
    await node.impl.amend!({ compat: '0.10' });
    await be.pwriteZeroes(0, 64 * KiB);
    await be.pwriteZeroes(5 * MiB, 64 * KiB);
    expect(allBytes(await be.read(0, 64 * KiB), 0)).toBe(true);
    expect(allBytes(await be.read(64 * KiB, 64 * KiB), 0x11)).toBe(true);
    await closeAndCheck();
    expect(info()['format-specific'].data.compat).toBe('0.10');
    const r = run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0 0 64k', '-c', 'read -P 0x11 64k 960k', '-c', 'read -P 0 2M 2M', w.path('a.qcow2')]);
    expect(r.out).not.toMatch(/Pattern verification failed/);
  });

  test('refcount_bits=1, then allocating writes and a refused snapshot', async () => {
    await node.impl.amend!({ refcountBits: 1 });
    for (let i = 0; i < 64; i++) await be.pwrite(4 * MiB + i * 64 * KiB, fill(64 * KiB, i + 1));
    // A snapshot needs refcount 2.
    await expectCode(node.impl.snapshotCreate!({ name: 's' }), 'EINVAL');
    await g.close();
    // The failed snapshot leaks what it allocated (as QEMU's does); nothing else is wrong.
    const r = qemuCheck(w.path('a.qcow2'));
    expect(r.out).not.toMatch(/ERROR/);
    expect(info()['format-specific'].data['refcount-bits']).toBe(1);
    const io = run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 1 4M 64k', '-c', 'read -P 64 8128k 64k', w.path('a.qcow2')]);
    expect(io.out).not.toMatch(/Pattern verification failed/);
  });

  test('refcount_bits=64 and lazy_refcounts=on: writes keep working, the image closes clean', async () => {
    await node.impl.amend!({ refcount_bits: '64', lazy_refcounts: 'on' });
    await be.pwrite(6 * MiB, fill(MiB, 0x66));
    await node.impl.snapshotCreate!({ name: 's' });
    await be.pwrite(6 * MiB, fill(64 * KiB, 0x67));
    await closeAndCheck();
    expect(info()['format-specific'].data).toMatchObject({ 'refcount-bits': 64, 'lazy-refcounts': true });
  });

  test('size: grow and shrink are seen by the node and its users', async () => {
    await node.impl.amend!({ size: 64 * MiB });
    expect(node.totalBytes).toBe(64 * MiB);
    expect(be.getLength()).toBe(64 * MiB);
    await be.pwrite(60 * MiB, fill(64 * KiB, 0x70));
    await node.impl.amend!({ size: '2M' });
    expect(be.getLength()).toBe(2 * MiB);
    await closeAndCheck();
    expect(info()['virtual-size']).toBe(2 * MiB);
  });

  test('errors are typed and change nothing; a read-only node is refused', async () => {
    await expectCode(node.impl.amend!({ compat: '0.9' }), 'EINVAL', /^Unknown compatibility level 0\.9$/);
    await expectCode(node.impl.amend!({ refcountBits: 3 }), 'EINVAL', /power of two/);
    await expectCode(node.impl.amend!({ clusterSize: 4096 }), 'EINVAL', /Invalid parameter 'clusterSize'/);
    await expectCode(node.impl.amend!({ backingFile: 'x.qcow2' }), 'EINVAL', /^Cannot amend the backing file$/);
    await g.close();
    const before = readFileSync(w.path('a.qcow2'));
    g = newGraph();
    ({ node } = await openQcow2(g, w.path('a.qcow2'), { readOnly: true }));
    await expectCode(node.impl.amend!({ lazyRefcounts: true }), 'EACCES');
    await g.close();
    expect(readFileSync(w.path('a.qcow2')).equals(before)).toBe(true);
  });
});
