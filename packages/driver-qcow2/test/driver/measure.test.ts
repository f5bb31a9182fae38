/**
 * The driver's measure() (qcow2_measure) called directly, with typed options and open source nodes, against
 * `qemu-img measure --output=json`; and its answer as an upper bound of what blockgraph's own creation and
 * writes then use. The CLI tests compare the command's human and JSON output.
 */
import { statSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import type { Graph, Options } from '@blockgraph/block-core';
import { qcow2Driver } from '../../src/node/index.js';
import { Workdir, hasQemu, newGraph, openQcow2 } from './helpers.js';

const MiB = 1024 * 1024;

describe.skipIf(!hasQemu)('qcow2 measure (driver API)', () => {
  let w: Workdir;
  let g: Graph;

  beforeEach(() => {
    w = new Workdir();
    g = newGraph();
  });

  afterEach(async () => {
    await g.close();
    w.cleanup();
  });

  const qemu = (args: string[]) => {
    const j = JSON.parse(w.qemuImg('measure', '--output=json', '-O', 'qcow2', ...args)) as Record<string, number>;
    return { required: j.required, fullyAllocated: j['fully-allocated'], ...(j.bitmaps !== undefined ? { bitmaps: j.bitmaps } : {}) };
  };

  const NEW: [Options, string[]][] = [
    [{ size: 10 * 1024 * MiB }, ['--size', '10G']],
    [{ size: '1G', clusterSize: 4096 }, ['-o', 'cluster_size=4k', '--size', '1G']],
    [{ size: 1e9, extendedL2: true, refcountBits: 64 }, ['-o', 'extended_l2=on,refcount_bits=64', '--size', '1000000000']],
    [{ size: '3G', preallocation: 'full', clusterSize: '2M' }, ['-o', 'preallocation=full,cluster_size=2M', '--size', '3G']],
    [{ size: '1G', backingFile: 'b.qcow2', compat: '0.10' }, ['-o', 'backing_file=b.qcow2,compat=0.10', '--size', '1G']],
  ];
  for (const [opts, args] of NEW) {
    test(`new image ${JSON.stringify(opts)}`, async () => {
      expect(await qcow2Driver.measure!(opts)).toEqual(qemu(args));
    });
  }

  test('an open qcow2 source with data, zeroes and a backing file', async () => {
    w.create('base.qcow2', '8M');
    w.qemuIo('base.qcow2', 'write -P 1 0 3M');
    w.qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', w.path('top.qcow2'));
    w.qemuIo('top.qcow2', 'write -P 2 5M 100k', 'write -z 0 1M');
    const { node } = await openQcow2(g, w.path('top.qcow2'), { readOnly: true });
    for (const [opts, args] of [
      [{}, []],
      [{ clusterSize: 512 }, ['-o', 'cluster_size=512']],
      [{ extendedL2: 'on', clusterSize: '32k' }, ['-o', 'extended_l2=on,cluster_size=32k']],
    ] as [Options, string[]][]) {
      expect(await qcow2Driver.measure!(opts, node)).toEqual(qemu([...args, w.path('top.qcow2')]));
    }
  });

  test('the required size bounds what blockgraph then creates and writes', async () => {
    const m = await qcow2Driver.measure!({ size: 64 * MiB, clusterSize: 4096 });
    await g.createImage('qcow2', { filename: w.path('n.qcow2'), size: 64 * MiB, cluster_size: 4096 });
    expect(statSync(w.path('n.qcow2')).size).toBeLessThanOrEqual(m.required);
    const { be } = await openQcow2(g, w.path('n.qcow2'));
    for (let off = 0; off < 64 * MiB; off += MiB) await be.pwrite(off, new Uint8Array(MiB).fill(0x5a));
    await g.close();
    expect(statSync(w.path('n.qcow2')).size).toBeLessThanOrEqual(m.fullyAllocated);
  });

  test('invalid options are typed errors with the messages of QEMU', async () => {
    await expect(qcow2Driver.measure!({ size: '1G', clusterSize: 3000 })).rejects.toMatchObject({
      code: 'EINVAL',
      message: 'Cluster size must be a power of two between 512 and 2048k',
    });
    await expect(qcow2Driver.measure!({ size: '64T', clusterSize: 512 })).rejects.toMatchObject({
      message: 'The image size is too large (try using a larger cluster size)',
    });
  });
});
