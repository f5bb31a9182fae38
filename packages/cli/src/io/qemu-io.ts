/**
 * qemu-io's command language (qemu-io-cmds.c, QEMU 7.2): the same commands, options, messages and
 * statistics lines, so qemu-iotests-style golden outputs compare after the usual timing filter.
 * Messages go where qemu-io puts them: command results and most errors on stdout, "command not found",
 * usage-count errors and error_report() lines on stderr.
 */
import {
  IOVector,
  Perm,
  PERM_ALL,
  ReqFlag,
  isAllocated,
  parseQemuSize,
  type BlockBackend,
  type BlockNode,
  type Graph,
  type PreallocMode,
} from '@blockgraph/block-core';
import { hostStrerror } from '@blockgraph/driver-raw/file';
import { readFileSync } from 'node:fs';
import { PROGRAM, oneLine, type Ctx } from '../lib/context.js';
import { getopt, GetoptError } from '../lib/getopt.js';
import { driverInfo, kebabKeys } from '../lib/image-info.js';
import { dumpQObject } from '../lib/image-info.js';
import { errMessage, openImage, parseCacheMode, type CacheMode } from '../lib/open.js';
import { cvtstr, fixed } from '../lib/printf.js';
import { parseQemuOpts, optsToObject } from '../lib/qemu-opts.js';
import { strerror } from '../lib/strerror.js';

/** BDRV_REQUEST_MAX_BYTES */
const REQUEST_MAX_BYTES = 2 ** 31 - 512;
const SECTOR = 512;
const EINVAL = -22;

export interface OpenFlags {
  readOnly: boolean;
  snapshot: boolean;
  cache: CacheMode;
  discardUnmap: boolean;
  copyOnRead: boolean;
  forceShare: boolean;
}

export interface IoState {
  ctx: Ctx;
  graph: Graph;
  blk: BlockBackend | null;
  top: BlockNode | null;
  writethrough: boolean;
  quit: boolean;
  /** aio requests not yet completed. */
  pending: Set<Promise<void>>;
}

interface CmdInfo {
  name: string;
  altname?: string;
  args?: string;
  oneline: string;
  argmin: number;
  argmax: number;
  /** Usable without an open image. */
  nofileOk?: boolean;
  /** Permission the command needs on the backend. */
  perm?: number;
  help?: string;
  fn(s: IoState, argv: string[]): Promise<number>;
}

// --- output helpers --------------------------------------------------------------------------------------

function out(s: IoState, text: string): void {
  s.ctx.out(text);
}

/** error_report(): "blockgraph: msg" on stderr. */
function report(s: IoState, msg: string): void {
  s.ctx.err(`${PROGRAM}: ${oneLine(msg)}\n`);
}


function usage(s: IoState, ct: CmdInfo): number {
  out(s, `${ct.name} ${ct.args ?? ''} -- ${ct.oneline}\n`);
  return EINVAL;
}

/** qemu-io's cvtnum(): a size, or a negative errno. */
function cvtnum(text: string): number {
  const r = parseQemuSize(text);
  if (!r.ok) return r.error === 'ERANGE' ? -34 : EINVAL;
  if (r.value > 2n ** 63n - 1n) return -34;
  if (r.value > BigInt(Number.MAX_SAFE_INTEGER)) return -34;
  return Number(r.value);
}

function printCvtnumErr(s: IoState, rc: number, arg: string): void {
  if (rc === EINVAL) out(s, `Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${arg}\n`);
  else if (rc === -34) out(s, `Parsing error: argument too large -- ${arg}\n`);
  else out(s, `Parsing error: ${arg}\n`);
}

/** parse_pattern(): strtol(arg, 0) in 0..255, the whole string. */
function parsePattern(s: IoState, arg: string): number {
  const m = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(arg);
  let v = NaN;
  if (m) {
    const t = m[2]!;
    v = /^0[xX]/.test(t) ? parseInt(t.slice(2), 16) : t.length > 1 && t.startsWith('0') ? parseInt(t, 8) : parseInt(t, 10);
    if (m[1] === '-') v = -v;
  }
  if (!(v >= 0 && v <= 255)) {
    out(s, `${arg} is not a valid pattern byte\n`);
    return -1;
  }
  return v;
}

/** timestr(). */
function timestr(seconds: number, verbose: boolean): string {
  const sec = Math.floor(seconds);
  const frac = seconds - sec;
  if (verbose || sec) {
    const h = Math.floor(sec / 3600);
    const m = Math.floor((sec % 3600) / 60);
    return `${h}:${String(m).padStart(2, '0')}:${fixed((sec % 60) + frac, 2).padStart(5, '0')}`;
  }
  return `${fixed(frac, 2).padStart(5, '0')} sec`;
}

function tdiv(value: number, seconds: number): number {
  return value / seconds;
}

/** print_report(). */
function printReport(s: IoState, op: string, seconds: number, offset: number, count: number, total: number, cnt: number, cflag: boolean): void {
  const ts = timestr(seconds, cflag);
  if (!cflag) {
    out(s, `${op} ${total}/${count} bytes at offset ${offset}\n`);
    out(s, `${cvtstr(total)}, ${cnt} ops; ${ts} (${cvtstr(tdiv(total, seconds))}/sec and ${fixed(tdiv(cnt, seconds), 4)} ops/sec)\n`);
  } else {
    out(s, `${total},${cnt},${ts},${fixed(tdiv(total, seconds), 3)},${fixed(tdiv(cnt, seconds), 3)}\n`);
  }
}

const isAlnum = (c: number) => (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);

/** dump_buffer(). */
function dumpBuffer(s: IoState, buf: Uint8Array, offset: number, len: number): void {
  let text = '';
  for (let i = 0; i < len; i += 16) {
    text += `${(offset + i).toString(16).padStart(8, '0')}:  `;
    let chars = '';
    for (let j = 0; j < 16 && i + j < len; j++) {
      const b = buf[i + j]!;
      text += `${b.toString(16).padStart(2, '0')} `;
      chars += isAlnum(b) ? String.fromCharCode(b) : '.';
    }
    text += ` ${chars}\n`;
  }
  out(s, text);
}

function now(): number {
  return performance.now() / 1000;
}

/** Parse a command's options with glibc getopt's complaints ("read: invalid option -- 'z'"). */
function cmdGetopt(s: IoState, ct: CmdInfo, argv: string[], spec: string): { options: { key: string; value: string | undefined }[]; operands: string[] } | null {
  try {
    return getopt(argv.slice(1), spec);
  } catch (e) {
    if (e instanceof GetoptError) {
      const c = e.option.replace(/^-+/, '');
      if (e.kind === 'missing') s.ctx.err(`${argv[0]}: option requires an argument -- '${c}'\n`);
      else s.ctx.err(`${argv[0]}: invalid option -- '${c[0] ?? c}'\n`);
      usage(s, ct);
      return null;
    }
    throw e;
  }
}

/** create_iovec(): buffers of the given lengths, filled with `pattern`. */
function createIovec(s: IoState, args: string[], pattern: number): { buf: Uint8Array; qiov: IOVector } | null {
  const sizes: number[] = [];
  let count = 0;
  for (const arg of args) {
    const len = cvtnum(arg);
    if (len < 0) {
      printCvtnumErr(s, len, arg);
      return null;
    }
    if (len > REQUEST_MAX_BYTES) {
      out(s, `Argument '${arg}' exceeds maximum size ${REQUEST_MAX_BYTES}\n`);
      return null;
    }
    if (count > REQUEST_MAX_BYTES - len) {
      out(s, `The total number of bytes exceed the maximum size ${REQUEST_MAX_BYTES}\n`);
      return null;
    }
    sizes.push(len);
    count += len;
  }
  const buf = new Uint8Array(count).fill(pattern);
  const parts: Uint8Array[] = [];
  let p = 0;
  for (const n of sizes) {
    parts.push(buf.subarray(p, p + n));
    p += n;
  }
  return { buf, qiov: new IOVector(parts) };
}

function isAllSame(buf: Uint8Array, from: number, len: number, value: number): boolean {
  for (let i = from; i < from + len; i++) if (buf[i] !== value) return false;
  return true;
}

// --- commands ---------------------------------------------------------------------------------------------

const readCmd: CmdInfo = {
  name: 'read',
  altname: 'r',
  argmin: 2,
  argmax: -1,
  args: '[-abCqv] [-P pattern [-s off] [-l len]] off len',
  oneline: 'reads a number of bytes at a specified offset',
  help: `
 reads a range of bytes from the given offset

 Example:
 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 -b, -- read from the VM state rather than the virtual disk
 -C, -- report statistics in a machine parsable format
 -l, -- length for pattern verification (only with -P)
 -p, -- ignored for backwards compatibility
 -P, -- use a pattern to verify read data
 -q, -- quiet mode, do not show I/O statistics
 -s, -- start offset for pattern verification (only with -P)
 -v, -- dump buffer to standard output

`,
  async fn(s, argv) {
    const p = cmdGetopt(s, this, argv, 'bCl:pP:qs:vr');
    if (!p) return EINVAL;
    let cflag = false;
    let qflag = false;
    let vflag = false;
    let pflag = false;
    let sflag = false;
    let lflag = false;
    let bflag = false;
    let pattern = 0;
    let patternOffset = 0;
    let patternCount = 0;
    for (const o of p.options) {
      switch (o.key) {
        case 'b':
          bflag = true;
          break;
        case 'C':
          cflag = true;
          break;
        case 'l':
          lflag = true;
          patternCount = cvtnum(o.value!);
          if (patternCount < 0) {
            printCvtnumErr(s, patternCount, o.value!);
            return patternCount;
          }
          break;
        case 'P':
          pflag = true;
          pattern = parsePattern(s, o.value!);
          if (pattern < 0) return EINVAL;
          break;
        case 'q':
          qflag = true;
          break;
        case 's':
          sflag = true;
          patternOffset = cvtnum(o.value!);
          if (patternOffset < 0) {
            printCvtnumErr(s, patternOffset, o.value!);
            return patternOffset;
          }
          break;
        case 'v':
          vflag = true;
          break;
      }
    }
    if (p.operands.length !== 2) return usage(s, this);
    const offset = cvtnum(p.operands[0]!);
    if (offset < 0) {
      printCvtnumErr(s, offset, p.operands[0]!);
      return offset;
    }
    const count = cvtnum(p.operands[1]!);
    if (count < 0) {
      printCvtnumErr(s, count, p.operands[1]!);
      return count;
    } else if (count > REQUEST_MAX_BYTES) {
      out(s, `length cannot exceed ${REQUEST_MAX_BYTES}, given ${p.operands[1]}\n`);
      return EINVAL;
    }
    if (!pflag && (lflag || sflag)) return usage(s, this);
    if (!lflag) patternCount = count - patternOffset;
    if (patternCount < 0 || patternCount + patternOffset > count) {
      out(s, 'pattern verification range exceeds end of read data\n');
      return EINVAL;
    }
    if (bflag) {
      if (offset % SECTOR) {
        out(s, `${offset} is not a sector-aligned value for 'offset'\n`);
        return EINVAL;
      }
      if (count % SECTOR) {
        out(s, `${count} is not a sector-aligned value for 'count'\n`);
        return EINVAL;
      }
    }
    const buf = new Uint8Array(count).fill(0xab);
    const t1 = now();
    try {
      if (bflag) await s.blk!.loadVmstate(offset, buf);
      else await s.blk!.pread(offset, buf);
    } catch (e) {
      out(s, `read failed: ${strerror(e)}\n`);
      return -5;
    }
    const t2 = now();
    let ret = 0;
    if (pflag && !isAllSame(buf, patternOffset, patternCount, pattern)) {
      out(s, `Pattern verification failed at offset ${offset + patternOffset}, ${patternCount} bytes\n`);
      ret = EINVAL;
    }
    if (qflag) return ret;
    if (vflag) dumpBuffer(s, buf, offset, count);
    printReport(s, 'read', t2 - t1, offset, count, count, 1, cflag);
    return ret;
  },
};

const writeCmd: CmdInfo = {
  name: 'write',
  altname: 'w',
  argmin: 2,
  argmax: -1,
  perm: Perm.WRITE,
  args: '[-bcCfnquz] [-P pattern | -s source_file] off len',
  oneline: 'writes a number of bytes at a specified offset',
  help: `
 writes a range of bytes from the given offset

 Example:
 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 -b, -- write to the VM state rather than the virtual disk
 -c, -- write compressed data with blk_write_compressed
 -f, -- use Force Unit Access semantics
 -n, -- with -z, don't allow slow fallback
 -p, -- ignored for backwards compatibility
 -P, -- use different pattern to fill file
 -s, -- use a pattern file to fill the write buffer
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes using blk_co_pwrite_zeroes

`,
  async fn(s, argv) {
    const p = cmdGetopt(s, this, argv, 'bcCfnpP:qrs:uz');
    if (!p) return EINVAL;
    let cflag = false;
    let qflag = false;
    let bflag = false;
    let pflag = false;
    let zflag = false;
    let compress = false;
    let sflag = false;
    let flags = 0;
    let pattern = 0xcd;
    let fileName = '';
    for (const o of p.options) {
      switch (o.key) {
        case 'b':
          bflag = true;
          break;
        case 'c':
          compress = true;
          break;
        case 'C':
          cflag = true;
          break;
        case 'f':
          flags |= ReqFlag.FUA;
          break;
        case 'n':
          flags |= ReqFlag.NO_FALLBACK;
          break;
        case 'P':
          pflag = true;
          pattern = parsePattern(s, o.value!);
          if (pattern < 0) return EINVAL;
          break;
        case 'q':
          qflag = true;
          break;
        case 's':
          sflag = true;
          fileName = o.value!;
          break;
        case 'u':
          flags |= ReqFlag.MAY_UNMAP;
          break;
        case 'z':
          zflag = true;
          break;
      }
    }
    if (p.operands.length !== 2) return usage(s, this);
    if (bflag && zflag) {
      out(s, '-b and -z cannot be specified at the same time\n');
      return EINVAL;
    }
    if (flags & ReqFlag.FUA && (bflag || compress)) {
      out(s, '-f and -b or -c cannot be specified at the same time\n');
      return EINVAL;
    }
    if (flags & ReqFlag.NO_FALLBACK && !zflag) {
      out(s, '-n requires -z to be specified\n');
      return EINVAL;
    }
    if (flags & ReqFlag.MAY_UNMAP && !zflag) {
      out(s, '-u requires -z to be specified\n');
      return EINVAL;
    }
    if (Number(zflag) + Number(pflag) + Number(sflag) > 1) {
      out(s, 'Only one of -z, -P, and -s can be specified at the same time\n');
      return EINVAL;
    }
    const offset = cvtnum(p.operands[0]!);
    if (offset < 0) {
      printCvtnumErr(s, offset, p.operands[0]!);
      return offset;
    }
    const count = cvtnum(p.operands[1]!);
    if (count < 0) {
      printCvtnumErr(s, count, p.operands[1]!);
      return count;
    } else if (count > REQUEST_MAX_BYTES && !(flags & ReqFlag.NO_FALLBACK)) {
      out(s, `length cannot exceed ${REQUEST_MAX_BYTES} without -n, given ${p.operands[1]}\n`);
      return EINVAL;
    }
    if (bflag || compress) {
      if (offset % SECTOR) {
        out(s, `${offset} is not a sector-aligned value for 'offset'\n`);
        return EINVAL;
      }
      if (count % SECTOR) {
        out(s, `${count} is not a sector-aligned value for 'count'\n`);
        return EINVAL;
      }
    }
    let buf: Uint8Array | undefined;
    if (!zflag) {
      if (sflag) {
        let src: Uint8Array;
        // qemu_io_alloc_from_file() (7.2): perror() and its own message, on stderr.
        try {
          src = readFileSync(fileName);
        } catch (e) {
          s.ctx.err(`${fileName}: ${hostStrerror(e)}\n`);
          return EINVAL;
        }
        if (src.length === 0) {
          s.ctx.err(`${fileName}: file is empty\n`);
          return EINVAL;
        }
        buf = new Uint8Array(count);
        for (let i = 0; i < count; i += src.length) buf.set(src.subarray(0, Math.min(src.length, count - i)), i);
      } else {
        buf = new Uint8Array(count).fill(pattern);
      }
    }
    const t1 = now();
    try {
      if (bflag) await s.blk!.saveVmstate(offset, buf!, s.writethrough);
      else if (zflag) await s.blk!.pwriteZeroes(offset, count, flags);
      else if (compress) {
        if (!s.top!.impl.pwritevCompressed && !s.top!.skipFilters().impl.pwritevCompressed) throw Object.assign(new Error('no'), { code: 'ENOTSUP' });
        await s.blk!.pwritevCompressed(offset, count, IOVector.of(buf!));
      } else await s.blk!.pwrite(offset, buf!, flags | (s.writethrough ? ReqFlag.FUA : 0));
    } catch (e) {
      out(s, `write failed: ${strerror(e)}\n`);
      return -5;
    }
    const t2 = now();
    if (qflag) return 0;
    printReport(s, 'wrote', t2 - t1, offset, count, count, 1, cflag);
    return 0;
  },
};

/** What readv and aio_read were asked to do: the same options and operands (aio_read adds -i). */
interface VectoredRead {
  offset: number;
  v: { buf: Uint8Array; qiov: IOVector };
  cflag: boolean;
  qflag: boolean;
  vflag: boolean;
  pflag: boolean;
  pattern: number;
}

/** Options and operands of readv / aio_read; a number is what the command returns at once (-i: 0). */
function parseVectoredRead(s: IoState, cmd: CmdInfo, argv: string[], optstring: string): VectoredRead | number {
  const p = cmdGetopt(s, cmd, argv, optstring);
  if (!p) return EINVAL;
  const r: Omit<VectoredRead, 'offset' | 'v'> = { cflag: false, qflag: false, vflag: false, pflag: false, pattern: 0 };
  for (const o of p.options) {
    if (o.key === 'C') r.cflag = true;
    else if (o.key === 'i') return 0;
    else if (o.key === 'P') {
      r.pflag = true;
      r.pattern = parsePattern(s, o.value!);
      if (r.pattern < 0) return EINVAL;
    } else if (o.key === 'q') r.qflag = true;
    else if (o.key === 'v') r.vflag = true;
  }
  if (p.operands.length < 2) return usage(s, cmd);
  const offset = cvtnum(p.operands[0]!);
  if (offset < 0) {
    printCvtnumErr(s, offset, p.operands[0]!);
    return offset;
  }
  const v = createIovec(s, p.operands.slice(1), 0xab);
  if (!v) return EINVAL;
  return { ...r, offset, v };
}

/** After a readv / aio_read: pattern check, dump, statistics; EINVAL when the pattern does not match. */
function finishVectoredRead(s: IoState, r: VectoredRead, seconds: number): number {
  const size = r.v.qiov.size;
  let ret = 0;
  if (r.pflag && !isAllSame(r.v.buf, 0, size, r.pattern)) {
    out(s, `Pattern verification failed at offset ${r.offset}, ${size} bytes\n`);
    ret = EINVAL;
  }
  if (r.qflag) return ret;
  if (r.vflag) dumpBuffer(s, r.v.buf, r.offset, size);
  printReport(s, 'read', seconds, r.offset, size, size, 1, r.cflag);
  return ret;
}

const readvCmd: CmdInfo = {
  name: 'readv',
  argmin: 2,
  argmax: -1,
  args: '[-Cqv] [-P pattern] off len [len..]',
  oneline: 'reads a number of bytes at a specified offset',
  help: `
 reads a range of bytes from the given offset into multiple buffers

 Example:
 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 Uses multiple iovec buffers if more than one byte range is specified.
 -C, -- report statistics in a machine parsable format
 -P, -- use a pattern to verify read data
 -v, -- dump buffer to standard output
 -q, -- quiet mode, do not show I/O statistics

`,
  async fn(s, argv) {
    const r = parseVectoredRead(s, this, argv, 'CP:qrv');
    if (typeof r === 'number') return r;
    const t1 = now();
    try {
      await s.blk!.preadv(r.offset, r.v.qiov.size, r.v.qiov);
    } catch (e) {
      out(s, `readv failed: ${strerror(e)}\n`);
      return -5;
    }
    return finishVectoredRead(s, r, now() - t1);
  },
};

const writevCmd: CmdInfo = {
  name: 'writev',
  argmin: 2,
  argmax: -1,
  perm: Perm.WRITE,
  args: '[-Cfq] [-P pattern] off len [len..]',
  oneline: 'writes a number of bytes at a specified offset',
  help: `
 writes a range of bytes from the given offset source from multiple buffers

 Example:
 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 -P, -- use different pattern to fill file
 -C, -- report statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -q, -- quiet mode, do not show I/O statistics

`,
  async fn(s, argv) {
    const p = cmdGetopt(s, this, argv, 'CfqP:r');
    if (!p) return EINVAL;
    let cflag = false;
    let qflag = false;
    let flags = 0;
    let pattern = 0xcd;
    for (const o of p.options) {
      if (o.key === 'C') cflag = true;
      else if (o.key === 'f') flags |= ReqFlag.FUA;
      else if (o.key === 'q') qflag = true;
      else if (o.key === 'P') {
        pattern = parsePattern(s, o.value!);
        if (pattern < 0) return EINVAL;
      }
    }
    if (p.operands.length < 2) return usage(s, this);
    const offset = cvtnum(p.operands[0]!);
    if (offset < 0) {
      printCvtnumErr(s, offset, p.operands[0]!);
      return offset;
    }
    const v = createIovec(s, p.operands.slice(1), pattern);
    if (!v) return EINVAL;
    const t1 = now();
    try {
      await s.blk!.pwritev(offset, v.qiov.size, v.qiov, flags | (s.writethrough ? ReqFlag.FUA : 0));
    } catch (e) {
      out(s, `writev failed: ${strerror(e)}\n`);
      return -5;
    }
    const t2 = now();
    if (qflag) return 0;
    printReport(s, 'wrote', t2 - t1, offset, v.qiov.size, v.qiov.size, 1, cflag);
    return 0;
  },
};

const aioReadCmd: CmdInfo = {
  name: 'aio_read',
  argmin: 2,
  argmax: -1,
  args: '[-Ciqv] [-P pattern] off len [len..]',
  oneline: 'asynchronously reads a number of bytes',
  help: `
 asynchronously reads a range of bytes from the given offset

 Example:
 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 The read is performed asynchronously and the aio_flush command must be
 used to ensure all outstanding aio requests have been completed.
 Note that due to its asynchronous nature, this command will be
 considered successful once the request is submitted, independently
 of potential I/O errors or pattern mismatches.
 -C, -- report statistics in a machine parsable format
 -P, -- use a pattern to verify read data
 -i, -- treat request as invalid, for exercising stats
 -v, -- dump buffer to standard output
 -q, -- quiet mode, do not show I/O statistics

`,
  async fn(s, argv) {
    const r = parseVectoredRead(s, this, argv, 'CiP:qrv');
    if (typeof r === 'number') return r;
    const t1 = now();
    const req = s.blk!.preadv(r.offset, r.v.qiov.size, r.v.qiov).then(
      () => void finishVectoredRead(s, r, now() - t1),
      (e) => {
        out(s, `readv failed: ${strerror(e)}\n`);
      },
    );
    track(s, req);
    return 0;
  },
};

const aioWriteCmd: CmdInfo = {
  name: 'aio_write',
  argmin: 2,
  argmax: -1,
  perm: Perm.WRITE,
  args: '[-Cfiquz] [-P pattern] off len [len..]',
  oneline: 'asynchronously writes a number of bytes',
  help: `
 asynchronously writes a range of bytes from the given offset source
 from multiple buffers

 Example:
 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 The write is performed asynchronously and the aio_flush command must be
 used to ensure all outstanding aio requests have been completed.
 Note that due to its asynchronous nature, this command will be
 considered successful once the request is submitted, independently
 of potential I/O errors or pattern mismatches.
 -P, -- use different pattern to fill file
 -C, -- report statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -i, -- treat request as invalid, for exercising stats
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes using blk_aio_pwrite_zeroes

`,
  async fn(s, argv) {
    const p = cmdGetopt(s, this, argv, 'CfiqP:ruz');
    if (!p) return EINVAL;
    let cflag = false;
    let qflag = false;
    let zflag = false;
    let flags = 0;
    let pattern = 0xcd;
    for (const o of p.options) {
      if (o.key === 'C') cflag = true;
      else if (o.key === 'f') flags |= ReqFlag.FUA;
      else if (o.key === 'i') return 0;
      else if (o.key === 'q') qflag = true;
      else if (o.key === 'u') flags |= ReqFlag.MAY_UNMAP;
      else if (o.key === 'z') zflag = true;
      else if (o.key === 'P') {
        pattern = parsePattern(s, o.value!);
        if (pattern < 0) return EINVAL;
      }
    }
    if (p.operands.length < 2) return usage(s, this);
    if (flags & ReqFlag.MAY_UNMAP && !zflag) {
      out(s, '-u requires -z to be specified\n');
      return EINVAL;
    }
    const offset = cvtnum(p.operands[0]!);
    if (offset < 0) {
      printCvtnumErr(s, offset, p.operands[0]!);
      return offset;
    }
    const blk = s.blk!;
    const t1 = now();
    let size: number;
    let req: Promise<void>;
    if (zflag) {
      if (p.operands.length !== 2) {
        out(s, '-z supports only a single length parameter\n');
        return EINVAL;
      }
      const count = cvtnum(p.operands[1]!);
      if (count < 0) {
        printCvtnumErr(s, count, p.operands[1]!);
        return count;
      }
      size = count;
      req = blk.pwriteZeroes(offset, count, flags);
    } else {
      const v = createIovec(s, p.operands.slice(1), pattern);
      if (!v) return EINVAL;
      size = v.qiov.size;
      req = blk.pwritev(offset, v.qiov.size, v.qiov, flags | (s.writethrough ? ReqFlag.FUA : 0));
    }
    track(
      s,
      req.then(
        () => {
          const t2 = now();
          if (qflag) return;
          printReport(s, 'wrote', t2 - t1, offset, size, size, 1, cflag);
        },
        (e) => {
          out(s, `aio_write failed: ${strerror(e)}\n`);
        },
      ),
    );
    return 0;
  },
};

function track(s: IoState, p: Promise<void>): void {
  s.pending.add(p);
  void p.finally(() => s.pending.delete(p));
}

/** blk_drain_all(): wait for every outstanding aio request. */
export async function drainAio(s: IoState): Promise<void> {
  while (s.pending.size) await Promise.all([...s.pending]);
}

const aioFlushCmd: CmdInfo = {
  name: 'aio_flush',
  argmin: 0,
  argmax: 0,
  oneline: 'completes all outstanding aio requests',
  async fn(s) {
    await drainAio(s);
    return 0;
  },
};

const flushCmd: CmdInfo = {
  name: 'flush',
  altname: 'f',
  argmin: 0,
  argmax: 0,
  oneline: 'flush all in-core file state to disk',
  async fn(s) {
    try {
      await s.blk!.flush();
    } catch {
      return -5;
    }
    return 0;
  },
};

const truncateCmd: CmdInfo = {
  name: 'truncate',
  altname: 't',
  argmin: 1,
  argmax: 3,
  perm: Perm.RESIZE,
  args: '[-m prealloc_mode] off',
  oneline: 'truncates the current file at the given offset',
  async fn(s, argv) {
    const p = cmdGetopt(s, this, argv, 'm:');
    if (!p) return EINVAL;
    let prealloc: PreallocMode = 'off';
    for (const o of p.options) {
      if (o.key === 'm') {
        if (!['off', 'metadata', 'falloc', 'full'].includes(o.value!)) {
          report(s, `Invalid preallocation mode '${o.value}'`);
          return EINVAL;
        }
        prealloc = o.value as PreallocMode;
      }
    }
    const offset = cvtnum(p.operands[0] ?? '');
    if (offset < 0) {
      printCvtnumErr(s, offset, argv[1]!);
      return offset;
    }
    try {
      await s.blk!.truncate(offset, true, prealloc);
    } catch (e) {
      report(s, errMessage(e));
      return -5;
    }
    return 0;
  },
};

const lengthCmd: CmdInfo = {
  name: 'length',
  altname: 'l',
  argmin: 0,
  argmax: 0,
  oneline: 'gets the length of the current file',
  async fn(s) {
    out(s, `${cvtstr(s.blk!.getLength())}\n`);
    return 0;
  },
};

const infoCmd: CmdInfo = {
  name: 'info',
  altname: 'i',
  argmin: 0,
  argmax: 0,
  oneline: 'prints information about the current file',
  async fn(s) {
    const bs = s.blk!.node;
    out(s, `format name: ${bs.driver.name}\n`);
    if (bs.driver.kind === 'protocol') out(s, `format name: ${bs.driver.name}\n`);
    const info = driverInfo(bs);
    if (!info) return -95;
    const vmStateOffset = (info as { vmStateOffset?: number }).vmStateOffset ?? 0;
    out(s, `cluster size: ${cvtstr(info.clusterSize ?? 0)}\n`);
    out(s, `vm state offset: ${cvtstr(vmStateOffset)}\n`);
    const spec = bs.impl.getSpecificInfo?.();
    if (spec) {
      out(s, 'Format specific information:\n');
      out(s, dumpQObject(1, kebabKeys(spec.data)));
    }
    return 0;
  },
};

const discardCmd: CmdInfo = {
  name: 'discard',
  altname: 'd',
  argmin: 2,
  argmax: -1,
  perm: Perm.WRITE,
  args: '[-Cq] off len',
  oneline: 'discards a number of bytes at a specified offset',
  help: `
 discards a range of bytes from the given offset

 Example:
 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file

 Discards a segment of the currently open file.
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics

`,
  async fn(s, argv) {
    const p = cmdGetopt(s, this, argv, 'Cq');
    if (!p) return EINVAL;
    let cflag = false;
    let qflag = false;
    for (const o of p.options) {
      if (o.key === 'C') cflag = true;
      else if (o.key === 'q') qflag = true;
    }
    if (p.operands.length !== 2) return usage(s, this);
    const offset = cvtnum(p.operands[0]!);
    if (offset < 0) {
      printCvtnumErr(s, offset, p.operands[0]!);
      return offset;
    }
    const bytes = cvtnum(p.operands[1]!);
    if (bytes < 0) {
      printCvtnumErr(s, bytes, p.operands[1]!);
      return bytes;
    } else if (bytes > REQUEST_MAX_BYTES) {
      out(s, `length cannot exceed ${REQUEST_MAX_BYTES}, given ${p.operands[1]}\n`);
      return EINVAL;
    }
    const t1 = now();
    try {
      await s.blk!.pdiscard(offset, bytes);
    } catch (e) {
      out(s, `discard failed: ${strerror(e)}\n`);
      return -5;
    }
    const t2 = now();
    if (!qflag) printReport(s, 'discard', t2 - t1, offset, bytes, bytes, 1, cflag);
    return 0;
  },
};

const allocCmd: CmdInfo = {
  name: 'alloc',
  altname: 'a',
  argmin: 1,
  argmax: 2,
  args: 'offset [count]',
  oneline: 'checks if offset is allocated in the file',
  async fn(s, argv) {
    const bs = s.blk!.node;
    const start = cvtnum(argv[1]!);
    if (start < 0) {
      printCvtnumErr(s, start, argv[1]!);
      return start;
    }
    let offset = start;
    let count = SECTOR;
    if (argv.length === 3) {
      count = cvtnum(argv[2]!);
      if (count < 0) {
        printCvtnumErr(s, count, argv[2]!);
        return count;
      }
    }
    let remaining = count;
    let sumAlloc = 0;
    while (remaining) {
      let r;
      try {
        r = offset >= bs.totalBytes ? { allocated: false, pnum: 0 } : await isAllocated(bs, offset, remaining);
      } catch (e) {
        out(s, `is_allocated failed: ${strerror(e)}\n`);
        return -5;
      }
      offset += r.pnum;
      remaining -= r.pnum;
      if (r.allocated) sumAlloc += r.pnum;
      if (r.pnum === 0) {
        count -= remaining;
        remaining = 0;
      }
    }
    out(s, `${sumAlloc}/${count} bytes allocated at offset ${cvtstr(start)}\n`);
    return 0;
  },
};

/** map_is_allocated(): the allocation state at `offset` and how far it stays the same. */
async function mapIsAllocated(bs: BlockNode, offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }> {
  let r = await isAllocated(bs, offset, bytes);
  const first = r.allocated;
  let pnum = r.pnum;
  let num = r.pnum;
  while (bytes > 0) {
    offset += num;
    bytes -= num;
    if (bytes <= 0) break;
    r = await isAllocated(bs, offset, bytes);
    num = r.pnum;
    if (r.allocated === first && num) pnum += num;
    else break;
  }
  return { allocated: first, pnum };
}

const mapCmd: CmdInfo = {
  name: 'map',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'prints the allocated areas of a file',
  async fn(s) {
    const bs = s.blk!.node;
    let offset = 0;
    let bytes = s.blk!.getLength();
    while (bytes) {
      let r;
      try {
        r = await mapIsAllocated(bs, offset, bytes);
      } catch (e) {
        report(s, `Failed to get allocation status: ${strerror(e)}`);
        return -5;
      }
      if (!r.pnum) {
        report(s, 'Unexpected end of image');
        return -5;
      }
      const retstr = r.allocated ? '    allocated' : 'not allocated';
      out(s, `${cvtstr(r.pnum)} (0x${r.pnum.toString(16)}) bytes ${retstr} at offset ${cvtstr(offset)} (0x${offset.toString(16)})\n`);
      offset += r.pnum;
      bytes -= r.pnum;
    }
    return 0;
  },
};

const openCmd: CmdInfo = {
  name: 'open',
  altname: 'o',
  argmin: 1,
  argmax: -1,
  nofileOk: true,
  args: '[-rsCnkU] [-t cache] [-d discard] [-o options] [path]',
  oneline: 'open the file specified by path',
  help: `
 opens a new file in the requested mode

 Example:
 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached

 Opens a file for subsequent use by all of the other qemu-io commands.
 -r, -- open file read-only
 -s, -- use snapshot file
 -C, -- use copy-on-read
 -n, -- disable host cache, short for -t none
 -U, -- force shared permissions
 -k, -- use kernel AIO implementation (Linux only, prefer use of -i)
 -i, -- use AIO mode (threads, native or io_uring)
 -t, -- use the given cache mode for the image
 -d, -- use the given discard mode for the image
 -o, -- options to be given to the block driver
`,
  async fn(s, argv) {
    const p = cmdGetopt(s, this, argv, 'snCro:ki:t:d:U');
    if (!p) return EINVAL;
    const flags: OpenFlags = {
      readOnly: false,
      snapshot: false,
      cache: { direct: false, noFlush: false, writethrough: true },
      discardUnmap: true,
      copyOnRead: false,
      forceShare: false,
    };
    const opts: Record<string, string> = {};
    for (const o of p.options) {
      switch (o.key) {
        case 's':
          flags.snapshot = true;
          break;
        case 'n':
          flags.cache = { direct: true, noFlush: false, writethrough: false };
          break;
        case 'C':
          flags.copyOnRead = true;
          break;
        case 'r':
          flags.readOnly = true;
          break;
        case 'U':
          flags.forceShare = true;
          break;
        case 't': {
          const c = parseCacheMode(o.value!);
          if (!c) {
            report(s, `Invalid cache option: ${o.value}`);
            return EINVAL;
          }
          flags.cache = c;
          break;
        }
        case 'd': {
          const d = parseDiscard(o.value!);
          if (d === undefined) {
            report(s, `Invalid discard option: ${o.value}`);
            return EINVAL;
          }
          flags.discardUnmap = d;
          break;
        }
        case 'o':
          try {
            Object.assign(opts, optsToObject(parseQemuOpts(o.value!)));
          } catch (e) {
            report(s, errMessage(e));
            return EINVAL;
          }
          break;
      }
    }
    if (p.operands.length > 1) return usage(s, this);
    const ret = await openFile(s, p.operands[0], flags, opts);
    return ret ? EINVAL : 0;
  },
};

export function parseDiscard(mode: string): boolean | undefined {
  if (mode === 'off' || mode === 'ignore') return false;
  if (mode === 'on' || mode === 'unmap') return true;
  return undefined;
}

/** openfile(): returns non-zero on failure (after printing why). */
export async function openFile(s: IoState, name: string | undefined, flags: OpenFlags, opts: Record<string, string>, format?: string, imageOpts = false): Promise<number> {
  if (s.blk) {
    report(s, "file open already, try 'help close'");
    return 1;
  }
  let filename = name;
  let imgOpts = imageOpts;
  let fmt = format;
  let plainFilename = false;
  if (!imageOpts && Object.keys(opts).length) {
    // -o options: the options object, with the file name as file.filename (or filename for a protocol).
    const parts = Object.entries(opts).map(([k, v]) => `${k}=${v.replace(/,/g, ',,')}`);
    if (name !== undefined && !('file.filename' in opts) && !('filename' in opts) && !('file' in opts)) {
      parts.push(`filename=${name.replace(/,/g, ',,')}`);
      plainFilename = true;
    }
    if (fmt !== undefined && !('driver' in opts)) parts.unshift(`driver=${fmt}`);
    filename = parts.join(',');
    imgOpts = true;
    fmt = undefined;
  }
  if (filename === undefined) {
    report(s, "can't open: A block device must be specified");
    return 1;
  }
  try {
    const img = await openImage(s.ctx, s.graph, {
      filename,
      format: fmt,
      imageOpts: imgOpts,
      // qemu-io's option list names no implied key: a bare first element is a (deprecated) boolean flag.
      imageOptsImplied: null,
      // blk_new_open(name, NULL, opts): the name given with -o is a file name, as without options.
      plainFilename,
      readOnly: flags.readOnly,
      forceShare: flags.forceShare,
      cache: flags.cache,
      discardUnmap: flags.discardUnmap,
      copyOnRead: flags.copyOnRead,
      tempSnapshot: flags.snapshot,
      perm: Perm.CONSISTENT_READ | (flags.readOnly ? 0 : Perm.WRITE),
      shared: flags.forceShare ? PERM_ALL : Perm.CONSISTENT_READ | Perm.WRITE | Perm.WRITE_UNCHANGED,
      // With --image-opts qemu-io names no device: openfile() gets the options, not a name.
      errorPrefix: `can't open${name !== undefined && !imageOpts ? ` device ${name}` : ''}: `,
    });
    s.blk = img.blk;
    s.top = img.top;
    s.writethrough = flags.cache.writethrough;
  } catch (e) {
    s.ctx.err(`${PROGRAM}: ${oneLine(errMessage(e))}\n`);
    return 1;
  }
  return 0;
}

export async function closeFile(s: IoState): Promise<void> {
  await drainAio(s);
  const blk = s.blk;
  if (!blk) return;
  const node = blk.node;
  blk.remove();
  s.blk = null;
  s.top = null;
  // Close the whole stack this backend opened.
  const stack: BlockNode[] = [];
  const collect = (n: BlockNode) => {
    if (stack.includes(n)) return;
    stack.push(n);
    for (const c of n.children) collect(c.node);
  };
  collect(node);
  for (const n of stack) if (!n.closed && n.parents.length === 0) await s.graph.closeNode(n).catch(() => undefined);
  for (const n of stack) if (!n.closed && n.parents.length === 0) await s.graph.closeNode(n).catch(() => undefined);
}

const closeCmd: CmdInfo = {
  name: 'close',
  altname: 'c',
  argmin: 0,
  argmax: 0,
  oneline: 'close the current open file',
  async fn(s) {
    await closeFile(s);
    return 0;
  },
};

const reopenCmd: CmdInfo = {
  name: 'reopen',
  argmin: 0,
  argmax: -1,
  args: '[(-r|-w)] [-c cache] [-o options]',
  oneline: 'reopens an image with new options',
  help: `
 Changes the open options of an already opened image

 Example:
 'reopen -o lazy-refcounts=on' - activates lazy refcount writeback on a qcow2 image

 -r, -- Reopen the image read-only
 -w, -- Reopen the image read-write
 -c, -- Change the cache mode to the given value
 -o, -- Changes block driver options (cf. 'open' command)

`,
  async fn(s, argv) {
    const p = cmdGetopt(s, this, argv, 'c:o:rw');
    if (!p) return EINVAL;
    let ro: boolean | undefined;
    for (const o of p.options) {
      if (o.key === 'r') {
        if (ro === false) {
          report(s, 'Only one -r/-w option may be given');
          return EINVAL;
        }
        ro = true;
      } else if (o.key === 'w') {
        if (ro === true) {
          report(s, 'Only one -r/-w option may be given');
          return EINVAL;
        }
        ro = false;
      } else if (o.key === 'c') {
        const c = parseCacheMode(o.value!);
        if (!c) {
          report(s, `Invalid cache option: ${o.value}`);
          return EINVAL;
        }
        s.writethrough = c.writethrough;
      } else if (o.key === 'o') {
        report(s, 'Changing driver options with reopen -o is not supported');
        return EINVAL;
      }
    }
    if (p.operands.length) return usage(s, this);
    if (ro === undefined) return 0;
    const blk = s.blk!;
    try {
      if (ro) blk.setPerm(Perm.CONSISTENT_READ, blk.shared);
      await s.graph.reopen(blk.node, { readOnly: ro });
    } catch (e) {
      report(s, errMessage(e));
      return EINVAL;
    }
    return 0;
  },
};

const sleepCmd: CmdInfo = {
  name: 'sleep',
  argmin: 1,
  argmax: 1,
  nofileOk: true,
  oneline: 'waits for the given value in milliseconds',
  async fn(s, argv) {
    const m = /^\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(argv[1]!);
    const ms = m ? Number(argv[1]!.trim().replace(/^\+/, '')) : NaN;
    if (!(ms >= 0)) {
      out(s, `${argv[1]} is not a valid number\n`);
      return EINVAL;
    }
    await new Promise((r) => setTimeout(r, ms));
    return 0;
  },
};

const quitCmd: CmdInfo = {
  name: 'quit',
  altname: 'q',
  argmin: 0,
  argmax: 0,
  nofileOk: true,
  oneline: 'exit the program',
  async fn(s) {
    s.quit = true;
    return 0;
  },
};

const helpCmd: CmdInfo = {
  name: 'help',
  altname: '?',
  argmin: 0,
  argmax: 1,
  nofileOk: true,
  args: '[command]',
  oneline: 'help for one or all commands',
  async fn(s, argv) {
    if (argv.length < 2) {
      for (const ct of COMMANDS) out(s, oneLineHelp(ct.name, ct));
      out(s, "\nUse 'help commandname' for extended help.\n");
      return 0;
    }
    const ct = findCommand(argv[1]!);
    if (!ct) {
      out(s, `command ${argv[1]} not found\n`);
      return EINVAL;
    }
    out(s, oneLineHelp(argv[1]!, ct));
    if (ct.help) out(s, ct.help);
    return 0;
  },
};

function oneLineHelp(cmd: string, ct: CmdInfo): string {
  return `${cmd} ${ct.args !== undefined ? `${ct.args} ` : ''}-- ${ct.oneline}\n`;
}

/** The process "crashes": blockgraph io stops at once and skips the orderly close (no flush). */
export class IoCrash extends Error {
  constructor(readonly exitCode: number) {
    super(`crash ${exitCode}`);
  }
}

const abortCmd: CmdInfo = {
  name: 'abort',
  argmin: 0,
  argmax: 0,
  nofileOk: true,
  oneline: 'simulate a program crash using abort(3)',
  async fn() {
    // SIGABRT: a shell reports 128 + 6.
    throw new IoCrash(134);
  },
};

const sigraiseCmd: CmdInfo = {
  name: 'sigraise',
  argmin: 1,
  argmax: 1,
  nofileOk: true,
  args: 'signal',
  oneline: 'raises a signal',
  help: `
 raises the given signal

 Example:
 'sigraise 15' - raises SIGTERM

 Invokes raise(signal), where "signal" is the mandatory integer argument
 given to sigraise.

`,
  async fn(s, argv) {
    const sig = cvtnum(argv[1]!);
    if (sig < 0) {
      printCvtnumErr(s, sig, argv[1]!);
      return sig;
    } else if (sig > 65) {
      out(s, `signal argument '${argv[1]}' is too large to be a valid signal\n`);
      return EINVAL;
    }
    if (sig === 0) return 0;
    throw new IoCrash(128 + sig);
  },
};

/** blkdebug breakpoints: blockgraph has no blkdebug driver, so these report ENOTSUP as QEMU does without one. */
const breakCmd: CmdInfo = {
  name: 'break',
  argmin: 2,
  argmax: 2,
  args: 'event tag',
  oneline: 'sets a breakpoint on event and tags the stopped request as tag',
  async fn(s) {
    out(s, 'Could not set breakpoint: Operation not supported\n');
    return 0;
  },
};

const removeBreakCmd: CmdInfo = {
  name: 'remove_break',
  argmin: 1,
  argmax: 1,
  args: 'tag',
  oneline: 'remove a breakpoint by tag',
  async fn(s, argv) {
    out(s, `Could not remove breakpoint ${argv[1]}: Operation not supported\n`);
    return 0;
  },
};

const resumeCmd: CmdInfo = {
  name: 'resume',
  argmin: 1,
  argmax: 1,
  args: 'tag',
  oneline: 'resumes the request tagged as tag',
  async fn(s) {
    out(s, 'Could not resume request: Operation not supported\n');
    return 0;
  },
};

const waitBreakCmd: CmdInfo = {
  name: 'wait_break',
  argmin: 1,
  argmax: 1,
  args: 'tag',
  oneline: 'waits for the suspension of a request',
  async fn(s, argv) {
    // QEMU would wait forever for a breakpoint that cannot exist; say so instead.
    report(s, `Could not wait for breakpoint ${argv[1]}: Operation not supported`);
    return -95;
  },
};

/** The command table, sorted by name as qemu-io keeps it. */
export const COMMANDS: readonly CmdInfo[] = [
  abortCmd,
  breakCmd,
  removeBreakCmd,
  resumeCmd,
  sigraiseCmd,
  waitBreakCmd,
  aioFlushCmd,
  aioReadCmd,
  aioWriteCmd,
  allocCmd,
  closeCmd,
  discardCmd,
  flushCmd,
  helpCmd,
  infoCmd,
  lengthCmd,
  mapCmd,
  openCmd,
  quitCmd,
  readCmd,
  readvCmd,
  reopenCmd,
  sleepCmd,
  truncateCmd,
  writeCmd,
  writevCmd,
].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

function findCommand(name: string): CmdInfo | undefined {
  return COMMANDS.find((c) => c.name === name || c.altname === name);
}

/** breakline(): split on single spaces, empty words dropped (no quoting). */
function breakline(input: string): string[] {
  return input.split(' ').filter((w) => w !== '');
}

/** qemuio_command(): run one command line; returns 0 or a negative errno. */
export async function runCommand(s: IoState, line: string): Promise<number> {
  const v = breakline(line);
  if (!v.length) return 0;
  const ct = findCommand(v[0]!);
  if (!ct) {
    s.ctx.err(`command "${v[0]}" not found\n`);
    return EINVAL;
  }
  if (!ct.nofileOk && !s.blk) {
    s.ctx.err("no file open, try 'help open'\n");
    return EINVAL;
  }
  const argc = v.length - 1;
  if (argc < ct.argmin || (ct.argmax !== -1 && argc > ct.argmax)) {
    if (ct.argmax === -1) s.ctx.err(`bad argument count ${argc} to ${v[0]}, expected at least ${ct.argmin} arguments\n`);
    else if (ct.argmin === ct.argmax) s.ctx.err(`bad argument count ${argc} to ${v[0]}, expected ${ct.argmin} arguments\n`);
    else s.ctx.err(`bad argument count ${argc} to ${v[0]}, expected between ${ct.argmin} and ${ct.argmax} arguments\n`);
    return EINVAL;
  }
  if (ct.perm && s.blk) {
    const blk = s.blk;
    if (ct.perm & ~blk.perm) {
      try {
        if (blk.node.readOnly && ct.perm & (Perm.WRITE | Perm.RESIZE)) throw new Error('Block node is read-only');
        blk.setPerm(blk.perm | ct.perm, blk.shared);
      } catch (e) {
        report(s, errMessage(e));
        return -1;
      }
    }
  }
  return ct.fn(s, v);
}
