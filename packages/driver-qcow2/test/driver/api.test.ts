/**
 * The package surface: the neutral and Node entries, injected codecs, and platform neutrality of the sources
 * outside src/node.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { Graph, IOVector } from '@blockgraph/block-core';
import { allRawDrivers } from '@blockgraph/driver-raw/file';
import * as neutral from '@blockgraph/driver-qcow2';
import * as nodeEntry from '@blockgraph/driver-qcow2/node';
import type { CodecTable, CompressionCodec } from '../../src/index.js';
import { Workdir, hasQemu, run } from './helpers.js';

const NODE_BUILTINS = /(?:from\s+|import\s*\(\s*|require\s*\(\s*)['"](node:[^'"]+|fs|path|os|zlib|child_process|crypto|events|stream|util|url|worker_threads|buffer|net)['"]/;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

describe('package API', () => {
  test('both entries export a qcow2 format driver', () => {
    for (const m of [neutral, nodeEntry]) {
      expect(m.qcow2Driver.name).toBe('qcow2');
      expect(m.qcow2Driver.kind).toBe('format');
      expect(m.qcow2Driver.capabilities.backing).toBe(true);
      expect(m.qcow2Driver.createOptions?.clusterSize).toBeDefined();
      expect(typeof m.createQcow2Driver).toBe('function');
    }
    expect(neutral.qcow2Driver).not.toBe(nodeEntry.qcow2Driver);
    expect(neutral.probeQcow2(new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]))).toBe(100);
    expect(neutral.probeQcow2(new Uint8Array(8))).toBe(0);
  });

  test('sources outside src/node import nothing from Node', () => {
    const files = sources(join(import.meta.dirname, '../../src')).filter((f) => !f.includes('/src/node/'));
    expect(files.length).toBeGreaterThan(30);
    expect(files.filter((f) => NODE_BUILTINS.test(readFileSync(f, 'utf8')))).toEqual([]);
  });

  test.skipIf(!hasQemu)('injected codecs are what compressed reads and writes use', async () => {
    const w = new Workdir();
    try {
      const real = await nodeEntry.nodeCodecs();
      const calls = { compress: 0, decompress: 0 };
      const counting = (c: CompressionCodec): CompressionCodec => ({
        compress: (src, max) => (calls.compress++, c.compress(src, max)),
        decompress: (src, dst) => (calls.decompress++, c.decompress(src, dst)),
      });
      const table: CodecTable = { 0: counting(real[0]!), 1: counting(real[1]!) };
      const driver = neutral.createQcow2Driver({ codecs: table });
      const graph = new Graph({ drivers: [...allRawDrivers, driver] });
      await graph.createImage('qcow2', { filename: w.path('c.qcow2'), size: '1M', compression_type: 'zstd' });
      const node = await graph.addNode({ driver: 'qcow2', file: { driver: 'file', filename: w.path('c.qcow2') } });
      const be = graph.backend(node);
      await be.pwritevCompressed(0, 65536, IOVector.of(new Uint8Array(65536).fill(0x42)));
      expect((await be.read(0, 65536)).every((x) => x === 0x42)).toBe(true);
      await graph.close();
      expect(calls).toEqual({ compress: 1, decompress: 1 });
      expect(run('qemu-io', ['-r', '-c', 'read -P 0x42 0 64k', 'c.qcow2'], w.dir).out).toContain('read 65536/65536');
    } finally {
      w.cleanup();
    }
  });
  test('codecs load on the first compressed cluster, not at open', async () => {
    const w = new Workdir();
    try {
      const real = await nodeEntry.nodeCodecs();
      let loads = 0;
      const driver = neutral.createQcow2Driver({
        codecs: () => {
          loads++;
          return Promise.resolve({ 0: real[0]! });
        },
      });
      const graph = new Graph({ drivers: [...allRawDrivers, driver] });
      await graph.createImage('qcow2', { filename: w.path('z.qcow2'), size: '1M' });
      await graph.createImage('qcow2', { filename: w.path('s.qcow2'), size: '1M', compression_type: 'zstd' });
      const zlib = graph.backend(await graph.addNode({ driver: 'qcow2', file: { driver: 'file', filename: w.path('z.qcow2') } }));
      const zstd = graph.backend(await graph.addNode({ driver: 'qcow2', file: { driver: 'file', filename: w.path('s.qcow2') } }));
      await zlib.pwrite(0, new Uint8Array(4096).fill(1));
      expect((await zlib.read(0, 4096)).every((x) => x === 1)).toBe(true);
      expect(loads).toBe(0);
      await zlib.pwritevCompressed(65536, 65536, IOVector.of(new Uint8Array(65536).fill(0x42)));
      expect((await zlib.read(65536, 65536)).every((x) => x === 0x42)).toBe(true);
      expect(loads).toBe(1);
      // A table without the image's type: the error comes with the first compressed cluster, and names the type.
      await expect(zstd.pwritevCompressed(0, 65536, IOVector.of(new Uint8Array(65536).fill(7)))).rejects.toMatchObject({
        code: 'ENOTSUP',
        message: 'qcow2: no codec for compression type 1 was provided',
      });
      expect(loads).toBe(1);
      await graph.close();
    } finally {
      w.cleanup();
    }
  });
});
