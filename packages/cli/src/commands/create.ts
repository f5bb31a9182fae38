/** blockgraph create — qemu-img create (bdrv_img_create). */
import { resolveRelativeFilename, type BlockDriver, type Graph } from '@blockgraph/block-core';
import { accumulateOptions, cvtnum, HELP, OBJECT, parseArgs } from '../lib/args.js';
import { CliError, oneLine, usageError, type Ctx } from '../lib/context.js';
import { blockOptionHelp, createOptionList, entriesToOptions, formatOptionsLine, parseCreateOptions } from '../lib/create-opts.js';
import { OPTIONAL_DRIVERS, missingDrivers, notInstalledMessage } from '../lib/drivers.js';
import { errMessage, openImage, withGraph } from '../lib/open.js';
import { hasHelpOption, isValidOptionList } from '../lib/qemu-opts.js';

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':F:b:f:ho:qu', [HELP, OBJECT]);
  let fmt = 'raw';
  let baseFmt: string | undefined;
  let baseFilename: string | undefined;
  let opts: string | undefined;
  let quiet = false;
  let noBacking = false;
  for (const o of options) {
    if (o.key === 'F') baseFmt = o.value;
    else if (o.key === 'b') baseFilename = o.value;
    else if (o.key === 'f') fmt = o.value!;
    else if (o.key === 'o') opts = accumulateOptions(opts, o.value!, isValidOptionList);
    else if (o.key === 'q') quiet = true;
    else if (o.key === 'u') noBacking = true;
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  const filename = operands[0];
  if (opts !== undefined && hasHelpOption(opts)) {
    return withGraph(ctx, async (graph) => {
      const drv = formatDriver(graph, fmt);
      ctx.out(blockOptionHelp(drv, filename !== undefined ? graph.registry.get('file') : undefined));
      return 0;
    });
  }
  if (filename === undefined) throw usageError('Expecting image file name');
  let size: number | undefined;
  if (operands.length > 1) size = cvtnum(ctx, 'image size', operands[1]!);
  if (operands.length > 2) throw usageError(`Unexpected argument: ${operands[2]}`);

  return withGraph(ctx, async (graph) => {
    try {
      await imgCreate(ctx, graph, { filename, fmt, baseFilename, baseFmt, options: opts, size, noBacking, quiet });
    } catch (e) {
      throw new CliError(`${filename}: ${oneLine(errMessage(e))}`);
    }
    return 0;
  });
}

export function formatDriver(graph: Graph, fmt: string): BlockDriver {
  if (!graph.registry.has(fmt)) throw new CliError(`Unknown file format '${fmt}'`);
  if (missingDrivers.has(fmt)) throw new CliError(notInstalledMessage(OPTIONAL_DRIVERS.find((d) => d.name === fmt)!));
  return graph.registry.get(fmt);
}

export interface ImgCreateSpec {
  filename: string;
  fmt: string;
  baseFilename?: string | undefined;
  baseFmt?: string | undefined;
  options?: string | undefined;
  size?: number | undefined;
  noBacking?: boolean;
  quiet?: boolean;
}

/** bdrv_img_create(): validate, open the backing file for its size and format, print, create. */
export async function imgCreate(ctx: Ctx, graph: Graph, spec: ImgCreateSpec): Promise<void> {
  const { filename, fmt } = spec;
  if (!graph.registry.has(fmt)) throw new CliError(`Unknown file format '${fmt}'`);
  if (missingDrivers.has(fmt)) throw new CliError(notInstalledMessage(OPTIONAL_DRIVERS.find((d) => d.name === fmt)!));
  const drv = graph.registry.get(fmt);
  if (!drv.create || !drv.createOptions) throw new CliError(`Format driver '${fmt}' does not support image creation`);
  const proto = graph.registry.get('file');
  const fmtList = createOptionList(drv);
  const entries = parseCreateOptions(spec.options, [...fmtList, ...createOptionList(proto)]);
  const given = new Map<string, string>();
  for (const e of entries) given.set(e.key, e.value);

  if (given.has('size')) {
    if (spec.size !== undefined) throw new CliError('The image size must be specified only once');
  } else if (spec.size !== undefined) {
    given.set('size', String(spec.size));
  }
  const hasBackingOpt = fmtList.some(([k]) => k === 'backing_file');
  if (spec.baseFilename !== undefined) {
    if (!hasBackingOpt) throw new CliError(`Backing file not supported for file format '${fmt}'`);
    given.set('backing_file', spec.baseFilename);
  }
  if (spec.baseFmt !== undefined) {
    if (!fmtList.some(([k]) => k === 'backing_fmt')) throw new CliError(`Backing file format not supported for file format '${fmt}'`);
    given.set('backing_fmt', spec.baseFmt);
  }
  const backingFile = given.get('backing_file');
  if (backingFile !== undefined) {
    if (backingFile === filename) throw new CliError('Error: Trying to create an image with the same filename as the backing file');
    if (backingFile === '') throw new CliError('Expected backing file name, got empty string');
  }
  const backingFmt = given.get('backing_fmt');
  let size: number | undefined;
  if (given.has('size')) size = cvtnum(ctx, 'image size', given.get('size')!);

  if (backingFile !== undefined && !spec.noBacking) {
    const full = resolveRelativeFilename(filename, backingFile);
    let img;
    try {
      img = await openImage(ctx, graph, { filename: full, format: backingFmt, readOnly: true, forceShare: true, quiet: true });
    } catch (e) {
      const msg = errMessage(e).replace(/^Could not open '[^']*': /, '');
      throw new CliError(`${msg} Could not open backing image.`);
    }
    if (!backingFmt) throw new CliError(`Backing file specified without backing format Detected format of ${img.image.driver.name}.`);
    if (size === undefined) {
      size = img.blk.getLength();
      given.set('size', String(size));
    }
    img.blk.remove();
  } else if (backingFile !== undefined && !backingFmt) {
    throw new CliError('Backing file specified without backing format');
  }
  if (size === undefined) throw new CliError('Image creation needs a size parameter');

  if (!spec.quiet) ctx.out(`Formatting '${filename}', fmt=${fmt} ${formatOptionsLine(fmt, [drv, proto], given)}\n`);

  const createOpts: Record<string, unknown> = { ...entriesToOptions(entries), filename, size };
  if (backingFile !== undefined) createOpts.backingFile = backingFile;
  if (backingFmt !== undefined) createOpts.backingFmt = backingFmt;
  try {
    await graph.createImage(fmt, createOpts);
  } catch (e) {
    if ((e as { code?: string }).code === 'EFBIG') {
      const hint = given.has('cluster_size') ? ' (try using a larger cluster size)' : '';
      throw new CliError(`The image size is too large for file format '${fmt}'${hint}`);
    }
    throw e;
  }
}
