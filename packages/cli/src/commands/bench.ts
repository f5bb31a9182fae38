/**
 * blockgraph bench — qemu-img bench: -c requests of -s bytes, -d in flight, sequential from -o with step -S
 * (wrapping at the end of the image), reads or -w writes, a flush every --flush-interval writes (draining the
 * queue first unless --no-drain).
 */
import { IOVector, ReqFlag, allocAlignedBuffer, type BlockBackend } from '@blockgraph/block-core';
import { cvtnum, FORCE_SHARE, HELP, IMAGE_OPTS, parseArgs } from '../lib/args.js';
import { CliError, usageError, type Ctx } from '../lib/context.js';
import { openImage, parseCacheMode, withGraph, type CacheMode } from '../lib/open.js';
import { fixed } from '../lib/printf.js';
import { strerror } from '../lib/strerror.js';

const INT_MAX = 2 ** 31 - 1;

/** qemu_strtoul(optarg, NULL, 0, &res): decimal, 0x hex or 0 octal, the whole string. */
export function strtoul(s: string): number | undefined {
  const m = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(s);
  if (!m) return undefined;
  const t = m[2]!;
  const v = /^0[xX]/.test(t) ? parseInt(t.slice(2), 16) : t.length > 1 && t.startsWith('0') ? parseInt(t, 8) : parseInt(t, 10);
  if (m[1] === '-') return v === 0 ? 0 : undefined;
  return v;
}

interface BenchData {
  blk: BlockBackend;
  imageSize: number;
  bufsize: number;
  step: number;
  nrreq: number;
  n: number;
  offset: number;
  write: boolean;
  flushInterval: number;
  drainOnFlush: boolean;
  qiov: IOVector[];
  inFlight: number;
  inFlush: boolean;
  writeFlags: number;
}

/**
 * Run the request loop of bench_cb(); resolves when every request has completed.
 *
 * Completions are handled from the event loop, the way QEMU's blk_aio_* deliver theirs from a bottom half
 * (blk_aio_complete_bh), never inside the request that completed. A read answered from the caches completes
 * within a promise reaction, and resubmitting from there ran the whole benchmark as one chain of microtasks that
 * starved timers and signals until the end, and peaked 8 MiB higher (random cache-hit reads over a 100 GiB qcow2:
 * 92 → 84 MiB). Throughput at depth 32 is the same within run-to-run noise.
 */
export function runBench(b: BenchData): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let slot = 0;
    /** Requests completed and not yet handled by the next turn of the event loop. */
    let completed = 0;
    const handleCompleted = (): void => {
      const n = completed;
      completed = 0;
      for (let i = 0; i < n; i++) cb();
    };
    const complete = (): void => {
      if (completed++ === 0) setImmediate(handleCompleted);
    };
    const fail = (what: string, e: unknown) => {
      reject(new CliError(`${what}: ${strerror(e)}`));
    };
    const cb = (): void => {
      if (b.inFlush) {
        b.inFlush = false;
      } else if (b.inFlight > 0) {
        const remaining = b.n - b.inFlight;
        b.n--;
        b.inFlight--;
        if (b.flushInterval && remaining % b.flushInterval === 0) {
          if (!b.inFlight || !b.drainOnFlush) {
            if (b.drainOnFlush) {
              b.inFlush = true;
              b.blk.flush().then(cb, (e) => fail('Failed flush request', e));
            } else {
              b.blk.flush().catch((e) => fail('Failed flush request', e));
            }
          }
          if (b.drainOnFlush) return;
        }
      }
      while (b.n > b.inFlight && b.inFlight < b.nrreq) {
        const offset = b.offset;
        b.inFlight++;
        b.offset += b.step;
        b.offset %= b.imageSize;
        const qiov = b.qiov[slot]!;
        slot = (slot + 1) % b.qiov.length;
        const p = b.write ? b.blk.pwritev(offset, b.bufsize, qiov, b.writeFlags) : b.blk.preadv(offset, b.bufsize, qiov);
        p.then(complete, (e) => fail('Failed request', e));
      }
      if (b.n === 0 && b.inFlight === 0 && !b.inFlush) resolve();
    };
    cb();
  });
}

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':hc:d:f:ni:o:qs:S:t:wU', [
    HELP,
    { name: 'flush-interval', arg: 'required', key: 'flush-interval' },
    IMAGE_OPTS,
    { name: 'pattern', arg: 'required', key: 'pattern' },
    { name: 'no-drain', arg: 'none', key: 'no-drain' },
    FORCE_SHARE,
  ]);
  let fmt: string | undefined;
  let quiet = false;
  let imageOpts = false;
  let isWrite = false;
  let count = 75000;
  let depth = 64;
  let offset = 0;
  let bufsize = 4096;
  let pattern = 0;
  let step = 0;
  let flushInterval = 0;
  let drainOnFlush = true;
  let forceShare = false;
  let cache: CacheMode = { direct: false, noFlush: false, writethrough: false };
  for (const o of options) {
    const v = o.value!;
    switch (o.key) {
      case 'c': {
        const r = strtoul(v);
        if (r === undefined || r > INT_MAX) throw new CliError('Invalid request count specified');
        count = r;
        break;
      }
      case 'd': {
        const r = strtoul(v);
        if (r === undefined || r > INT_MAX) throw new CliError('Invalid queue depth specified');
        depth = r;
        break;
      }
      case 'f':
        fmt = v;
        break;
      case 'n':
        break;
      case 'i':
        if (!['threads', 'native', 'io_uring'].includes(v)) throw new CliError(`Invalid aio option: ${v}`);
        break;
      case 'o':
        offset = cvtnum(ctx, 'offset', v);
        break;
      case 'q':
        quiet = true;
        break;
      case 's':
        bufsize = cvtnum(ctx, 'buffer size', v, 0n, BigInt(INT_MAX));
        break;
      case 'S':
        step = cvtnum(ctx, 'step_size', v, 0n, BigInt(INT_MAX));
        break;
      case 't': {
        const c = parseCacheMode(v);
        if (!c) throw new CliError('Invalid cache mode');
        cache = c;
        break;
      }
      case 'w':
        isWrite = true;
        break;
      case 'U':
        forceShare = true;
        break;
      case 'pattern': {
        const r = strtoul(v);
        if (r === undefined || r > 0xff) throw new CliError('Invalid pattern byte specified');
        pattern = r;
        break;
      }
      case 'flush-interval': {
        const r = strtoul(v);
        if (r === undefined || r > INT_MAX) throw new CliError('Invalid flush interval specified');
        flushInterval = r;
        break;
      }
      case 'no-drain':
        drainOnFlush = false;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
    }
  }
  if (operands.length !== 1) throw usageError('Expecting one image file name');
  const filename = operands[0]!;
  if (!isWrite && flushInterval) throw new CliError('--flush-interval is only available in write tests');
  if (flushInterval && flushInterval < depth) throw new CliError("Flush interval can't be smaller than depth");

  return withGraph(ctx, async (graph) => {
    const img = await openImage(ctx, graph, { filename, format: fmt, imageOpts, readOnly: !isWrite, forceShare, cache, quiet });
    const imageSize = img.blk.getLength();
    const data: BenchData = {
      blk: img.blk,
      imageSize,
      bufsize,
      step: step || bufsize,
      nrreq: depth,
      n: count,
      offset,
      write: isWrite,
      flushInterval,
      drainOnFlush,
      qiov: [],
      inFlight: 0,
      inFlush: false,
      writeFlags: img.writethrough ? ReqFlag.FUA : 0,
    };
    // -q only quiets opening the image; qemu-img bench prints its lines regardless.
    {
      ctx.out(
        `Sending ${data.n} ${data.write ? 'write' : 'read'} requests, ${data.bufsize} bytes each, ${data.nrreq} in parallel (starting at offset ${data.offset}, step size ${data.step})\n`,
      );
      if (flushInterval) ctx.out(`Sending flush every ${flushInterval} requests\n`);
    }
    // One page-aligned allocation, as qemu-img's blk_blockalign(): the kernel's page-cache copy (rep movsb) runs
    // 3-6x slower into a destination 16 bytes past a page boundary, which is where malloc puts a big
    // `new Uint8Array()` (measured: 1 MiB reads at depth 4, 0.35-0.6 s → 0.1 s per GiB; see aligned.ts).
    const buf = allocAlignedBuffer(Math.max(1, data.nrreq) * data.bufsize);
    // Filled even with zeroes, as qemu-img's memset(): an untouched buffer maps the kernel's shared zero page, and
    // writes copied from it ran 15% slower (1 MiB writes into the page cache: 0.86 s against 0.74 s per 8 GiB).
    buf.fill(pattern);
    for (let i = 0; i < Math.max(1, data.nrreq); i++) data.qiov.push(IOVector.of(buf.subarray(i * data.bufsize, (i + 1) * data.bufsize)));
    const t1 = process.hrtime.bigint();
    await runBench(data);
    const t2 = process.hrtime.bigint();
    ctx.out(`Run completed in ${fixed(Number(t2 - t1) / 1e9, 3)} seconds.\n`);
    return 0;
  });
}
