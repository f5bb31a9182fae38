/**
 * qemu-img's `-l snapshot_param` (convert, measure): `snapshot.id=ID,snapshot.name=NAME`, or a bare ID_OR_NAME,
 * and loading that snapshot into a read-only source (bdrv_snapshot_load_tmp).
 */
import { snapshotLoadTmp, snapshotLoadTmpByIdOrName, type BlockNode } from '@blockgraph/block-core';
import { CliError, type Ctx } from './context.js';
import { errMessage } from './open.js';
import { parseQemuOpts } from './qemu-opts.js';

/** What the -l options said; the last `snapshot.` form wins over any bare name, as in qemu-img. */
export interface SnapshotParam {
  opts?: { id?: string; name?: string };
  idOrName?: string;
}

const SNAPSHOT_OPT_BASE = 'snapshot.';

/** One -l argument, added to what earlier ones said. */
export function addSnapshotParam(ctx: Ctx, param: SnapshotParam, text: string): SnapshotParam {
  if (!text.startsWith(SNAPSHOT_OPT_BASE)) return { ...param, idOrName: text };
  const opts: { id?: string; name?: string } = {};
  try {
    for (const e of parseQemuOpts(text)) {
      if (e.shortForm !== undefined) {
        ctx.warn(`short-form boolean option '${e.shortForm}' deprecated`);
        ctx.err(`Please use ${e.key}=${e.value} instead\n`);
      }
      if (e.key === 'snapshot.id') opts.id = e.value;
      else if (e.key === 'snapshot.name') opts.name = e.value;
      else throw new CliError(`Invalid parameter '${e.key}'`);
    }
  } catch (e) {
    ctx.error(errMessage(e));
    throw new CliError(`Failed in parsing snapshot param '${text}'`);
  }
  return { ...param, opts };
}

export function hasSnapshotParam(param: SnapshotParam): boolean {
  return param.opts !== undefined || param.idOrName !== undefined;
}

/** Show the snapshot the -l options name instead of the active image of `node` (opened read-only). */
export async function loadSnapshotParam(node: BlockNode, param: SnapshotParam): Promise<void> {
  try {
    if (param.opts) await snapshotLoadTmp(node, param.opts.id, param.opts.name);
    else if (param.idOrName !== undefined) await snapshotLoadTmpByIdOrName(node, param.idOrName);
  } catch (e) {
    throw new CliError(`Failed to load snapshot: ${errMessage(e)}`);
  }
}
