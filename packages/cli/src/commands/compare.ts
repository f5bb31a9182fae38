/**
 * blockgraph compare — qemu-img compare: exit 0 identical, 1 different, 2 open error, 3 block status
 * failed, 4 read error. Images of different size are compared over the common part, and the longer one must
 * read as zeroes beyond it ("Warning: Image size mismatch!"); with -s that, and any allocation difference,
 * counts as different.
 */
import { BlockStatus, blockStatusAbove, type BlockBackend } from '@blockgraph/block-core';
import { FORCE_SHARE, HELP, IMAGE_OPTS, OBJECT, parseArgs } from '../lib/args.js';
import { CliError, usageError, type Ctx } from '../lib/context.js';
import { openImage, parseCacheMode, withGraph, type OpenedImage } from '../lib/open.js';
import { createProgress } from '../lib/progress.js';
import { strerror } from '../lib/strerror.js';

const IO_BUF_SIZE = 2 * 1024 * 1024;
const SECTOR = 512;
const f32 = Math.fround;


/** Exit with a code after printing (compare's own codes). */
class Done extends Error {
  constructor(readonly code: number) {
    super(String(code));
  }
}

function isZero(b: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (b[i] !== 0) return false;
  return true;
}

/** find_nonzero(): index of the first 512-byte sector holding a non-zero byte, or -1. */
export function findNonzero(buf: Uint8Array, n: number): number {
  const end = n - (n % SECTOR);
  let i = 0;
  for (; i < end; i += SECTOR) if (!isZero(buf, i, i + SECTOR)) return i;
  if (i < n && !isZero(buf, i, n)) return i;
  return -1;
}

function sectorEqual(a: Uint8Array, b: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** compare_buffers(): whether the first sector differs, and how far that stays so (in whole sectors). */
export function compareBuffers(a: Uint8Array, b: Uint8Array, bytes: number): { differ: boolean; pnum: number } {
  let i = Math.min(bytes, SECTOR);
  const differ = !sectorEqual(a, b, 0, i);
  while (i < bytes) {
    const len = Math.min(bytes - i, SECTOR);
    if (!sectorEqual(a, b, i, i + len) !== differ) break;
    i += len;
  }
  return { differ, pnum: i };
}

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':hf:F:T:pqsU', [HELP, OBJECT, IMAGE_OPTS, FORCE_SHARE]);
  let fmt1: string | undefined;
  let fmt2: string | undefined;
  let cache = 'writeback';
  let progress = false;
  let quiet = false;
  let strict = false;
  let imageOpts = false;
  let forceShare = false;
  for (const o of options) {
    if (o.key === 'f') fmt1 = o.value;
    else if (o.key === 'F') fmt2 = o.value;
    else if (o.key === 'T') cache = o.value!;
    else if (o.key === 'p') progress = true;
    else if (o.key === 'q') quiet = true;
    else if (o.key === 's') strict = true;
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'U') forceShare = true;
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  if (quiet) progress = false;
  if (operands.length !== 2) throw usageError('Expecting two image file names');
  const [filename1, filename2] = operands as [string, string];
  const say = (s: string) => {
    if (!quiet) ctx.out(s);
  };
  const prog = createProgress(ctx, progress, 2.0);
  try {
    return await withGraph(ctx, async (graph) => {
      const cacheMode = parseCacheMode(cache);
      if (!cacheMode) {
        ctx.error(`Invalid source cache option: ${cache}`);
        return 2;
      }
      let img1: OpenedImage;
      let img2: OpenedImage;
      try {
        img1 = await openImage(ctx, graph, { filename: filename1, format: fmt1, imageOpts, readOnly: true, forceShare, cache: cacheMode });
        img2 = await openImage(ctx, graph, { filename: filename2, format: fmt2, imageOpts, readOnly: true, forceShare, cache: cacheMode });
      } catch (e) {
        ctx.error((e as Error).message);
        return 2;
      }
      try {
        return await compareImages(img1, img2, filename1, filename2, strict, say, prog);
      } catch (e) {
        if (e instanceof Done) return e.code;
        throw e;
      }
    });
  } finally {
    prog.end();
  }

  async function compareImages(
    img1: OpenedImage,
    img2: OpenedImage,
    name1: string,
    name2: string,
    strictMode: boolean,
    out: (s: string) => void,
    p: ReturnType<typeof createProgress>,
  ): Promise<number> {
    const blk1 = img1.blk;
    const blk2 = img2.blk;
    const bs1 = img1.top;
    const bs2 = img2.top;
    const total1 = blk1.getLength();
    const total2 = blk2.getLength();
    const total = Math.min(total1, total2);
    const progressBase = Math.max(total1, total2);
    const buf1 = new Uint8Array(IO_BUF_SIZE);
    const buf2 = new Uint8Array(IO_BUF_SIZE);
    p.print(0, 100);
    if (strictMode && total1 !== total2) {
      out('Strict mode: Image size mismatch!\n');
      return 1;
    }
    const read = async (blk: BlockBackend, offset: number, bytes: number, buf: Uint8Array, name: string) => {
      try {
        await blk.pread(offset, buf.subarray(0, bytes));
      } catch (e) {
        ctx.error(`Error while reading offset ${offset} of ${name}: ${strerror(e)}`);
        throw new Done(4);
      }
    };
    const status = async (top: typeof bs1, offset: number, bytes: number, name: string) => {
      try {
        return await blockStatusAbove(top, undefined, false, true, offset, bytes);
      } catch {
        ctx.error(`Sector allocation test failed for ${name}`);
        throw new Done(3);
      }
    };
    const checkEmpty = async (blk: BlockBackend, offset: number, bytes: number, name: string) => {
      await read(blk, offset, bytes, buf1, name);
      const idx = findNonzero(buf1, bytes);
      if (idx >= 0) {
        out(`Content mismatch at offset ${offset + idx}!\n`);
        throw new Done(1);
      }
    };
    const step = (chunk: number) => p.print(f32(f32(f32(chunk) / f32(progressBase)) * 100), 100);

    let offset = 0;
    while (offset < total) {
      const s1 = await status(bs1, offset, total1 - offset, name1);
      const s2 = await status(bs2, offset, total2 - offset, name2);
      const allocated1 = (s1.ret & BlockStatus.ALLOCATED) !== 0;
      const allocated2 = (s2.ret & BlockStatus.ALLOCATED) !== 0;
      let chunk = Math.min(s1.pnum, s2.pnum);
      if (chunk <= 0) throw new CliError(`Unexpected end of image at offset ${offset}`);
      if (strictMode && s1.ret !== s2.ret) {
        out(`Strict mode: Offset ${offset} block status mismatch!\n`);
        return 1;
      }
      if (s1.ret & BlockStatus.ZERO && s2.ret & BlockStatus.ZERO) {
        // nothing to do
      } else if (allocated1 === allocated2) {
        if (allocated1) {
          chunk = Math.min(chunk, IO_BUF_SIZE);
          await read(blk1, offset, chunk, buf1, name1);
          await read(blk2, offset, chunk, buf2, name2);
          const r = compareBuffers(buf1, buf2, chunk);
          if (r.differ || r.pnum !== chunk) {
            out(`Content mismatch at offset ${offset + (r.differ ? 0 : r.pnum)}!\n`);
            return 1;
          }
        }
      } else {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        if (allocated1) await checkEmpty(blk1, offset, chunk, name1);
        else await checkEmpty(blk2, offset, chunk, name2);
      }
      offset += chunk;
      step(chunk);
    }

    if (total1 !== total2) {
      out('Warning: Image size mismatch!\n');
      const [over, overTop, overName] = total1 > total2 ? [blk1, bs1, name1] : [blk2, bs2, name2];
      while (offset < progressBase) {
        const s = await status(overTop, offset, progressBase - offset, overName);
        let chunk = s.pnum;
        if (s.ret & BlockStatus.ALLOCATED && !(s.ret & BlockStatus.ZERO)) {
          chunk = Math.min(chunk, IO_BUF_SIZE);
          await checkEmpty(over, offset, chunk, overName);
        }
        offset += chunk;
        step(chunk);
      }
    }
    out('Images are identical.\n');
    return 0;
  }
}
