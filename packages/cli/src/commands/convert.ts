/**
 * blockgraph convert — qemu-img convert: one or more sources (concatenated) into a new or existing (-n)
 * target. The algorithm is qemu-img's (convert_iteration_sectors / convert_co_do_copy): block status of the
 * source splits the disk into data, zero and backing runs; up to -m requests (default 8) of up to 2 MiB (or
 * the target's optimal transfer size) are in flight; data buffers are scanned for zeroes at -S granularity
 * (default 4 KiB) so that zero runs stay unallocated; writes happen in order unless -W.
 */
import {
  BlockStatus,
  IOVector,
  ReqFlag,
  allocAlignedBuffer,
  blockStatusAbove,
  type BlockBackend,
  type BlockDriver,
  type BlockNode,
} from '@blockgraph/block-core';
import { accumulateOptions, cvtnum, FORCE_SHARE, HELP, IMAGE_OPTS, OBJECT, parseArgs } from '../lib/args.js';
import { CliError, ExitCode, oneLine, type Ctx } from '../lib/context.js';
import { blockOptionHelp, createOptionList, entriesToOptions, parseCreateOptions } from '../lib/create-opts.js';
import { formatDriver } from './create.js';
import { driverInfo } from '../lib/image-info.js';
import { errMessage, openImage, parseCacheMode, withGraph, type OpenedImage } from '../lib/open.js';
import { createProgress, type Progress } from '../lib/progress.js';
import { hasHelpOption, isValidOptionList } from '../lib/qemu-opts.js';
import { addSnapshotParam, hasSnapshotParam, loadSnapshotParam, type SnapshotParam } from '../lib/snapshot-param.js';
import { strerror } from '../lib/strerror.js';

const SECTOR = 512;
const IO_BUF_SIZE = 2 * 1024 * 1024;
const MAX_BUF_SECTORS = 32768;
const MAX_COROUTINES = 16;
/** BDRV_REQUEST_MAX_SECTORS: (2^31 - 512) / 512 */
const REQUEST_MAX_SECTORS = Math.floor((2 ** 31 - 512) / SECTOR);

const enum Status {
  DATA,
  ZERO,
  BACKING_FILE,
}

export interface ConvertSource {
  blk: BlockBackend;
  top: BlockNode;
  /** Exact length in bytes. */
  bytes: number;
  sectors: number;
  /** In sectors: request alignment and cluster size of the source. */
  alignment: number;
}

export interface ConvertOptions {
  sources: ConvertSource[];
  target: BlockBackend;
  targetNode: BlockNode;
  /** In sectors; 0 = fully allocate. */
  minSparse: number;
  numCoroutines: number;
  wrInOrder: boolean;
  compressed: boolean;
  targetHasBacking: boolean;
  targetIsNew: boolean;
  hasZeroInit: boolean;
  writethrough: boolean;
  progress: Progress;
  /** Bytes per second, 0 = unlimited. */
  rateLimit: number;
  /** -C: copy data without a buffer where the graph can (falls back to reading and writing at the first failure). */
  copyRange: boolean;
  /**
   * --salvage: read errors cost only the sectors that fail (read as zeroes, with a warning each), and block status
   * errors only their sector (treated as data); `warn` prints the warnings (nothing with -q).
   */
  salvage: boolean;
  warn: (message: string) => void;
  /**
   * A failed read, write or block-status lookup in a worker, printed as it happens (also with -q), as qemu-img's
   * error_report(): every worker whose request fails says so, not just the first, and the run then exits 1.
   */
  error: (message: string) => void;
}

/** A tiny async mutex (qemu_co_mutex). */
class Mutex {
  private locked = false;
  private readonly waiters: (() => void)[] = [];
  async lock(): Promise<void> {
    while (this.locked) await new Promise<void>((r) => this.waiters.push(r));
    this.locked = true;
  }
  unlock(): void {
    this.locked = false;
    this.waiters.shift()?.();
  }
}

/** The copy engine: ImgConvertState and its functions. */
export class Converter {
  private readonly src: ConvertSource[];
  private readonly totalSectors: number;
  private readonly target: BlockBackend;
  private readonly minSparse: number;
  private bufSectors: number;
  private readonly alignment: number;
  private readonly clusterSectors: number;
  private readonly compressed: boolean;
  private readonly targetHasBacking: boolean;
  private readonly targetBackingSectors: number;
  private hasZeroInit: boolean;
  private readonly wrInOrder: boolean;
  private readonly numCoroutines: number;
  private readonly writeFlags: number;
  private readonly progress: Progress;
  private copyRange: boolean;
  private readonly salvage: boolean;
  private readonly warn: (message: string) => void;
  private readonly error: (message: string) => void;

  private status: Status = Status.DATA;
  private sectorNextStatus = 0;
  private sectorNum = 0;
  private allocatedSectors = 0;
  private allocatedDone = 0;
  private wrOffs = 0;
  private ret: unknown = null;
  private readonly lockM = new Mutex();
  private readonly orderWaiters = new Map<number, () => void>();
  private readonly rate: { limit: number; start: number; bytes: number };

  constructor(o: ConvertOptions) {
    this.src = o.sources;
    this.totalSectors = o.sources.reduce((n, s) => n + s.sectors, 0);
    this.target = o.target;
    this.minSparse = o.minSparse;
    this.wrInOrder = o.wrInOrder;
    this.numCoroutines = o.numCoroutines;
    this.progress = o.progress;
    this.copyRange = o.copyRange;
    this.salvage = o.salvage;
    this.warn = o.warn;
    this.error = o.error;
    this.targetHasBacking = o.targetHasBacking;
    this.writeFlags = o.writethrough ? ReqFlag.FUA : 0;
    this.rate = { limit: o.rateLimit, start: Date.now(), bytes: 0 };
    const out = o.targetNode;
    const info = driverInfo(out);
    this.clusterSectors = info?.clusterSize ? Math.floor(info.clusterSize / SECTOR) : 0;
    this.compressed = o.compressed;
    // Bigger buffers when the target prefers them (optimal transfer, discard alignment), at most 16 MiB.
    this.bufSectors = Math.min(
      MAX_BUF_SECTORS,
      Math.max(IO_BUF_SIZE / SECTOR, Math.max(Math.floor(out.limits.optTransfer / SECTOR), Math.floor(out.limits.pdiscardAlignment / SECTOR))),
    );
    // Align write requests to the target to avoid read-modify-write.
    this.alignment = Math.max(pow2floor(this.minSparse), Math.ceil(out.limits.requestAlignment / SECTOR));
    const backing = out.backing?.node;
    this.targetBackingSectors = o.targetHasBacking && o.targetIsNew && backing ? Math.ceil(backing.totalBytes / SECTOR) : -1;
    this.hasZeroInit = o.hasZeroInit;
    if (!this.hasZeroInit && o.targetIsNew && this.minSparse && !o.targetHasBacking) {
      this.hasZeroInit = out.impl.hasZeroInit?.() ?? false;
    }
  }

  private selectPart(sectorNum: number): { index: number; offset: number } {
    let offset = 0;
    for (let i = 0; i < this.src.length; i++) {
      if (sectorNum < offset + this.src[i]!.sectors) return { index: i, offset };
      offset += this.src[i]!.sectors;
    }
    return { index: this.src.length - 1, offset: offset - this.src[this.src.length - 1]!.sectors };
  }

  /** convert_iteration_sectors(): how many sectors from here share one status (sets this.status). */
  private async iterationSectors(sectorNum: number): Promise<number> {
    const part = this.selectPart(sectorNum);
    let n = Math.min(this.totalSectors - sectorNum, REQUEST_MAX_SECTORS);
    let postBackingZero = false;
    if (this.targetBackingSectors >= 0) {
      if (sectorNum >= this.targetBackingSectors) postBackingZero = true;
      else if (sectorNum + n > this.targetBackingSectors) n = this.targetBackingSectors - sectorNum;
    }
    if (this.sectorNextStatus <= sectorNum) {
      const src = this.src[part.index]!;
      const offset = (sectorNum - part.offset) * SECTOR;
      const base = this.targetHasBacking ? src.top.skipFilters().backing?.node : undefined;
      let ret: number;
      let count: number;
      const avail = src.bytes - offset;
      if (avail <= 0) {
        // The sub-sector tail of a source whose length is not a multiple of 512: reads as zeroes.
        ret = BlockStatus.ZERO | BlockStatus.ALLOCATED;
        count = n * SECTOR;
      } else {
        for (;;) {
          try {
            const r = await blockStatusAbove(src.top, base, false, true, offset, Math.min(n * SECTOR, avail));
            ret = r.ret;
            count = r.pnum;
            break;
          } catch (e) {
            if (!this.salvage) throw new CliError(`error while reading block status at offset ${offset}: ${strerror(e)}`);
            if (n > 1) {
              // Narrow down to the failing sector, a quarter at a time.
              n = Math.ceil(n / 4);
              continue;
            }
            this.warn(`error while reading block status at offset ${offset}: ${strerror(e)}`);
            // Just try to read the data, then.
            ret = BlockStatus.DATA;
            count = SECTOR;
            break;
          }
        }
      }
      n = Math.ceil(count / SECTOR);
      // Keep sectorNextStatus aligned to the source's request alignment / cluster size.
      const tail = (sectorNum - part.offset + n) % src.alignment;
      if (n > tail) n -= tail;
      if (ret & BlockStatus.ZERO) this.status = postBackingZero ? Status.BACKING_FILE : Status.ZERO;
      else if (ret & BlockStatus.DATA) this.status = Status.DATA;
      else this.status = this.targetHasBacking ? Status.BACKING_FILE : Status.DATA;
      this.sectorNextStatus = sectorNum + n;
    }
    n = Math.min(n, this.sectorNextStatus - sectorNum);
    if (this.status === Status.DATA) n = Math.min(n, this.bufSectors);
    // Compressed images need whole clusters.
    if (this.compressed) {
      if (n < this.clusterSectors) {
        n = Math.min(this.clusterSectors, this.totalSectors - sectorNum);
        this.status = Status.DATA;
      } else {
        n = n - (n % this.clusterSectors);
      }
    }
    return n;
  }

  /** convert_co_read(): across source boundaries if need be. */
  private async read(sectorNum: number, nbSectors: number, buf: Uint8Array): Promise<void> {
    let pos = 0;
    // With --salvage, after a failed read: sector by sector up to here.
    let singleReadUntil = 0;
    while (nbSectors > 0) {
      const part = this.selectPart(sectorNum);
      const src = this.src[part.index]!;
      let n = Math.min(nbSectors, src.sectors - (sectorNum - part.offset));
      const offset = (sectorNum - part.offset) * SECTOR;
      if (singleReadUntil > offset) n = 1;
      const want = n * SECTOR;
      const avail = Math.max(0, Math.min(want, src.bytes - offset));
      try {
        if (avail > 0) await src.blk.pread(offset, buf.subarray(pos, pos + avail));
      } catch (e) {
        if (!this.salvage) throw e;
        if (n > 1) {
          singleReadUntil = offset + want;
          continue;
        }
        this.warn(`error while reading offset ${offset}: ${strerror(e)}`);
        buf.fill(0, pos, pos + want);
      }
      if (avail < want) buf.fill(0, pos + avail, pos + want);
      sectorNum += n;
      nbSectors -= n;
      pos += want;
    }
  }

  /** convert_co_write(). */
  private async write(sectorNum: number, nbSectors: number, buf: Uint8Array, status: Status, words: Uint32Array): Promise<void> {
    let pos = 0;
    while (nbSectors > 0) {
      let n = nbSectors;
      let doZero = false;
      if (status === Status.BACKING_FILE) {
        // Leave it unallocated: the backing file shows through.
      } else if (status === Status.DATA) {
        let write = !this.minSparse;
        if (!write && !this.compressed) {
          const r = isAllocatedSectorsMin(words, pos / SECTOR, n, this.minSparse, sectorNum, this.alignment);
          n = r.pnum;
          write = r.allocated;
        } else if (!write && this.compressed) {
          write = !isZeroWords(words, pos / 4, (n * SECTOR) / 4);
        }
        if (write) {
          const data = buf.subarray(pos, pos + n * SECTOR);
          await this.throttle(data.length);
          if (this.compressed) await this.target.pwritevCompressed(sectorNum * SECTOR, data.length, IOVector.of(data));
          else await this.target.pwrite(sectorNum * SECTOR, data, this.writeFlags);
        } else {
          doZero = true;
        }
      } else {
        doZero = true;
      }
      if (doZero && !this.hasZeroInit) {
        await this.target.pwriteZeroes(sectorNum * SECTOR, n * SECTOR, ReqFlag.MAY_UNMAP | this.writeFlags);
      }
      sectorNum += n;
      nbSectors -= n;
      pos += n * SECTOR;
    }
  }

  /** convert_co_copy_range(): across source boundaries if need be. */
  private async copy(sectorNum: number, nbSectors: number): Promise<void> {
    while (nbSectors > 0) {
      const part = this.selectPart(sectorNum);
      const src = this.src[part.index]!;
      const n = Math.min(nbSectors, src.sectors - (sectorNum - part.offset));
      await this.throttle(n * SECTOR);
      await src.blk.copyRange((sectorNum - part.offset) * SECTOR, this.target, sectorNum * SECTOR, n * SECTOR);
      sectorNum += n;
      nbSectors -= n;
    }
  }

  private async throttle(bytes: number): Promise<void> {
    const r = this.rate;
    if (!r.limit) return;
    r.bytes += bytes;
    const due = r.start + (r.bytes / r.limit) * 1000;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((res) => setTimeout(res, wait));
  }

  /** A worker's request failed: it says so at once, as each failing worker does in qemu-img; the run then exits 1. */
  private fail(message: string): void {
    this.error(message);
    this.ret ??= new ExitCode(1);
  }

  /** convert_co_do_copy(): one worker. */
  private async worker(): Promise<void> {
    // Page-aligned as qemu-img's blk_blockalign(): the file driver then copies straight into it (see bench.ts).
    const buf = allocAlignedBuffer(this.bufSectors * SECTOR);
    const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >> 2);
    for (;;) {
      await this.lockM.lock();
      if (this.ret !== null || this.sectorNum >= this.totalSectors) {
        this.lockM.unlock();
        break;
      }
      let n: number;
      let sectorNum: number;
      let status: Status;
      try {
        n = await this.iterationSectors(this.sectorNum);
        sectorNum = this.sectorNum;
        status = this.status;
        if (!this.minSparse && this.status === Status.ZERO) n = Math.min(n, this.bufSectors);
        this.sectorNum += n;
      } catch (e) {
        if (e instanceof CliError) this.fail(e.message);
        else this.ret ??= e;
        this.lockM.unlock();
        break;
      }
      this.lockM.unlock();

      if (status === Status.DATA || (!this.minSparse && status === Status.ZERO)) {
        this.allocatedDone += n;
        this.progress.print((100.0 * this.allocatedDone) / this.allocatedSectors, 0);
      }
      for (;;) {
        const copy = this.copyRange && status === Status.DATA;
        if (status === Status.DATA && !copy) {
          try {
            await this.read(sectorNum, n, buf);
          } catch (e) {
            this.fail(`error while reading at byte ${sectorNum * SECTOR}: ${strerror(e)}`);
          }
        } else if (!this.minSparse && status === Status.ZERO) {
          status = Status.DATA;
          buf.fill(0, 0, n * SECTOR);
        }
        if (this.wrInOrder) {
          // Keep writes in order.
          while (this.wrOffs !== sectorNum && this.ret === null) {
            await new Promise<void>((r) => this.orderWaiters.set(sectorNum, r));
          }
          this.orderWaiters.delete(sectorNum);
        }
        if (this.ret === null) {
          if (copy) {
            try {
              await this.copy(sectorNum, n);
            } catch {
              // As qemu-img: any failure ends offloading for the rest of the run, and this chunk is copied again
              // through the buffer (chunks already offloading finish as they are).
              this.copyRange = false;
              continue;
            }
          } else {
            try {
              await this.write(sectorNum, n, buf, status, words);
            } catch (e) {
              this.fail(`error while writing at byte ${sectorNum * SECTOR}: ${strerror(e)}`);
            }
          }
        }
        break;
      }
      if (this.wrInOrder) {
        this.wrOffs = sectorNum + n;
        const w = this.orderWaiters.get(this.wrOffs);
        if (w) w();
        if (this.ret !== null) for (const x of this.orderWaiters.values()) x();
      }
    }
    if (this.ret !== null) for (const x of this.orderWaiters.values()) x();
  }

  /** convert_do_copy(). */
  async run(): Promise<void> {
    if (this.compressed) {
      if (this.clusterSectors <= 0 || this.clusterSectors > this.bufSectors) throw new CliError('invalid cluster size');
      this.bufSectors = this.clusterSectors;
    }
    // Count the sectors to copy (for progress).
    let sectorNum = 0;
    while (sectorNum < this.totalSectors) {
      const n = await this.iterationSectors(sectorNum);
      if (this.status === Status.DATA || (!this.minSparse && this.status === Status.ZERO)) this.allocatedSectors += n;
      sectorNum += n;
    }
    this.sectorNextStatus = 0;
    const workers: Promise<void>[] = [];
    for (let i = 0; i < this.numCoroutines; i++) workers.push(this.worker());
    await Promise.all(workers);
    if (this.ret !== null) throw this.ret;
    if (this.compressed) {
      // "Signal EOF to align": a zero-length compressed write lets the format align the end of its file.
      await this.target.pwritevCompressed(0, 0, new IOVector([]));
    }
  }
}


function pow2floor(n: number): number {
  if (n <= 0) return 0;
  return 2 ** Math.floor(Math.log2(n));
}

function isZeroWords(words: Uint32Array, from: number, count: number): boolean {
  const end = from + count;
  for (let i = from; i < end; i++) if (words[i] !== 0) return false;
  return true;
}

const WORDS_PER_SECTOR = SECTOR / 4;

function sectorIsZero(words: Uint32Array, sector: number): boolean {
  return isZeroWords(words, sector * WORDS_PER_SECTOR, WORDS_PER_SECTOR);
}

/** is_allocated_sectors(): is the first sector data; how many sectors share that (aligned to `alignment`). */
export function isAllocatedSectors(words: Uint32Array, first: number, n: number, sectorNum: number, alignment: number): { allocated: boolean; pnum: number } {
  if (n <= 0) return { allocated: false, pnum: 0 };
  let isZero = sectorIsZero(words, first);
  let i = 1;
  for (; i < n; i++) if (isZero !== sectorIsZero(words, first + i)) break;
  if (i === n) return { allocated: !isZero, pnum: i };
  const tail = (sectorNum + i) & (alignment - 1);
  if (tail) {
    if (isZero && i <= tail) {
      // The next sector is data and will rewrite this tail anyway (read-modify-write): write it now.
      isZero = false;
    }
    if (!isZero) {
      i += alignment - tail;
      i = Math.min(i, n);
    } else {
      i -= tail;
    }
  }
  return { allocated: !isZero, pnum: i };
}

/** is_allocated_sectors_min(): data runs swallow zero runs shorter than `min` sectors. */
export function isAllocatedSectorsMin(words: Uint32Array, first: number, n: number, min: number, sectorNum: number, alignment: number): { allocated: boolean; pnum: number } {
  if (n < min) min = n;
  let r = isAllocatedSectors(words, first, n, sectorNum, alignment);
  if (!r.allocated) return r;
  let numUsed = r.pnum;
  let pos = first + r.pnum;
  n -= r.pnum;
  sectorNum += r.pnum;
  let numChecked = numUsed;
  while (n > 0) {
    r = isAllocatedSectors(words, pos, n, sectorNum, alignment);
    pos += r.pnum;
    n -= r.pnum;
    sectorNum += r.pnum;
    numChecked += r.pnum;
    if (r.allocated) numUsed = numChecked;
    else if (r.pnum >= min) break;
  }
  return { allocated: true, pnum: numUsed };
}

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:', [
    HELP,
    OBJECT,
    IMAGE_OPTS,
    FORCE_SHARE,
    { name: 'target-image-opts', arg: 'none', key: 'target-image-opts' },
    { name: 'salvage', arg: 'none', key: 'salvage' },
    { name: 'target-is-zero', arg: 'none', key: 'target-is-zero' },
    { name: 'bitmaps', arg: 'none', key: 'bitmaps' },
    { name: 'skip-broken-bitmaps', arg: 'none', key: 'skip-broken-bitmaps' },
  ]);
  let fmt: string | undefined;
  let outFmt: string | undefined;
  let outBaseimg: string | undefined;
  let backingFmt: string | undefined;
  let copyRange = false;
  let compressed = false;
  let opts: string | undefined;
  let snapshot: SnapshotParam = {};
  let minSparse = 8;
  let explicitMinSparse = false;
  let progress = false;
  let cache = 'unsafe';
  let srcCache = 'writeback';
  let quiet = false;
  let skipCreate = false;
  let numCoroutines = 8;
  let wrInOrder = true;
  let forceShare = false;
  let rateLimit = 0;
  let imageOpts = false;
  let tgtImageOpts = false;
  let hasZeroInit = false;
  let salvage = false;
  for (const o of options) {
    const v = o.value!;
    switch (o.key) {
      case 'f':
        fmt = v;
        break;
      case 'O':
        outFmt = v;
        break;
      case 'B':
        outBaseimg = v;
        break;
      case 'F':
        backingFmt = v;
        break;
      case 'C':
        copyRange = true;
        break;
      case 'c':
        compressed = true;
        break;
      case 'o':
        opts = accumulateOptions(opts, v, isValidOptionList);
        break;
      case 'l':
        snapshot = addSnapshotParam(ctx, snapshot, v);
        break;
      case 'S': {
        const sval = cvtnum(ctx, 'buffer size for sparse output', v);
        if (sval % SECTOR || sval / SECTOR > MAX_BUF_SECTORS) {
          throw new CliError(
            `Invalid buffer size for sparse output specified. Valid sizes are multiples of ${SECTOR} up to ${MAX_BUF_SECTORS * SECTOR}. Select 0 to disable sparse detection (fully allocates output).`,
          );
        }
        minSparse = sval / SECTOR;
        explicitMinSparse = true;
        break;
      }
      case 'p':
        progress = true;
        break;
      case 't':
        cache = v;
        break;
      case 'T':
        srcCache = v;
        break;
      case 'q':
        quiet = true;
        break;
      case 'n':
        skipCreate = true;
        break;
      case 'm': {
        const m = /^\s*[+-]?(0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*)$/i.exec(v);
        const num = m ? Number.parseInt(m[1]!, m[1]!.toLowerCase().startsWith('0x') ? 16 : m[1]!.length > 1 && m[1]!.startsWith('0') ? 8 : 10) * (v.trim().startsWith('-') ? -1 : 1) : NaN;
        if (!(num >= 1 && num <= MAX_COROUTINES)) {
          throw new CliError(`Invalid number of coroutines. Allowed number of coroutines is between 1 and ${MAX_COROUTINES}`);
        }
        numCoroutines = num;
        break;
      }
      case 'W':
        wrInOrder = false;
        break;
      case 'U':
        forceShare = true;
        break;
      case 'r':
        rateLimit = cvtnum(ctx, 'rate limit', v);
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'target-image-opts':
        tgtImageOpts = true;
        break;
      case 'target-is-zero':
        hasZeroInit = true;
        break;
      case 'salvage':
        salvage = true;
        break;
      case 'bitmaps':
        throw new CliError('--bitmaps is not supported');
      case 'skip-broken-bitmaps':
        throw new CliError('--skip-broken requires --bitmaps');
      case 'object':
        throw new CliError('--object is not supported');
    }
  }
  if (outFmt === undefined && !tgtImageOpts) outFmt = 'raw';
  if (compressed && copyRange) throw new CliError('Cannot enable copy offloading when -c is used');
  if (explicitMinSparse && copyRange) throw new CliError('Cannot enable copy offloading when -S is used');
  if (copyRange && salvage) throw new CliError('Cannot use copy offloading in salvaging mode');
  if (tgtImageOpts && !skipCreate) throw new CliError('--target-image-opts requires use of -n flag');
  if (skipCreate && opts !== undefined) throw new CliError('-o has no effect when skipping image creation');
  if (hasZeroInit && !skipCreate) throw new CliError('--target-is-zero requires use of -n flag');
  const srcNum = operands.length - 1;
  const outFilename = srcNum >= 1 ? operands[operands.length - 1]! : undefined;
  if (opts !== undefined && hasHelpOption(opts)) {
    if (!outFmt) throw new CliError('Option help requires a format be specified');
    return withGraph(ctx, async (graph) => {
      const drv = formatDriver(graph, outFmt!);
      ctx.out(blockOptionHelp(drv, outFilename !== undefined ? graph.registry.get('file') : undefined));
      return 0;
    });
  }
  if (srcNum < 1) throw new CliError('Must specify image file name');
  const srcCacheMode = parseCacheMode(srcCache);
  if (!srcCacheMode) throw new CliError(`Invalid source cache option: ${srcCache}`);
  if (quiet) progress = false;
  const prog = createProgress(ctx, progress, 1.0);
  prog.print(0, 100);
  let ok = false;
  try {
    await withGraph(ctx, async (graph) => {
      const sources: ConvertSource[] = [];
      for (let i = 0; i < srcNum; i++) {
        const img = await openImage(ctx, graph, { filename: operands[i]!, format: fmt, imageOpts, readOnly: true, forceShare, cache: srcCacheMode, quiet });
        const top = img.top;
        const info = driverInfo(top);
        let alignment = Math.ceil(top.limits.requestAlignment / SECTOR);
        if (info) alignment = Math.max(alignment, Math.floor((info.clusterSize ?? 0) / SECTOR));
        const bytes = img.blk.getLength();
        sources.push({ blk: img.blk, top, bytes, sectors: Math.ceil(bytes / SECTOR), alignment });
      }
      // Only a bare name is refused with several sources; snapshot.id=/name= loads into the first, as in qemu-img.
      if (!snapshot.opts && snapshot.idOrName !== undefined && srcNum > 1) throw new CliError('No support for concatenating multiple snapshot');
      if (hasSnapshotParam(snapshot)) await loadSnapshotParam(sources[0]!.top, snapshot);
      const totalSectors = sources.reduce((n, s) => n + s.sectors, 0);

      let drv: BlockDriver | undefined;
      const given = new Map<string, string>();
      let entries: { key: string; value: string }[] = [];
      if (!skipCreate) {
        drv = formatDriver(graph, outFmt!);
        if (!drv.create || !drv.createOptions) throw new CliError(`Format driver '${outFmt}' does not support image creation`);
        const list = createOptionList(drv);
        entries = parseCreateOptions(opts, [...list, ...createOptionList(graph.registry.get('file'))]);
        for (const e of entries) given.set(e.key, e.value);
        if (outBaseimg !== undefined) {
          if (!list.some(([k]) => k === 'backing_file')) throw new CliError(`Backing file not supported for file format '${outFmt}'`);
          given.set('backing_file', outBaseimg);
        }
        if (backingFmt !== undefined) {
          if (!list.some(([k]) => k === 'backing_fmt')) throw new CliError(`Backing file format not supported for file format '${outFmt}'`);
          given.set('backing_fmt', backingFmt);
        }
      }
      const baseParam = given.get('backing_file');
      if (baseParam !== undefined) outBaseimg = baseParam;
      const targetHasBacking = outBaseimg !== undefined;
      if (hasZeroInit && targetHasBacking) throw new CliError('Cannot use --target-is-zero when the destination image has a backing file');
      if (srcNum > 1 && outBaseimg !== undefined) {
        throw new CliError('Having a backing file for the target makes no sense when concatenating multiple input images');
      }
      if (baseParam !== undefined && !given.has('backing_fmt')) throw new CliError('Use of backing file requires explicit backing format');
      if (compressed) {
        if (drv && !drv.capabilities.compressedWrite) throw new CliError('Compression not supported for this file format');
        if ((given.get('encryption') ?? 'off') !== 'off' || given.has('encrypt.format')) {
          throw new CliError('Compression and encryption not supported at the same time');
        }
        const prealloc = given.get('preallocation');
        if (prealloc && prealloc !== 'off') throw new CliError('Compression and preallocation not supported at the same time');
      }

      if (!skipCreate) {
        const createOpts: Record<string, unknown> = { ...entriesToOptions(entries), filename: outFilename, size: totalSectors * SECTOR };
        if (outBaseimg !== undefined) createOpts.backingFile = outBaseimg;
        if (given.has('backing_fmt')) createOpts.backingFmt = given.get('backing_fmt');
        try {
          await graph.createImage(outFmt!, createOpts);
        } catch (e) {
          throw new CliError(`${outFilename}: error while converting ${outFmt}: ${oneLine(errMessage(e))}`);
        }
      }

      const cacheMode = parseCacheMode(cache);
      if (!cacheMode) throw new CliError(`Invalid cache option: ${cache}`);
      const target: OpenedImage = await openImage(ctx, graph, {
        filename: outFilename!,
        // img_open() refuses -O with --target-image-opts rather than ignoring it.
        format: outFmt,
        imageOpts: skipCreate && tgtImageOpts,
        readOnly: false,
        cache: cacheMode,
        discardUnmap: minSparse > 0,
        quiet,
      });
      const out = target.image;
      if (compressed && !(out.capabilities.compressedWrite || out.impl.pwritevCompressed)) {
        throw new CliError('Compression not supported for this file format');
      }
      if (skipCreate) {
        const outSectors = Math.ceil(target.blk.getLength() / SECTOR);
        if (outSectors < totalSectors) throw new CliError('output file is smaller than input file');
      }
      if (compressed && !driverInfo(out)) throw new CliError('could not get block driver info');
      const conv = new Converter({
        sources,
        target: target.blk,
        targetNode: target.top,
        minSparse,
        numCoroutines,
        wrInOrder,
        compressed,
        targetHasBacking,
        targetIsNew: !skipCreate,
        hasZeroInit,
        writethrough: target.writethrough,
        progress: prog,
        rateLimit,
        copyRange,
        salvage,
        warn: (m) => {
          if (!quiet) ctx.warn(m);
        },
        error: (m) => ctx.error(m),
      });
      await conv.run();
      await target.blk.flush();
    });
    ok = true;
  } finally {
    if (ok) prog.print(100, 0);
    prog.end();
  }
  return 0;
}

