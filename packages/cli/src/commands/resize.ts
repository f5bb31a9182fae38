/** blockgraph resize — qemu-img resize: FILE [+|-]SIZE, --shrink to make smaller, --preallocation for growth. */
import { Perm, parseQemuSize, type PreallocMode } from '@blockgraph/block-core';
import { HELP, IMAGE_OPTS, OBJECT, parseArgs } from '../lib/args.js';
import { CliError, oneLine, usageError, type Ctx } from '../lib/context.js';
import { errMessage, openImage, withGraph } from '../lib/open.js';

const PREALLOC_MODES: readonly PreallocMode[] = ['off', 'metadata', 'falloc', 'full'];

/** A `size` option value (QemuOpts' parse_option_size): one line for the two-line QEMU message. */
export function parseSizeParam(name: string, value: string): number {
  const r = parseQemuSize(value);
  if (!r.ok && r.error === 'ERANGE') throw new CliError(`Value '${value}' is out of range for parameter '${name}'`);
  if (!r.ok) {
    throw new CliError(
      `Parameter '${name}' expects a non-negative number below 2^64 Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta- and exabytes, respectively.`,
    );
  }
  if (r.value > BigInt(Number.MAX_SAFE_INTEGER)) throw new CliError(`Value '${value}' is out of range for parameter '${name}'`);
  return Number(r.value);
}

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  // The size comes off the end first, so that "-1G" is not taken for an option.
  if (argv.length < 2) throw usageError('Not enough arguments');
  const args = [...argv];
  let size = args.pop()!;
  const { options, operands } = parseArgs(args, ':f:hq', [
    HELP,
    OBJECT,
    IMAGE_OPTS,
    { name: 'preallocation', arg: 'required', key: 'preallocation' },
    { name: 'shrink', arg: 'none', key: 'shrink' },
  ]);
  let fmt: string | undefined;
  let quiet = false;
  let imageOpts = false;
  let prealloc: PreallocMode = 'off';
  let shrink = false;
  for (const o of options) {
    if (o.key === 'f') fmt = o.value;
    else if (o.key === 'q') quiet = true;
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'shrink') shrink = true;
    else if (o.key === 'preallocation') {
      if (!PREALLOC_MODES.includes(o.value as PreallocMode)) throw new CliError(`Invalid preallocation mode '${o.value}'`);
      prealloc = o.value as PreallocMode;
    } else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  if (operands.length !== 1) throw usageError('Expecting image file name and size');
  const filename = operands[0]!;
  let relative = 0;
  if (size.startsWith('+')) {
    relative = 1;
    size = size.slice(1);
  } else if (size.startsWith('-')) {
    relative = -1;
    size = size.slice(1);
  }
  const n = parseSizeParam('size', size);

  return withGraph(ctx, async (graph) => {
    const img = await openImage(ctx, graph, { filename, format: fmt, imageOpts, readOnly: false, quiet, perm: Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE });
    const current = img.blk.getLength();
    const total = relative ? current + n * relative : n;
    if (total <= 0) throw new CliError('New image size must be positive');
    if (total <= current && prealloc !== 'off') throw new CliError('Preallocation can only be used for growing images');
    if (total < current && !shrink) {
      ctx.error('Use the --shrink option to perform a shrink operation.');
      ctx.warn(
        "Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
      );
      return 1;
    }
    try {
      await img.blk.truncate(total, true, prealloc);
    } catch (e) {
      throw new CliError(oneLine(errMessage(e)));
    }
    if (!quiet) ctx.out('Image resized.\n');
    return 0;
  });
}
