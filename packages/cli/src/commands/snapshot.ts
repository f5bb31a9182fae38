/** blockgraph snapshot — qemu-img snapshot -l | -c NAME | -a NAME | -d NAME (internal snapshots). */
import { ERRNO, isBlockError, type BlockNode, type SnapshotInfo } from '@blockgraph/block-core';
import { FORCE_SHARE, HELP, IMAGE_OPTS, OBJECT, parseArgs } from '../lib/args.js';
import { CliError, oneLine, usageError, type Ctx } from '../lib/context.js';
import { snapshotRow, snapshotToQapi } from '../lib/image-info.js';
import { errMessage, openImage, warnProbedRaw, withGraph } from '../lib/open.js';
import { strerror } from '../lib/strerror.js';

type Action = 'list' | 'apply' | 'create' | 'delete';

/** bdrv_snapshot_fallback(): the node that implements snapshots, looking through pass-through layers. */
function snapshotNode(node: BlockNode, method: 'snapshotList' | 'snapshotCreate' | 'snapshotGoto' | 'snapshotDelete'): BlockNode | undefined {
  for (let n: BlockNode | undefined = node; n; ) {
    if (n.impl[method]) return n;
    const c = n.filteredChild();
    n = c?.node;
  }
  return undefined;
}

async function listSnapshots(node: BlockNode): Promise<SnapshotInfo[] | undefined> {
  const n = snapshotNode(node, 'snapshotList');
  if (!n) return undefined;
  return n.impl.snapshotList!();
}

/**
 * bdrv_snapshot_find() of QEMU 7.2: by name only (so `qemu-img snapshot -d 2` does not delete the snapshot
 * with id 2 unless it is also named "2"; -a goes through the driver, which tries the id first).
 */
async function findSnapshot(node: BlockNode, name: string): Promise<SnapshotInfo | undefined> {
  const list = (await listSnapshots(node).catch(() => undefined)) ?? [];
  return list.find((s) => s.name === name);
}

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':la:c:d:hqU', [HELP, OBJECT, IMAGE_OPTS, FORCE_SHARE]);
  let action: Action | undefined;
  let name = '';
  let quiet = false;
  let forceShare = false;
  let imageOpts = false;
  const set = (a: Action, v?: string) => {
    if (action) throw usageError("Cannot mix '-l', '-a', '-c', '-d'");
    action = a;
    name = v ?? '';
  };
  for (const o of options) {
    if (o.key === 'l') set('list');
    else if (o.key === 'a') set('apply', o.value);
    else if (o.key === 'c') set('create', o.value);
    else if (o.key === 'd') set('delete', o.value);
    else if (o.key === 'q') quiet = true;
    else if (o.key === 'U') forceShare = true;
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  if (operands.length !== 1) throw usageError('Expecting one image file name');
  const filename = operands[0]!;
  return withGraph(ctx, async (graph) => {
    const img = await openImage(ctx, graph, { filename, imageOpts, readOnly: action === 'list', forceShare, quiet });
    return act(ctx, img, action, name, filename, quiet);
  });
}

/** The action on the open image; returns the exit code. */
async function act(
  ctx: Ctx,
  img: Awaited<ReturnType<typeof openImage>>,
  action: Action | undefined,
  name: string,
  filename: string,
  quiet: boolean,
): Promise<number> {
  const node = img.top;
  switch (action) {
    case 'list': {
      const list = await listSnapshots(node).catch(() => undefined);
      if (list && list.length) {
        let s = `Snapshot list:\n${snapshotRow()}\n`;
        for (const sn of list) s += `${snapshotRow(snapshotToQapi(sn))}\n`;
        ctx.out(s);
      }
      return 0;
    }
    case 'create': {
      const now = Date.now();
      const n = snapshotNode(node, 'snapshotCreate');
      try {
        if (!n) throw Object.assign(new CliError('Operation not supported'), { code: 'ENOTSUP' });
        await n.impl.snapshotCreate!({ name, dateSec: Math.floor(now / 1000), dateNsec: (now % 1000) * 1e6 });
      } catch (e) {
        const code = (e as { code?: string }).code as keyof typeof ERRNO | undefined;
        const errno = code && code in ERRNO ? ERRNO[code] : 5;
        ctx.error(`Could not create snapshot '${name}': -${errno} (${oneLine(strerror(e))})`);
        return 1;
      }
      return 0;
    }
    case 'apply': {
      const n = snapshotNode(node, 'snapshotGoto');
      try {
        if (!n) {
          // QEMU's fallback closes and reopens the image first, which repeats the "probing guessed raw" warning.
          if (img.probed && img.image.driver.name === 'raw' && !quiet) warnProbedRaw(ctx, filename);
          throw new CliError('Block driver does not support snapshots');
        }
        await n.impl.snapshotGoto!(name);
      } catch (e) {
        ctx.errorReported(e);
        ctx.error(`Could not apply snapshot '${name}': ${oneLine(errMessage(e))}`);
        return 1;
      }
      return 0;
    }
    case 'delete': {
      const sn = await findSnapshot(node, name);
      if (!sn) {
        ctx.error(`Could not delete snapshot '${name}': snapshot not found`);
        return 1;
      }
      const n = snapshotNode(node, 'snapshotDelete');
      try {
        if (!n) throw new CliError('Block driver does not support snapshots');
        await n.impl.snapshotDelete!(sn.id, sn.name);
      } catch (e) {
        ctx.error(`Could not delete snapshot '${name}': ${oneLine(isBlockError(e) ? e.message : errMessage(e))}`);
        return 1;
      }
      return 0;
    }
    default:
      return 0;
  }
}
