/**
 * The shared driver conformance suite (@blockgraph/iotests) on qcow2 over a file and over a memory node, with a
 * few image variants (v2, small clusters and narrow refcounts, extended L2, lazy refcounts, a backing file).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Perm, PERM_ALL, type Options } from '@blockgraph/block-core';
import { runDriverConformance } from '@blockgraph/iotests';
import { describe, test } from 'vitest';
import { newGraph } from './helpers.js';

async function tempQcow2(size: number, create: Options = {}): Promise<{ dir: string; filename: string; cleanup: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'qcow2-conformance-'));
  const filename = join(dir, 'disk.qcow2');
  const g = newGraph();
  await g.createImage('qcow2', { filename, size, ...create });
  await g.close();
  return { dir, filename, cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
}

function overFile(name: string, create: Options = {}, open: Options = {}, withBacking = false): void {
  runDriverConformance({
    name,
    describe,
    test,
    async factory({ size, readOnly }) {
      const img = await tempQcow2(size, withBacking ? {} : create);
      let filename = img.filename;
      if (withBacking) {
        // An all-zero base image below the image under test.
        filename = join(img.dir, 'top.qcow2');
        const g0 = newGraph();
        await g0.createImage('qcow2', { filename, size, backingFile: 'disk.qcow2', backingFmt: 'qcow2', ...create });
        await g0.close();
      }
      const g = newGraph();
      const node = await g.addNode({
        driver: 'qcow2',
        readOnly: readOnly ?? false,
        discard: 'unmap',
        file: { driver: 'file', filename },
        ...open,
      });
      return { graph: g, node, cleanup: img.cleanup };
    },
  });
}

overFile('qcow2-over-file');
overFile('qcow2-over-file (compat=0.10)', { compat: '0.10' });
overFile('qcow2-over-file (512 B clusters, refcount_bits=1, small L2 cache)', { clusterSize: 512, refcountBits: 1 }, { l2CacheSize: 1024 });
overFile('qcow2-over-file (extended_l2)', { extendedL2: true });
overFile('qcow2-over-file (lazy refcounts)', { lazyRefcounts: true });
overFile('qcow2-over-file (over a backing file)', {}, {}, true);

runDriverConformance({
  name: 'qcow2-over-memory',
  describe,
  test,
  async factory({ size, readOnly }) {
    const img = await tempQcow2(size);
    const bytes = new Uint8Array(readFileSync(img.filename));
    await img.cleanup();
    const g = newGraph();
    const mem = await g.addNode({ driver: 'memory', nodeName: 'mem', size: bytes.length, discard: 'unmap' });
    const be = g.backend(mem, { perm: Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE, shared: PERM_ALL });
    await be.pwrite(0, bytes);
    be.remove();
    if (readOnly) await g.reopen(mem, { readOnly: true });
    const node = await g.addNode({ driver: 'qcow2', readOnly: readOnly ?? false, discard: 'unmap', file: 'mem' });
    return { graph: g, node };
  },
});
