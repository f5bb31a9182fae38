/**
 * What the copy-on-read ports (197, 216, 310) and the COR-over-qcow2 tests share on top of helpers.ts: a Graph
 * with the qcow2 driver and the test filters, QEMU 7.2's qemu-img / qemu-io (which build the images the ports
 * start from and judge the images they leave behind, as the QEMU tests do), `blockgraph io` run in-process for
 * side-by-side runs against qemu-io, and `test-latency`, a filter that delays each request by a seeded random
 * number of event-loop turns (it widens race windows without the FIFO ordering of test-throttle).
 */
import { readFileSync } from 'node:fs';
import {
  ChildRole,
  defineBlockDriver,
  Graph,
  NO_CAPABILITIES,
  Perm,
  isAllocated,
  type BlockBackend,
  type BlockNode,
  type BlockDriver,
  type Child,
  type IOVector,
  type ReqFlags,
} from '@blockgraph/block-core';
import { main as blockgraphMain } from '@blockgraph/cli';
import { allRawDrivers } from '@blockgraph/driver-raw/file';
import { qcow2Driver } from '@blockgraph/driver-qcow2/node';
import { copyOnReadDriver } from '@blockgraph/filter-cor';
import { blkdebugDriver, testThrottleDriver, xorshift, type Prng } from '../../src/index.js';
import { runTool, type ToolResult } from './helpers.js';
import { childCapabilities, childWriteFlags, childZeroFlags } from '../../src/child-passthrough.js';

export const GiB = 1024 * 1024 * 1024;

// --- test-latency ------------------------------------------------------------------------------------------------


/** Yield to the event loop `n` times (each a setImmediate turn: pending I/O callbacks run in between). */
async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
}

/**
 * `{ driver: 'test-latency', file, seed, 'max-turns' }`: a pass-through filter whose reads, writes, zero writes
 * and discards each wait 0..max-turns turns of the event loop (seeded) before going down, and as long again
 * after coming back. Requests overtake each other freely, which is what a race test wants.
 */
export const testLatencyDriver: BlockDriver = defineBlockDriver({
  name: 'test-latency',
  kind: 'filter',
  description: 'Random per-request latency for race tests',
  capabilities: { ...NO_CAPABILITIES, write: true, storesData: true, zeroWrite: true, discard: true, blockStatus: true, flush: true, resize: true },
  options: {
    file: { type: 'ref', required: true },
    seed: { type: 'integer', min: 0, default: 1 },
    maxTurns: { type: 'integer', min: 0, default: 4 },
  },
  async open(ctx, o) {
    const file = (await ctx.openChild('file', o.file, ChildRole.FILTERED | ChildRole.PRIMARY)) as Child;
    const rnd: Prng = xorshift(o.seed as number);
    const max = o.maxTurns as number;
    const delay = (): Promise<void> => turns(max ? rnd.int(max + 1) : 0);
    const around = async (op: () => Promise<void>): Promise<void> => {
      await delay();
      await op();
      await delay();
    };
    return {
      getLength: () => file.node.totalBytes,
      get capabilities() {
        return childCapabilities(file);
      },
      get supportedWriteFlags() {
        return childWriteFlags(file);
      },
      get supportedZeroFlags() {
        return childZeroFlags(file);
      },
      preadv: (offset: number, bytes: number, qiov: IOVector, flags: ReqFlags) => around(() => file.preadv(offset, bytes, qiov, flags)),
      pwritev: (offset: number, bytes: number, qiov: IOVector, flags: ReqFlags) => around(() => file.pwritev(offset, bytes, qiov, flags)),
      pwriteZeroes: (offset: number, bytes: number, flags: ReqFlags) => around(() => file.pwriteZeroes(offset, bytes, flags)),
      pdiscard: (offset: number, bytes: number) => around(() => file.pdiscard(offset, bytes)),
      passthroughChild: (offset: number) => ({ child: file, offset }),
      async reopenPrepare() {
        // nothing to change
      },
    };
  },
});

export function newCorGraph(): Graph {
  return new Graph({ drivers: [...allRawDrivers, qcow2Driver, blkdebugDriver, testThrottleDriver, testLatencyDriver, copyOnReadDriver] });
}

/** qemu-io's blk_new_open() permissions: read and write; others may read, write and write unchanged. */
export const QEMU_IO_PERMS = { perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: Perm.CONSISTENT_READ | Perm.WRITE | Perm.WRITE_UNCHANGED };

/**
 * One `qemu-io -C` invocation: a fresh Graph with `image` (blockdev-add options), a `copy-on-read` filter 'cor'
 * above it, a backend on the filter with qemu-io's permissions; `fn` runs, then the graph is closed.
 */
export async function runCorStep<T>(image: Record<string, unknown>, fn: (blk: BlockBackend, g: Graph) => Promise<T>): Promise<T> {
  const g = newCorGraph();
  try {
    const img = await g.addNode(image);
    await g.addNode({ driver: 'copy-on-read', nodeName: 'cor', file: img.nodeName });
    const blk = g.backend('cor', { name: 'qemu-io', ...QEMU_IO_PERMS });
    return await fn(blk, g);
  } finally {
    await g.close();
  }
}

// --- QEMU's tools ------------------------------------------------------------------------------------------------

function must(tool: string, args: string[], r: ToolResult): string {
  if (r.status !== 0) throw new Error(`${tool} ${args.join(' ')} failed (${r.status}): ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

/** qemu-img, failing the test unless it exits 0; returns stdout. */
export function qemuImg(...args: string[]): string {
  return must('qemu-img', args, runTool('qemu-img', args));
}

/** qemu-io, failing the test unless it exits 0 and printed no error; returns stdout. */
export function qemuIo(...args: string[]): string {
  const r = runTool('qemu-io', args);
  const out = must('qemu-io', args, r);
  if (/Pattern verification failed/.test(r.stdout) || r.stderr.trim() !== '') {
    throw new Error(`qemu-io ${args.join(' ')} reported: ${(r.stdout + r.stderr).trim()}`);
  }
  return out;
}

/** `qemu-io -f qcow2 -c map` (the allocation map 197 prints). */
export function ioMap(path: string): string {
  return qemuIo('-f', 'qcow2', '-c', 'map', path);
}

/** `qemu-img map` piped through qemu-iotests' _filter_qemu_img_map (no "Mapped to" column, file names as given). */
export function imgMapFiltered(path: string, names: Record<string, string>): string {
  const out = qemuImg('map', '-f', 'qcow2', path);
  return out
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      const cols = l.split(/\s+/);
      // "Offset Length Mapped to File" header, then "off len mapped file" rows.
      if (cols[0] === 'Offset') return 'Offset          Length          File';
      const file = names[cols[3]!] ?? cols[3]!;
      return `${cols[0]!.padEnd(16)}${cols[1]!.padEnd(16)}${file}`;
    })
    .join('\n');
}

/**
 * `qemu-img map --output=json` with host offsets dropped and the extents they separated merged again (two
 * implementations may place clusters differently; what is allocated, zero or data must be the same).
 */
export function mapJsonNoOffsets(filename: string): Record<string, unknown>[] {
  const out = JSON.parse(qemuImg('map', '--output=json', filename)) as Record<string, unknown>[];
  const merged: Record<string, unknown>[] = [];
  for (const { offset: _o, ...e } of out) {
    const prev = merged[merged.length - 1];
    const same = prev && ['depth', 'present', 'zero', 'data'].every((k) => prev[k] === e[k]);
    if (prev && same && (prev.start as number) + (prev.length as number) === e.start) prev.length = (prev.length as number) + (e.length as number);
    else merged.push(e);
  }
  return merged;
}

/** `qemu-img check`; returns its output, fails unless the image is clean. */
export function checkClean(path: string): string {
  const out = qemuImg('check', path);
  if (!out.includes('No errors were found on the image.')) throw new Error(`qemu-img check ${path}: ${out}`);
  return out;
}

/** A json: filename for a qcow2 image opened without its backing file (its own data only). */
export function topAloneSpec(path: string): string {
  return `json:${JSON.stringify({ driver: 'qcow2', backing: null, file: { driver: 'file', filename: path } })}`;
}

/** The image's own content (backing dropped), read by qemu-img convert. */
export function readTopAloneWithQemu(path: string, scratchRaw: string): Uint8Array {
  qemuImg('convert', '-O', 'raw', topAloneSpec(path), scratchRaw);
  return new Uint8Array(readFileSync(scratchRaw));
}

/** qemu-iotests' _filter_qemu_io: the timing part of qemu-io's statistics lines. */
export function filterQemuIo(text: string): string {
  return text.replace(
    /[0-9]* ops; [0-9/:. sec]* \([0-9/.inf]* [EPTGMKiBbytes]*\/sec and [0-9/.inf]* ops\/sec\)/g,
    'X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)',
  );
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** `blockgraph <args>` in-process. */
export async function blockgraph(...argv: string[]): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const status = await blockgraphMain(argv, {
    stdout: { write: (s: string) => (stdout += s), isTTY: false },
    stderr: { write: (s: string) => (stderr += s), isTTY: false },
    env: {},
  });
  return { status, stdout, stderr };
}

/** qemu-io as blockgraph io would print it: program name swapped, timings filtered. */
export function qemuIoAsBlockgraph(args: string[]): RunResult {
  const r = runTool('qemu-io', args);
  return {
    status: r.status ?? -1,
    stdout: filterQemuIo(r.stdout),
    stderr: r.stderr.replace(/^qemu-io: /gm, 'blockgraph: '),
  };
}

/** `blockgraph io <args>` with timings filtered. */
export async function blockgraphIo(args: string[]): Promise<RunResult> {
  const r = await blockgraph('io', ...args);
  return { ...r, stdout: filterQemuIo(r.stdout) };
}

/** Is all of [offset, offset+bytes) allocated in `node` itself (bdrv_is_allocated, looped over its extents)? */
export async function allAllocated(node: BlockNode, offset: number, bytes: number): Promise<boolean> {
  for (let cur = offset; cur < offset + bytes; ) {
    const r = await isAllocated(node, cur, offset + bytes - cur);
    if (!r.allocated || r.pnum === 0) return false;
    cur += r.pnum;
  }
  return true;
}

/** Bytes of `buf` in [from, to) that differ from `value`; -1 when all match. */
export function firstNot(buf: Uint8Array, value: number, from = 0, to = buf.length): number {
  for (let i = from; i < to; i++) if (buf[i] !== value) return i;
  return -1;
}
