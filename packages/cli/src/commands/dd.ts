/**
 * blockgraph dd — qemu-img dd: copy an image, or `count` blocks of `bs` bytes from block `skip` on, into a new
 * image of format -O (raw by default). As in qemu-img, every block is read and written (no sparse detection), the
 * operands are checked in order, and a skip past the end makes an empty image with a warning.
 */
import { INT64_MAX, Perm } from '@blockgraph/block-core';
import { cvtnum, cvtnumBig, FORCE_SHARE, HELP, IMAGE_OPTS, OBJECT, parseArgs } from '../lib/args.js';
import { CliError, oneLine, type Ctx } from '../lib/context.js';
import { errMessage, openImage, withGraph } from '../lib/open.js';
import { formatDriver } from './create.js';
import { strerror } from '../lib/strerror.js';

const SECTOR = 512;
const INT_MAX = 2 ** 31 - 1;

interface DdOperands {
  bs: number;
  /** Up to INT64_MAX, as qemu-img takes them (`count=1E` copies the whole image). */
  count?: bigint;
  skip?: bigint;
  input?: string;
  output?: string;
}

/** The `name=value` operands, each checked as it comes (qemu-img reports the first bad one). */
function parseOperands(ctx: Ctx, operands: readonly string[]): DdOperands {
  const dd: DdOperands = { bs: 512 };
  for (const arg of operands) {
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg : arg.slice(0, eq);
    const value = arg.slice(eq + 1);
    if (eq < 0) throw new CliError(`unrecognized operand ${arg}`);
    if (name === 'bs') dd.bs = cvtnum(ctx, 'bs', value, 1n, BigInt(INT_MAX));
    else if (name === 'count') dd.count = cvtnumBig(ctx, 'count', value);
    else if (name === 'skip') dd.skip = cvtnumBig(ctx, 'skip', value);
    else if (name === 'if') dd.input = value;
    else if (name === 'of') dd.output = value;
    else throw new CliError(`unrecognized operand ${name}`);
  }
  return dd;
}

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':hf:O:U', [HELP, OBJECT, IMAGE_OPTS, FORCE_SHARE]);
  let fmt: string | undefined;
  let outFmt = 'raw';
  let imageOpts = false;
  let forceShare = false;
  for (const o of options) {
    if (o.key === 'f') fmt = o.value;
    else if (o.key === 'O') outFmt = o.value!;
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'U') forceShare = true;
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  const dd = parseOperands(ctx, operands);
  if (dd.input === undefined || dd.output === undefined) throw new CliError('Must specify both input and output files');
  const { input, output, bs } = dd;

  return withGraph(ctx, async (graph) => {
    const src = await openImage(ctx, graph, { filename: input, format: fmt, imageOpts, readOnly: true, forceShare, quiet: true });
    if (!graph.registry.has(outFmt)) throw new CliError('Unknown file format');
    const drv = formatDriver(graph, outFmt);
    if (!drv.create || !drv.createOptions) throw new CliError(`Format driver '${outFmt}' does not support image creation`);

    // blk_getlength() counts whole sectors: a 1000-byte raw input is 1024 bytes long here, as in qemu-img.
    let size = Math.ceil(src.blk.getLength() / SECTOR) * SECTOR;
    const bsBig = BigInt(bs);
    if (dd.count !== undefined && dd.count <= INT64_MAX / bsBig && BigInt(size) > dd.count * bsBig) size = Number(dd.count * bsBig);
    // Overflow means the offset is beyond the input's end, as in qemu-img.
    const skipPastEnd = dd.skip !== undefined && (dd.skip > INT64_MAX / bsBig || BigInt(size) < dd.skip * bsBig);
    const skipBytes = dd.skip === undefined || skipPastEnd ? 0 : Number(dd.skip * bsBig);
    try {
      await graph.createImage(outFmt, { filename: output, size: skipPastEnd ? 0 : size - skipBytes });
    } catch (e) {
      throw new CliError(`${output}: error while creating output image: ${oneLine(errMessage(e))}`);
    }
    const dst = await openImage(ctx, graph, { filename: output, format: outFmt, readOnly: false, quiet: true, perm: Perm.CONSISTENT_READ | Perm.WRITE });

    let inPos = skipBytes;
    if (skipPastEnd) {
      ctx.error(`${input}: cannot skip to specified offset`);
      inPos = size;
    }
    const inBytes = src.blk.getLength();
    const buf = new Uint8Array(bs);
    for (let outPos = 0; inPos < size; ) {
      const n = Math.min(bs, size - inPos);
      const block = buf.subarray(0, n);
      // The sector-rounded tail past an input's exact length reads as zeroes.
      const avail = Math.max(0, Math.min(n, inBytes - inPos));
      try {
        if (avail > 0) await src.blk.pread(inPos, block.subarray(0, avail));
        block.fill(0, avail);
      } catch (e) {
        throw new CliError(`error while reading from input image file: ${strerror(e)}`);
      }
      inPos += n;
      try {
        await dst.blk.pwrite(outPos, block);
      } catch (e) {
        throw new CliError(`error while writing to output image file: ${strerror(e)}`);
      }
      outPos += n;
    }
    await dst.blk.flush();
    return 0;
  });
}
