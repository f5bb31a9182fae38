/**
 * A backing file attached, replaced or removed at runtime (blockdev-snapshot = Graph.snapshot, blockdev-reopen
 * with `backing` = Graph.setBacking) is the one reads and copy-on-write use from then on (found by the port of
 * qemu-iotests 156: an overlay opened with `backing: null` kept reading zeroes after its backing was attached).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { newGraph } from './helpers.js';

const KiB = 1024;

describe('backing file changed at runtime', () => {
  let dir: string;
  let g: Graph;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qcow2-backing-changed-'));
    g = newGraph();
    await g.createImage('qcow2', { filename: join(dir, 'base.qcow2'), size: '1M' });
    await g.createImage('qcow2', { filename: join(dir, 'top.qcow2'), size: '1M' });
    await g.addNode({ driver: 'qcow2', nodeName: 'base', file: { driver: 'file', filename: join(dir, 'base.qcow2') } });
    const be = g.backend('base');
    await be.pwrite(0, new Uint8Array(128 * KiB).fill(0x11));
    be.remove();
    await g.addNode({ driver: 'qcow2', nodeName: 'top', backing: null, file: { driver: 'file', filename: join(dir, 'top.qcow2') } });
  });

  afterEach(async () => {
    await g.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const read = async (node: string, off: number, len: number): Promise<Uint8Array> => {
    const be = g.backend(node, { perm: 0, shared: 15 });
    try {
      return await be.read(off, len);
    } finally {
      be.remove();
    }
  };

  test('snapshot: the overlay reads and copies-on-write from its new backing file', async () => {
    expect(await read('top', 0, 4)).toEqual(new Uint8Array(4));
    await g.snapshot('base', 'top');
    const be = g.backend('top');
    expect(await be.read(0, 128 * KiB)).toEqual(new Uint8Array(128 * KiB).fill(0x11));
    // A partial-cluster write copies the rest of the cluster from the new backing file.
    await be.pwrite(4 * KiB, new Uint8Array(4 * KiB).fill(0x22));
    const got = await be.read(0, 64 * KiB);
    expect(got.subarray(0, 4 * KiB)).toEqual(new Uint8Array(4 * KiB).fill(0x11));
    expect(got.subarray(4 * KiB, 8 * KiB)).toEqual(new Uint8Array(4 * KiB).fill(0x22));
    expect(got.subarray(8 * KiB)).toEqual(new Uint8Array(56 * KiB).fill(0x11));
    be.remove();
  });

  test('setBacking: attach, then detach again', async () => {
    await g.setBacking('top', 'base');
    expect(await read('top', 64 * KiB, 4)).toEqual(new Uint8Array(4).fill(0x11));
    await g.setBacking('top', null);
    expect(await read('top', 64 * KiB, 4)).toEqual(new Uint8Array(4));
  });
});
