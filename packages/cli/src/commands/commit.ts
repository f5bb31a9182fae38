/**
 * blockgraph commit — qemu-img commit: copy what an overlay holds into its backing file (or, with -b, into a
 * deeper image of its chain) through an active commit job, then empty the overlay unless -d (or -b) keeps it.
 */
import { isBlockError, Perm, PERM_ALL } from '@blockgraph/block-core';
import { cvtnum, HELP, IMAGE_OPTS, OBJECT, parseArgs } from '../lib/args.js';
import { CliError, oneLine, usageError, type Ctx } from '../lib/context.js';
import { findBackingImage } from '../lib/backing-chain.js';
import { errMessage, openImage, parseCacheMode, withGraph } from '../lib/open.js';
import { createProgress } from '../lib/progress.js';
import { runBlockJob } from '../lib/run-block-job.js';
import { strerror } from '../lib/strerror.js';

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':f:ht:b:dpqr:', [HELP, OBJECT, IMAGE_OPTS]);
  let fmt: string | undefined;
  let cache = 'writeback';
  let base: string | undefined;
  let drop = false;
  let progress = false;
  let quiet = false;
  let rateLimit = 0;
  let imageOpts = false;
  for (const o of options) {
    if (o.key === 'f') fmt = o.value;
    else if (o.key === 't') cache = o.value!;
    else if (o.key === 'b') {
      // -b implies -d: the image between may still be needed by the other images above the base.
      base = o.value;
      drop = true;
    } else if (o.key === 'd') drop = true;
    else if (o.key === 'p') progress = true;
    else if (o.key === 'q') quiet = true;
    else if (o.key === 'r') rateLimit = cvtnum(ctx, 'rate limit', o.value!);
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  if (quiet) progress = false;
  if (operands.length !== 1) throw usageError('Expecting one image file name');
  const filename = operands[0]!;
  const cacheMode = parseCacheMode(cache);
  if (!cacheMode) throw new CliError(`Invalid cache option: ${cache}`);
  const { startCommit } = await import('@blockgraph/job-mirror');

  return withGraph(ctx, async (graph) => {
    const img = await openImage(ctx, graph, { filename, format: fmt, imageOpts, readOnly: false, cache: cacheMode, discardUnmap: true, quiet });
    const top = img.image;
    const bar = createProgress(ctx, progress, 1);
    bar.print(0, 100);
    let failure: string | undefined;
    try {
      const baseNode = base !== undefined ? findBackingImage(top, base) : top.backingChainNext();
      if (!baseNode) {
        throw new CliError(base !== undefined ? `Did not find '${base}' in the backing chain of '${filename}'` : 'Image does not have a backing file');
      }
      const job = await startCommit(graph, { jobId: 'commit', device: top.nodeName, base: baseNode.nodeName, speed: rateLimit });
      await runBlockJob(job, (percent) => bar.print(percent, 0));
      if (job.error) throw new CliError(`Block job failed: ${strerror(job.error)}`);
      bar.print(100, 0);
      if (!drop) {
        const be = graph.backend(top, { perm: Perm.WRITE, shared: PERM_ALL });
        try {
          await be.makeEmpty();
        } catch (e) {
          if (!(isBlockError(e) && e.code === 'ENOTSUP')) throw e;
        } finally {
          be.remove();
        }
      }
    } catch (e) {
      failure = e instanceof CliError ? e.message : oneLine(errMessage(e));
    } finally {
      bar.end();
    }
    if (failure !== undefined) throw new CliError(failure);
    if (!quiet) ctx.out('Image committed.\n');
    return 0;
  });
}
