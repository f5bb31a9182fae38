/**
 * bdrv_append_temp_snapshot() (BDRV_O_SNAPSHOT, `blockgraph io -s`): the image stays read-only below a new
 * qcow2 overlay in the temporary directory, which takes every write and is thrown away at close.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { BlockError, type BlockNode, type Graph, type Options } from '@blockgraph/block-core';
import { hostStrerror } from '@blockgraph/driver-raw/file';

/**
 * create_tmp_file(): TMPDIR (default /tmp, and /tmp means /var/tmp: overlays can grow large, /tmp is often a
 * tmpfs)/vl.XXXXXX, created empty and exclusively, as mkstemp does.
 */
function tempFilename(tmpdir: string | undefined): string {
  const dir = !tmpdir || tmpdir === '/tmp' ? '/var/tmp' : tmpdir;
  const chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  for (let attempt = 0; ; attempt++) {
    const name = join(dir, `vl.${Array.from(randomBytes(6), (b) => chars[b % chars.length]).join('')}`);
    try {
      closeSync(openSync(name, 'wx', 0o600));
      return name;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 100) {
        throw new BlockError('EIO', `Could not open temporary file '${join(dir, 'vl.XXXXXX')}': ${hostStrerror(e)}`, { cause: e });
      }
    }
  }
}

/**
 * Put a temporary qcow2 overlay of the same size over `image` (opened read-only) and return it, its file in
 * `tmpdir` ($TMPDIR). `options` are the overlay node's own (read-only, discard, cache). As in QEMU, the file is
 * unlinked as soon as the overlay is open: nothing is left behind even when the process ends without closing.
 */
export async function appendTempSnapshot(graph: Graph, image: BlockNode, options: Options, tmpdir: string | undefined): Promise<BlockNode> {
  if (!graph.registry.has('qcow2')) throw new BlockError('ENOTSUP', 'A temporary snapshot needs the qcow2 driver (@blockgraph/driver-qcow2)');
  const filename = tempFilename(tmpdir);
  try {
    try {
      await graph.createImage('qcow2', { filename, size: image.totalBytes });
    } catch (e) {
      throw new BlockError('EIO', `Could not create temporary overlay '${filename}': ${(e as Error).message}`, { cause: e });
    }
    return await graph.addNode({ ...options, driver: 'qcow2', file: { driver: 'file', filename }, backing: image.nodeName });
  } finally {
    rmSync(filename, { force: true });
  }
}
