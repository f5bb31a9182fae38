/**
 * blockgraph mirror — copy an image into a new (or, with -n, an existing) target through the mirror job, the
 * way drive-mirror does: the source opened as a node, a mirror node above it, the job copying in the chosen
 * copy mode until READY, then complete (pivot). Prints job states, and a progress bar with -p or on a terminal.
 */
import { isBlockError, type BlockNode, type GraphEvent } from '@blockgraph/block-core';
import { cvtnum, HELP, IMAGE_OPTS, parseArgs } from '../lib/args.js';
import { CliError, oneLine, usageError, type Ctx } from '../lib/context.js';
import { errMessage, openImage, withGraph } from '../lib/open.js';
import { createProgress } from '../lib/progress.js';
import { runBlockJob } from '../lib/run-block-job.js';
import { imgCreate } from './create.js';

const SYNC_MODES = ['full', 'top', 'none'] as const;
const COPY_MODES = ['background', 'write-blocking', 'read-write-blocking'] as const;
/**
 * The target file starts writeback after every 16 MiB copied (the file driver's writeback-ahead): the job flushes
 * the target before READY, and that flush then waits for the last few MiB instead of everything copied so far.
 */
const TARGET_WRITEBACK_AHEAD = 16 * 1024 * 1024;

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':f:O:nphq', [
    HELP,
    IMAGE_OPTS,
    { name: 'sync', arg: 'required', key: 'sync' },
    { name: 'copy-mode', arg: 'required', key: 'copy-mode' },
    { name: 'speed', arg: 'required', key: 'speed' },
    { name: 'granularity', arg: 'required', key: 'granularity' },
    { name: 'buf-size', arg: 'required', key: 'buf-size' },
  ]);
  let srcFmt: string | undefined;
  let dstFmt: string | undefined;
  let existing = false;
  let progress = false;
  let quiet = false;
  let imageOpts = false;
  let sync: (typeof SYNC_MODES)[number] = 'full';
  let copyMode: (typeof COPY_MODES)[number] = 'background';
  let speed = 0;
  let granularity = 0;
  let bufSize = 0;
  for (const o of options) {
    if (o.key === 'f') srcFmt = o.value;
    else if (o.key === 'O') dstFmt = o.value;
    else if (o.key === 'n') existing = true;
    else if (o.key === 'p') progress = true;
    else if (o.key === 'q') quiet = true;
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'sync') {
      if (!(SYNC_MODES as readonly string[]).includes(o.value!)) throw new CliError(`Invalid sync mode '${o.value}' (full, top or none)`);
      sync = o.value as typeof sync;
    } else if (o.key === 'copy-mode') {
      if (!(COPY_MODES as readonly string[]).includes(o.value!)) {
        throw new CliError(`Invalid copy mode '${o.value}' (background, write-blocking or read-write-blocking)`);
      }
      copyMode = o.value as typeof copyMode;
    } else if (o.key === 'speed') speed = cvtnum(ctx, 'speed', o.value!);
    else if (o.key === 'granularity') granularity = cvtnum(ctx, 'granularity', o.value!);
    else if (o.key === 'buf-size') bufSize = cvtnum(ctx, 'buffer size', o.value!);
  }
  if (operands.length !== 2) throw usageError('Expecting a source and a target file name');
  const [srcName, dstName] = operands as [string, string];
  const { startMirror, validateMirrorOptions } = await import('@blockgraph/job-mirror');
  // Argument errors come before anything is opened or created.
  try {
    validateMirrorOptions({ device: srcName, target: dstName, sync, copyMode, speed, granularity, bufSize });
  } catch (e) {
    throw new CliError(oneLine(errMessage(e)));
  }

  return withGraph(ctx, async (graph) => {
    const src = await openImage(ctx, graph, { filename: srcName, format: srcFmt, imageOpts, readOnly: false, quiet: true, discardUnmap: true });
    const source = src.image;
    // The backend stands in for the guest; the job itself needs none, but it is what the pivot moves.
    const size = source.totalBytes;
    const fmt = dstFmt ?? source.driver.name;
    let targetIsZero = false;
    if (!existing) {
      const backing = sync === 'full' ? undefined : sync === 'top' ? source.backing?.node : source;
      const backingName = backing ? describeFile(backing) : undefined;
      await imgCreate(ctx, graph, {
        filename: dstName,
        fmt,
        size,
        quiet,
        ...(backingName ? { baseFilename: backingName, baseFmt: backing!.skipFilters().driver.name } : {}),
      });
    }
    const dst = await openImage(ctx, graph, {
      filename: dstName,
      format: dstFmt ?? (existing ? undefined : fmt),
      readOnly: false,
      quiet: true,
      discardUnmap: true,
      fileOptions: { writebackAhead: TARGET_WRITEBACK_AHEAD },
      perm: 0,
      shared: 15,
    });
    const target = dst.image;
    // Our backend on the target was only for opening it: the job takes the target over.
    dst.blk.remove();
    if (!existing && sync === 'full') targetIsZero = target.impl.hasZeroInit?.() ?? false;

    const bar = createProgress(ctx, progress && !quiet, 1);
    let last = 0;
    // A progress line ends in \r; a state line that follows it starts on a fresh line.
    let barOpen = false;
    const say = (line: string): void => {
      if (quiet) return;
      ctx.out(`${barOpen ? '\n' : ''}${line}\n`);
      barOpen = false;
    };
    const off = graph.on((e: GraphEvent) => {
      if (e.event === 'JOB_STATUS_CHANGE') say(`Job '${e.data.id}' is ${e.data.status}`);
      else if (e.event === 'BLOCK_JOB_ERROR') say(`Job '${e.data.device}': ${e.data.operation} error, action ${e.data.action}`);
    });
    let job;
    const t0 = performance.now();
    try {
      job = await startMirror(graph, {
        jobId: 'mirror',
        device: source.nodeName,
        target: target.nodeName,
        sync,
        copyMode,
        speed,
        ...(granularity ? { granularity } : {}),
        ...(bufSize ? { bufSize } : {}),
        targetIsZero,
      });
    } catch (e) {
      off();
      throw new CliError(oneLine(errMessage(e)));
    }
    try {
      await runBlockJob(job, (pct) => {
        if (pct !== last) {
          // With max 0 the value is absolute (qemu_progress_print semantics).
          bar.print(pct, 0);
          barOpen = progress;
        }
        last = pct;
      });
    } finally {
      off();
      if (!job.error && last < 100) bar.print(100, 0);
      if (barOpen || !progress) bar.end();
    }
    if (job.error) throw new CliError(oneLine(job.error.message));
    if (!quiet) ctx.out(`Mirror completed in ${((performance.now() - t0) / 1000).toFixed(3)} seconds.\n`);
    src.blk.remove();
    return 0;
  }).catch((e: unknown) => {
    if (e instanceof CliError) throw e;
    throw new CliError(isBlockError(e) ? oneLine(e.message) : errMessage(e));
  });
}

/** The file name a new target records for its backing file. */
function describeFile(node: BlockNode): string {
  return node.filename ?? node.nodeName;
}
