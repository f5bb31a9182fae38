/** blockgraph check — qemu-img check: exit 0 clean, 1 check failed, 2 corruptions, 3 leaks only, 63 unsupported. */
import { STRERROR, isBlockError, type BlockErrorCode, type BlockNode, type CheckFix, type CheckResult } from '@blockgraph/block-core';
import { FORCE_SHARE, HELP, IMAGE_OPTS, OBJECT, OUTPUT, parseArgs, parseOutputFormat } from '../lib/args.js';
import { CliError, PROGRAM, usageError, type Ctx } from '../lib/context.js';
import { openImage, parseCacheMode, withGraph } from '../lib/open.js';
import { fixed } from '../lib/printf.js';
import { toQemuJsonPretty, type QValue } from '../lib/qjson.js';
import { strerror } from '../lib/strerror.js';

type ImageCheck = Record<string, QValue | undefined>;

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':hf:r:T:qU', [
    HELP,
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'repair', arg: 'required', key: 'r' },
    OUTPUT,
    OBJECT,
    IMAGE_OPTS,
    FORCE_SHARE,
  ]);
  let fmt: string | undefined;
  let output: string | undefined;
  let fix: CheckFix = 'none';
  let cache = 'writeback';
  let quiet = false;
  let imageOpts = false;
  let forceShare = false;
  for (const o of options) {
    if (o.key === 'f') fmt = o.value;
    else if (o.key === 'r') {
      if (o.value === 'leaks') fix = 'leaks';
      else if (o.value === 'all') fix = 'all';
      else throw usageError(`Unknown option value for -r (expecting 'leaks' or 'all'): ${o.value}`);
    } else if (o.key === 'output') output = o.value;
    else if (o.key === 'T') cache = o.value!;
    else if (o.key === 'q') quiet = true;
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'U') forceShare = true;
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  if (operands.length !== 1) throw usageError('Expecting one image file name');
  const filename = operands[0]!;
  const format = parseOutputFormat(output);
  const cacheMode = parseCacheMode(cache);
  if (!cacheMode) throw new CliError(`Invalid source cache option: ${cache}`);

  return withGraph(ctx, async (graph) => {
    const img = await openImage(ctx, graph, {
      filename,
      format: fmt,
      imageOpts,
      readOnly: fix === 'none',
      forceShare,
      cache: cacheMode,
      check: true,
    });
    const node = img.image;
    if (!node.impl.check) {
      ctx.error('This image format does not support checks');
      return 63;
    }
    const indicator = startIndicator(ctx, quiet);
    let r: CheckResult;
    try {
      // The driver repairs and, when it repaired anything, checks again itself ("Double checking the fixed
      // image now..."): the result holds the second pass's counts and the first pass's fixed counts.
      r = await node.impl.check(fix);
    } catch (e) {
      indicator.clear();
      if (isBlockError(e, 'ENOTSUP')) {
        ctx.error('This image format does not support checks');
        return 63;
      }
      ctx.error(`Check failed: ${strerror(e)}`);
      return 1;
    }
    indicator.clear();
    // Lines qemu-img's error_report() prefixes with its name carry 'qemu-img: ' in the contract: ours is blockgraph.
    for (const m of r.messages) {
      const line = m.startsWith('qemu-img: ') ? `${PROGRAM}: ${m.slice('qemu-img: '.length)}` : m;
      ctx.err(line.endsWith('\n') ? line : `${line}\n`);
    }
    for (const n of r.notes ?? []) ctx.err(n.endsWith('\n') ? n : `${n}\n`);
    const failed = (r as CheckResult & { checkFailed?: BlockErrorCode }).checkFailed;
    const check = imageCheck(node, filename, r);
    if ((r.corruptionsFixed || r.leaksFixed) && format === 'human' && !quiet) {
      ctx.out(
        `The following inconsistencies were found and repaired:\n\n    ${r.leaksFixed} leaked clusters\n    ${r.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`,
      );
    }
    if (failed) {
      ctx.error(`Check failed: ${STRERROR[failed] ?? failed}`);
      return 1;
    }
    if (!quiet) ctx.out(format === 'human' ? dumpHuman(check) : `${toQemuJsonPretty(check)}\n`);
    if (r.checkErrors) {
      ctx.error('Check failed');
      return 1;
    }
    if (r.corruptions) return 2;
    if (r.leaks) return 3;
    return 0;
  });
}

/** collect_image_check(): the ImageCheck object (zero-valued optional counters are left out). */
function imageCheck(node: BlockNode, filename: string, r: CheckResult): ImageCheck {
  const nz = (v: number | undefined) => (v ? v : undefined);
  return {
    filename,
    format: node.driver.name,
    'check-errors': r.checkErrors,
    'image-end-offset': nz(r.imageEndOffset),
    corruptions: nz(r.corruptions),
    leaks: nz(r.leaks),
    'corruptions-fixed': nz(r.corruptionsFixed),
    'leaks-fixed': nz(r.leaksFixed),
    'total-clusters': nz(r.totalClusters),
    'allocated-clusters': nz(r.allocatedClusters),
    'fragmented-clusters': nz(r.fragmentedClusters),
    'compressed-clusters': nz(r.compressedClusters),
  };
}

/** dump_human_image_check(). */
function dumpHuman(c: ImageCheck): string {
  const n = (k: string) => Number(c[k] ?? 0);
  let s = '';
  if (!(n('corruptions') || n('leaks') || n('check-errors'))) {
    s += 'No errors were found on the image.\n';
  } else {
    if (n('corruptions')) {
      s += `\n${n('corruptions')} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    }
    if (n('leaks')) {
      s += `\n${n('leaks')} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    }
    if (n('check-errors')) s += `\n${n('check-errors')} internal errors have occurred during the check.\n`;
  }
  const total = n('total-clusters');
  const alloc = n('allocated-clusters');
  if (total !== 0 && alloc !== 0) {
    s += `${alloc}/${total} = ${fixed((alloc * 100.0) / total, 2)}% allocated, ${fixed((n('fragmented-clusters') * 100.0) / alloc, 2)}% fragmented, ${fixed(
      (n('compressed-clusters') * 100.0) / alloc,
      2,
    )}% compressed clusters\n`;
  }
  if (n('image-end-offset')) s += `Image end offset: ${n('image-end-offset')}\n`;
  return s;
}

/** On a terminal, a "Checking..." line while a long check runs (the driver reports no progress). */
function startIndicator(ctx: Ctx, quiet: boolean): { clear(): void } {
  if (quiet || !ctx.stdoutIsTTY) return { clear() {} };
  const t0 = Date.now();
  let shown = false;
  const timer = setInterval(() => {
    shown = true;
    ctx.out(`\rChecking image... ${Math.round((Date.now() - t0) / 1000)} s`);
  }, 1000);
  timer.unref?.();
  return {
    clear() {
      clearInterval(timer);
      if (shown) ctx.out(`\r${' '.repeat(40)}\r`);
      shown = false;
    },
  };
}
