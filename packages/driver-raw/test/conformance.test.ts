/**
 * The shared driver conformance suite (@blockgraph/iotests) for every driver of this package: file (with and
 * without the native helper, and with cache.direct=on), raw over file, memory, null-co.
 */
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Graph } from '@blockgraph/block-core';
import { runDriverConformance } from '@blockgraph/iotests';
import { describe, test } from 'vitest';
import { allRawDrivers, setNativeDisabled } from '../src/node/file.js';

function graph(): Graph {
  return new Graph({ drivers: [...allRawDrivers] });
}

/** A fresh zero-filled (sparse) temp file of `size` bytes. */
function tempImage(size: number): { filename: string; cleanup: () => Promise<void> } {
  const dir = mkdtempSync(join(tmpdir(), 'blockgraph-conformance-'));
  const filename = join(dir, 'disk.raw');
  writeFileSync(filename, '');
  truncateSync(filename, size);
  return { filename, cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
}

runDriverConformance({
  name: 'file',
  describe,
  test,
  async factory({ size, readOnly }) {
    const img = tempImage(size);
    const g = graph();
    const node = await g.addNode({ driver: 'file', filename: img.filename, readOnly: readOnly ?? false, discard: 'unmap' });
    return { graph: g, node, cleanup: img.cleanup };
  },
});

runDriverConformance({
  name: 'file (no native helper)',
  describe,
  test,
  async factory({ size, readOnly }) {
    const img = tempImage(size);
    const g = graph();
    setNativeDisabled(true);
    try {
      const node = await g.addNode({ driver: 'file', filename: img.filename, readOnly: readOnly ?? false, discard: 'unmap' });
      return { graph: g, node, cleanup: img.cleanup };
    } finally {
      setNativeDisabled(false);
    }
  },
});

runDriverConformance({
  name: 'file (cache.direct=on)',
  describe,
  test,
  async factory({ size, readOnly }) {
    const img = tempImage(size);
    const g = graph();
    const node = await g.addNode({ driver: 'file', filename: img.filename, readOnly: readOnly ?? false, discard: 'unmap', cache: { direct: true } });
    return { graph: g, node, cleanup: img.cleanup };
  },
});

runDriverConformance({
  name: 'raw-over-file',
  describe,
  test,
  async factory({ size, readOnly }) {
    const img = tempImage(size);
    const g = graph();
    const node = await g.openImage(img.filename, { format: 'raw', readOnly: readOnly ?? false, options: { discard: 'unmap' } });
    return { graph: g, node, cleanup: img.cleanup };
  },
});

runDriverConformance({
  name: 'memory',
  describe,
  test,
  async factory({ size, readOnly }) {
    const g = graph();
    const node = await g.addNode({ driver: 'memory', size, readOnly: readOnly ?? false, discard: 'unmap' });
    return { graph: g, node };
  },
});

runDriverConformance({
  name: 'null-co',
  describe,
  test,
  async factory({ size, readOnly }) {
    const g = graph();
    const node = await g.addNode({ driver: 'null-co', size, readZeroes: true, readOnly: readOnly ?? false, discard: 'unmap' });
    return { graph: g, node };
  },
});
