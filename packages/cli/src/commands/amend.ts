/**
 * blockgraph amend — qemu-img amend -o OPTIONS: change format options of an existing image through the
 * driver's amend(). The options a driver can amend are its `amendOptions` schema when it declares one,
 * else its create options.
 */
import { type BlockDriver, type OptionSchema } from '@blockgraph/block-core';
import { accumulateOptions, HELP, IMAGE_OPTS, OBJECT, parseArgs } from '../lib/args.js';
import { CliError, oneLine, usageError, type Ctx } from '../lib/context.js';
import { createOptionList, entriesToOptions, helpLines, optionList, parseCreateOptions } from '../lib/create-opts.js';
import { errMessage, openImage, parseCacheMode, withGraph } from '../lib/open.js';
import { createProgress } from '../lib/progress.js';
import { hasHelpOption, isValidOptionList } from '../lib/qemu-opts.js';
import { formatDriver } from './create.js';

type Amendable = BlockDriver & { amendOptions?: OptionSchema };

function amendSchema(d: Amendable): OptionSchema | undefined {
  return d.amendOptions ?? d.createOptions;
}

/** Without an image, only a driver that declares `amendOptions` is known to amend (impl.amend is per node). */
function supportsAmend(d: BlockDriver): boolean {
  return (d as Amendable).amendOptions !== undefined;
}

function amendHelp(d: Amendable): string {
  const lines = helpLines(optionList(amendSchema(d) ?? {}));
  return `Amend options for '${d.name}':\n${lines.map((l) => `${l}\n`).join('')}`;
}

/**
 * img_amend(): the -o string parsed against the amend options; when that fails but the format's create options
 * would take the whole string, QEMU's error gets the hint that these are creation options.
 */
function parseAmendOptions(d: Amendable, text: string): { key: string; value: string }[] {
  try {
    return parseCreateOptions(text, optionList(amendSchema(d) ?? {}));
  } catch (e) {
    if (!(e instanceof CliError) || !d.createOptions) throw e;
    try {
      parseCreateOptions(text, createOptionList(d));
    } catch {
      throw e;
    }
    throw new CliError(`${e.message} This option is only supported for image creation`);
  }
}

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':ho:f:t:pq', [HELP, OBJECT, IMAGE_OPTS, { name: 'force', arg: 'none', key: 'force' }]);
  let opts: string | undefined;
  let fmt: string | undefined;
  let cache = 'writeback';
  let progress = false;
  let quiet = false;
  let imageOpts = false;
  let force = false;
  for (const o of options) {
    if (o.key === 'o') opts = accumulateOptions(opts, o.value!, isValidOptionList);
    else if (o.key === 'f') fmt = o.value;
    else if (o.key === 't') cache = o.value!;
    else if (o.key === 'p') progress = true;
    else if (o.key === 'q') quiet = true;
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'force') force = true;
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  if (opts === undefined) throw usageError('Must specify options (-o)');
  if (quiet) progress = false;
  const prog = createProgress(ctx, progress, 1.0);
  try {
    return await withGraph(ctx, async (graph) => {
      if (fmt !== undefined && hasHelpOption(opts!)) {
        const d = formatDriver(graph, fmt);
        if (!supportsAmend(d)) throw new CliError(`Format driver '${fmt}' does not support option amendment`);
        ctx.out(amendHelp(d));
        return 0;
      }
      if (operands.length !== 1) throw new CliError('Expecting one image file name');
      const cacheMode = parseCacheMode(cache);
      if (!cacheMode) throw new CliError(`Invalid cache option: ${cache}`);
      const img = await openImage(ctx, graph, { filename: operands[0]!, format: fmt, imageOpts, readOnly: false, cache: cacheMode, quiet });
      const node = img.image;
      const d = node.driver as Amendable;
      if (hasHelpOption(opts!)) {
        if (!node.impl.amend) throw new CliError(`Format driver '${d.name}' does not support option amendment`);
        ctx.out(amendHelp(d));
        return 0;
      }
      if (!node.impl.amend) throw new CliError(`Format driver '${d.name}' does not support option amendment`);
      const entries = parseAmendOptions(d, opts!);
      prog.print(0, 0);
      const amendOpts: Record<string, unknown> = entriesToOptions(entries);
      if (force) amendOpts.force = true;
      try {
        await node.impl.amend!(amendOpts);
      } catch (e) {
        ctx.errorReported(e);
        // A driver's hint (QEMU's error_append_hint, e.g. "use rebase instead") follows the message.
        const hint = (e as { hint?: string }).hint;
        throw new CliError(oneLine(hint ? `${errMessage(e)} ${hint}` : errMessage(e)));
      }
      prog.print(100, 0);
      return 0;
    });
  } finally {
    prog.end();
  }
}
