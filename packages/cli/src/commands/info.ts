/** blockgraph info — qemu-img info. */
import type { Graph } from '@blockgraph/block-core';
import { FORCE_SHARE, HELP, IMAGE_OPTS, OBJECT, OUTPUT, parseArgs, parseOutputFormat } from '../lib/args.js';
import { CliError, usageError, type Ctx } from '../lib/context.js';
import { dumpImageInfoHuman, queryImageInfo } from '../lib/image-info.js';
import { openImage, withGraph } from '../lib/open.js';
import { toQemuJsonPretty, type QValue } from '../lib/qjson.js';

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':f:hU', [
    HELP,
    { name: 'format', arg: 'required', key: 'f' },
    OUTPUT,
    { name: 'backing-chain', arg: 'none', key: 'backing-chain' },
    OBJECT,
    IMAGE_OPTS,
    FORCE_SHARE,
  ]);
  let fmt: string | undefined;
  let output: string | undefined;
  let chain = false;
  let imageOpts = false;
  let forceShare = false;
  for (const o of options) {
    if (o.key === 'f') fmt = o.value;
    else if (o.key === 'output') output = o.value;
    else if (o.key === 'backing-chain') chain = true;
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'U') forceShare = true;
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  if (operands.length !== 1) throw usageError('Expecting one image file name');
  const format = parseOutputFormat(output);
  const list = await withGraph(ctx, (graph) => collectInfoList(ctx, graph, operands[0]!, fmt, imageOpts, chain, forceShare));
  if (format === 'human') {
    ctx.out(list.map((i) => dumpImageInfoHuman(i)).join('\n'));
  } else {
    ctx.out(`${toQemuJsonPretty(chain ? (list as QValue[]) : list[0]!)}\n`);
  }
  return 0;
}

/** collect_image_info_list(): each image opened alone (no backing, read-only), following the chain by name. */
async function collectInfoList(
  ctx: Ctx,
  graph: Graph,
  first: string,
  firstFmt: string | undefined,
  imageOpts: boolean,
  chain: boolean,
  forceShare: boolean,
): Promise<Record<string, QValue | undefined>[]> {
  const seen = new Set<string>();
  const list: Record<string, QValue | undefined>[] = [];
  let filename: string | undefined = first;
  let fmt = firstFmt;
  let opts = imageOpts;
  while (filename !== undefined) {
    if (seen.has(filename)) throw new CliError(`Backing file '${filename}' creates an infinite loop.`);
    seen.add(filename);
    const img = await openImage(ctx, graph, { filename, format: fmt, imageOpts: opts, readOnly: true, forceShare, noBacking: true, noIo: true, quiet: true });
    const info = await queryImageInfo(img.image);
    list.push(info);
    img.blk.remove();
    await graph.closeNode(img.top);
    filename = undefined;
    fmt = undefined;
    opts = false;
    if (chain) {
      if (info['full-backing-filename'] !== undefined) filename = String(info['full-backing-filename']);
      else if (info['backing-filename'] !== undefined) {
        throw new CliError(`Could not determine absolute backing filename, but backing filename '${String(info['backing-filename'])}' present`);
      }
      if (info['backing-filename-format'] !== undefined) fmt = String(info['backing-filename-format']);
    }
  }
  return list;
}
