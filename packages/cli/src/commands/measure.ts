/**
 * blockgraph measure — qemu-img measure: the file size an image of the given format needs, for a new image of
 * --size N or to hold an existing image's contents. raw is measured here (its answer is the virtual size,
 * rounded up to 512); other formats answer through an optional `measure()` on their driver.
 */
import type { BlockNode, MeasureResult, Options } from '@blockgraph/block-core';
import { accumulateOptions, cvtnum, FORCE_SHARE, HELP, IMAGE_OPTS, OBJECT, OUTPUT, parseArgs, parseOutputFormat } from '../lib/args.js';
import { CliError, oneLine, type Ctx } from '../lib/context.js';
import { createOptionList, entriesToOptions, parseCreateOptions } from '../lib/create-opts.js';
import { errMessage, openImage, withGraph } from '../lib/open.js';
import { toQemuJsonPretty } from '../lib/qjson.js';
import { isValidOptionList } from '../lib/qemu-opts.js';
import { addSnapshotParam, hasSnapshotParam, loadSnapshotParam, type SnapshotParam } from '../lib/snapshot-param.js';
import { formatDriver } from './create.js';

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':hf:O:o:l:U', [
    HELP,
    IMAGE_OPTS,
    OBJECT,
    OUTPUT,
    { name: 'size', arg: 'required', key: 'size' },
    FORCE_SHARE,
  ]);
  let fmt: string | undefined;
  let outFmt = 'raw';
  let opts: string | undefined;
  let output: string | undefined;
  let imgSize = -1;
  let imageOpts = false;
  let forceShare = false;
  let snapshot: SnapshotParam = {};
  for (const o of options) {
    if (o.key === 'f') fmt = o.value;
    else if (o.key === 'O') outFmt = o.value!;
    else if (o.key === 'o') opts = accumulateOptions(opts, o.value!, isValidOptionList);
    else if (o.key === 'l') snapshot = addSnapshotParam(ctx, snapshot, o.value!);
    else if (o.key === 'output') output = o.value;
    else if (o.key === 'size') imgSize = cvtnum(ctx, 'image size', o.value!);
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'U') forceShare = true;
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  const format = parseOutputFormat(output);
  if (operands.length > 1) throw new CliError('At most one filename argument is allowed.');
  const filename = operands[0];
  if (filename === undefined && (imageOpts || fmt !== undefined || hasSnapshotParam(snapshot))) {
    throw new CliError('--image-opts, -f, and -l require a filename argument.');
  }
  if (filename !== undefined && imgSize !== -1) throw new CliError('--size N cannot be used together with a filename.');
  if (filename === undefined && imgSize === -1) throw new CliError('Either --size N or one filename must be specified.');

  return withGraph(ctx, async (graph) => {
    let source: BlockNode | undefined;
    if (filename !== undefined) {
      const img = await openImage(ctx, graph, { filename, format: fmt, imageOpts, readOnly: true, forceShare, quiet: true });
      source = img.top;
      await loadSnapshotParam(source, snapshot);
    }
    const drv = formatDriver(graph, outFmt);
    if (!drv.createOptions || !drv.create) throw new CliError(`Format driver '${outFmt}' does not support image creation`);
    let entries;
    try {
      entries = parseCreateOptions(opts, [...createOptionList(drv), ...createOptionList(graph.registry.get('file'))]);
    } catch (e) {
      ctx.error(errMessage(e));
      throw new CliError(`Invalid options for file format '${outFmt}'`);
    }
    const createOpts: Options = entriesToOptions(entries);
    if (imgSize !== -1) createOpts.size = imgSize;
    let info: MeasureResult;
    if (drv.name === 'raw') {
      const size = source ? source.totalBytes : Math.ceil(Number(createOpts.size ?? 0) / 512) * 512;
      info = { required: size, fullyAllocated: size };
    } else if (drv.measure) {
      try {
        info = await drv.measure(createOpts, source);
      } catch (e) {
        throw new CliError(oneLine(errMessage(e)));
      }
    } else {
      throw new CliError(`Block driver '${outFmt}' does not support size measurement`);
    }
    if (format === 'human') {
      ctx.out(`required size: ${info.required}\nfully allocated size: ${info.fullyAllocated}\n`);
      if (info.bitmaps !== undefined) ctx.out(`bitmaps size: ${info.bitmaps}\n`);
    } else {
      ctx.out(`${toQemuJsonPretty({ required: info.required, 'fully-allocated': info.fullyAllocated, bitmaps: info.bitmaps })}\n`);
    }
    return 0;
  });
}
