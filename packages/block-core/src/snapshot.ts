/**
 * The block layer's side of temporarily loading an internal snapshot (block/snapshot.c): the checks every driver
 * shares, and the id-then-name lookup of `qemu-img convert -l NAME`. The driver does the switch itself
 * (BlockDriverInstance.snapshotLoadTmp).
 */
import { BlockBackend } from './backend.js';
import { BlockError, isBlockError } from './errors.js';
import type { BlockNode } from './node.js';

/** bdrv_get_device_name(): the name of a named BlockBackend using the node, else "". */
function deviceName(node: BlockNode): string {
  for (const p of node.parents) {
    if (p.parent instanceof BlockBackend && p.parent.name) return p.parent.name;
  }
  return '';
}

/**
 * bdrv_snapshot_load_tmp(): show the snapshot matching `id` and/or `name` (both when both are given) instead of
 * the active image, on a read-only node, until the node is closed.
 */
export async function snapshotLoadTmp(node: BlockNode, id: string | undefined, name: string | undefined): Promise<void> {
  if (id === undefined && name === undefined) throw new BlockError('EINVAL', 'snapshot_id and name are both NULL');
  if (!node.readOnly) throw new BlockError('EINVAL', 'Device is not readonly');
  if (!node.impl.snapshotLoadTmp) {
    throw new BlockError(
      'ENOTSUP',
      `Block format '${node.driver.name}' used by device '${deviceName(node)}' does not support temporarily loading internal snapshots`,
    );
  }
  await node.impl.snapshotLoadTmp(id, name);
}

/** bdrv_snapshot_load_tmp_by_id_or_name(): by id first; when that finds nothing (or is refused), by name. */
export async function snapshotLoadTmpByIdOrName(node: BlockNode, idOrName: string): Promise<void> {
  try {
    await snapshotLoadTmp(node, idOrName, undefined);
  } catch (e) {
    if (!isBlockError(e) || (e.code !== 'ENOENT' && e.code !== 'EINVAL')) throw e;
    await snapshotLoadTmp(node, undefined, idOrName);
  }
}
