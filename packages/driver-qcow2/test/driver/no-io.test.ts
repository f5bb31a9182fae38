/**
 * The `noIo` open option (QEMU's BDRV_O_NO_IO, used by `qemu-img info`): metadata only, no external data file.
 */
import { renameSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { Workdir, expectCode, hasQemu, newGraph, openQcow2 } from './helpers.js';

describe.skipIf(!hasQemu)('noIo: metadata inspection without the data file', () => {
  const w = new Workdir();
  afterAll(() => w.cleanup());

  it('opens an image whose data file is gone, describes it, and refuses guest I/O', async () => {
    w.create('df.qcow2', '8M', [`data_file=${w.path('df.raw')}`]);
    w.qemuIo('df.qcow2', 'write -P 1 0 64k');
    renameSync(w.path('df.raw'), w.path('moved.raw'));
    const graph = newGraph();
    try {
      // Without noIo the data file is needed.
      await expectCode(openQcow2(graph, w.path('df.qcow2'), { readOnly: true }), 'ENOENT', /Could not open '.*df\.raw'/);
      const { node, be } = await openQcow2(graph, w.path('df.qcow2'), { readOnly: true, options: { noIo: true } });
      expect(node.totalBytes).toBe(8 * 1024 * 1024);
      expect(node.impl.getSpecificInfo?.()?.data).toMatchObject({ 'data-file': w.path('df.raw'), 'data-file-raw': false });
      await expectCode(be.read(0, 4096), 'ENOTSUP', /metadata inspection only/);
      await expectCode(be.pwrite(0, new Uint8Array(512)), 'EPERM'); // a read-only node: the block layer refuses first
    } finally {
      await graph.close();
    }
  });

  it('is for read-only opens only', async () => {
    w.create('plain.qcow2', '1M');
    const graph = newGraph();
    try {
      await expectCode(openQcow2(graph, w.path('plain.qcow2'), { options: { noIo: true } }), 'EINVAL', /'no-io' requires a read-only image/);
    } finally {
      await graph.close();
    }
  });
});
