/**
 * blockgraph rebase — qemu-img rebase -b BACKING [-F FMT] FILE. Safe mode copies into the image every range it
 * does not allocate itself where the old and the new backing chain differ, then points the image at the new
 * backing file; -u only changes the name. Changing the name needs the driver's changeBackingFile() or an
 * amend() that takes backingFile/backingFmt.
 */
import {
  isAllocated,
  isAllocatedAbove,
  resolveRelativeFilename,
  type BlockBackend,
  type BlockNode,
} from '@blockgraph/block-core';
import { FORCE_SHARE, HELP, IMAGE_OPTS, OBJECT, parseArgs } from '../lib/args.js';
import { CliError, usageError, type Ctx } from '../lib/context.js';
import { openImage, parseCacheMode, withGraph } from '../lib/open.js';
import { createProgress } from '../lib/progress.js';
import { compareBuffers } from './compare.js';
import { findBackingImage } from '../lib/backing-chain.js';
import { strerror } from '../lib/strerror.js';

const IO_BUF_SIZE = 2 * 1024 * 1024;

type WithChangeBacking = { changeBackingFile?(file: string | undefined, fmt: string | undefined): Promise<void> };

/** bdrv_change_backing_file(). */
async function changeBackingFile(node: BlockNode, file: string | undefined, fmt: string | undefined): Promise<void> {
  const impl = node.impl as typeof node.impl & WithChangeBacking;
  if (impl.changeBackingFile) return impl.changeBackingFile(file, fmt);
  const schema = node.driver.createOptions ?? {};
  if (impl.amend && 'backingFile' in schema) {
    return impl.amend({ backingFile: file ?? '', ...(fmt !== undefined ? { backingFmt: fmt } : {}) });
  }
  throw Object.assign(new Error('Operation not supported'), { code: 'ENOTSUP' });
}

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':hf:F:b:upt:T:qU', [HELP, OBJECT, IMAGE_OPTS, FORCE_SHARE]);
  let fmt: string | undefined;
  let outBasefmt: string | undefined;
  let outBaseimg: string | undefined;
  let unsafe = false;
  let progress = false;
  let cache = 'writeback';
  let srcCache = 'writeback';
  let quiet = false;
  let forceShare = false;
  let imageOpts = false;
  for (const o of options) {
    if (o.key === 'f') fmt = o.value;
    else if (o.key === 'F') outBasefmt = o.value;
    else if (o.key === 'b') outBaseimg = o.value;
    else if (o.key === 'u') unsafe = true;
    else if (o.key === 'p') progress = true;
    else if (o.key === 't') cache = o.value!;
    else if (o.key === 'T') srcCache = o.value!;
    else if (o.key === 'q') quiet = true;
    else if (o.key === 'U') forceShare = true;
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  if (quiet) progress = false;
  if (operands.length !== 1) throw usageError('Expecting one image file name');
  if (!unsafe && outBaseimg === undefined) throw usageError('Must specify backing file (-b) or use unsafe mode (-u)');
  const filename = operands[0]!;
  const prog = createProgress(ctx, progress, 2.0);
  prog.print(0, 100);
  try {
    return await withGraph(ctx, async (graph) => {
      const cacheMode = parseCacheMode(cache);
      if (!cacheMode) throw new CliError(`Invalid cache option: ${cache}`);
      const srcCacheMode = parseCacheMode(srcCache);
      if (!srcCacheMode) throw new CliError(`Invalid source cache option: ${srcCache}`);
      const img = await openImage(ctx, graph, { filename, format: fmt, imageOpts, readOnly: false, noBacking: unsafe, cache: cacheMode, quiet });
      const bs = img.top;
      const unfiltered = bs.skipFilters();
      if (outBasefmt !== undefined && !graph.registry.has(outBasefmt)) throw new CliError(`Invalid format name: '${outBasefmt}'`);

      if (!unsafe) {
        let oldBacking: BlockBackend | undefined;
        let newBacking: BlockBackend | undefined;
        let prefixChain: BlockNode | undefined;
        const base = unfiltered.backing?.node;
        if (base) oldBacking = graph.backend(base, { perm: 1, shared: 0xf });
        if (outBaseimg) {
          const real = resolveRelativeFilename(unfiltered.filename ?? filename, outBaseimg);
          prefixChain = findBackingImage(unfiltered, real);
          if (prefixChain) {
            newBacking = graph.backend(prefixChain, { perm: 1, shared: 0xf });
          } else {
            try {
              const nb = await openImage(ctx, graph, { filename: real, format: outBasefmt, readOnly: true, forceShare, cache: srcCacheMode, quiet: true });
              newBacking = nb.blk;
            } catch (e) {
              throw new CliError(`Could not open new backing file '${outBaseimg}': ${(e as Error).message.replace(/^Could not open '[^']*': /, '')}`);
            }
          }
        }
        const size = img.blk.getLength();
        const oldSize = oldBacking ? oldBacking.getLength() : 0;
        const newSize = newBacking ? newBacking.getLength() : 0;
        const bufOld = new Uint8Array(IO_BUF_SIZE);
        const bufNew = new Uint8Array(IO_BUF_SIZE);
        const localProgress = size !== 0 ? Math.fround(100 / Math.floor(size / Math.min(size, IO_BUF_SIZE))) : 0;
        let n: number;
        for (let offset = 0; offset < size; offset += n) {
          n = Math.min(IO_BUF_SIZE, size - offset);
          let bufOldIsZero = false;
          try {
            const a = await isAllocated(unfiltered, offset, n);
            n = a.pnum;
            if (a.allocated) continue;
            if (prefixChain) {
              const bytes = n;
              const b = await isAllocatedAbove(unfiltered.backing!.node, prefixChain, false, offset, n);
              n = b.pnum;
              if (!b.depth && n) continue;
              // Past the end of the old backing file (the image is longer): nothing to skip, and n = 0 would never
              // move on. The old backing reads as zeroes there, so compare and write as anywhere else (QEMU 8.2
              // fixed the same endless loop this way).
              if (!n) n = bytes;
            }
          } catch (e) {
            throw new CliError(`error while reading image metadata: ${strerror(e)}`);
          }
          if (offset >= oldSize || !oldBacking) {
            bufOld.fill(0, 0, n);
            bufOldIsZero = true;
          } else {
            if (offset + n > oldSize) n = oldSize - offset;
            try {
              await oldBacking.pread(offset, bufOld.subarray(0, n));
            } catch {
              throw new CliError('error while reading from old backing file');
            }
          }
          if (offset >= newSize || !newBacking) {
            bufNew.fill(0, 0, n);
          } else {
            if (offset + n > newSize) n = newSize - offset;
            try {
              await newBacking.pread(offset, bufNew.subarray(0, n));
            } catch {
              throw new CliError('error while reading from new backing file');
            }
          }
          let written = 0;
          while (written < n) {
            const r = compareBuffers(bufOld.subarray(written), bufNew.subarray(written), n - written);
            if (r.differ) {
              try {
                if (bufOldIsZero) await img.blk.pwriteZeroes(offset + written, r.pnum);
                else await img.blk.pwrite(offset + written, bufOld.subarray(written, written + r.pnum));
              } catch (e) {
                throw new CliError(`Error while writing to COW image: ${strerror(e)}`);
              }
            }
            written += r.pnum;
          }
          prog.print(localProgress, 100);
        }
        oldBacking?.remove();
        if (prefixChain) newBacking?.remove();
      }

      // bdrv_change_backing_file(..., require=true): a new backing file needs its format in the header.
      if (outBaseimg && !outBasefmt) {
        throw new CliError(`Could not change the backing file to '${outBaseimg}': backing format must be specified`);
      }
      try {
        if (outBaseimg) await changeBackingFile(unfiltered, outBaseimg, outBasefmt);
        else await changeBackingFile(unfiltered, undefined, undefined);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code === 'ENOSPC') throw new CliError(`Could not change the backing file to '${outBaseimg}': No space left in the file header`);
        throw new CliError(`Could not change the backing file to '${outBaseimg ?? ''}': ${strerror(e)}`);
      }
      prog.print(100, 0);
      return 0;
    });
  } finally {
    prog.end();
  }
}
