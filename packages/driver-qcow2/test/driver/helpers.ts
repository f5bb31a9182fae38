/// <reference types="node" />
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { BlockStatus, Graph, blockStatus, isBlockError, type BlockNode, type BlockBackend, type Options } from '@blockgraph/block-core';
import { expect } from 'vitest';
import { allRawDrivers } from '@blockgraph/driver-raw/file';
import { qcow2Driver } from '../../src/node/index.js';

export { Workdir, dataView } from '../format/qemu.js';
import { hasQemu as hasQemuImg, type Workdir } from '../format/qemu.js';
import { appendExtent, type Extent } from '../format/map.js';

/** qemu-img and qemu-io are both the oracle here; under CI=true their absence fails the suite. */
export const hasQemu = hasQemuImg && spawnSync('qemu-io', ['--version'], { encoding: 'utf8' }).status === 0;
if (!hasQemu && process.env.CI === 'true') throw new Error('qemu-img and qemu-io are required when CI=true (install qemu-utils)');

/** A graph with the file/raw drivers and qcow2 (Node codecs). */
export function newGraph(): Graph {
  return new Graph({ drivers: [...allRawDrivers, qcow2Driver] });
}

/** Open a qcow2 image read-write (discard=unmap, like qemu-io -d unmap) with a backend on it. */
export async function openQcow2(
  graph: Graph,
  filename: string,
  opts: { readOnly?: boolean; options?: Options } = {},
): Promise<{ node: BlockNode; be: BlockBackend }> {
  const node = await graph.addNode({
    driver: 'qcow2',
    readOnly: opts.readOnly ?? false,
    discard: 'unmap',
    file: { driver: 'file', filename },
    ...(opts.options ?? {}),
  });
  const be = graph.backend(node);
  return { node, be };
}

export { prng, randInt } from './helpers-prng.js';

/** Exit status of a command (stdout+stderr kept for messages). */
export function run(cmd: string, args: string[], cwd?: string): { status: number | null; out: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return { status: r.status, out: (r.stdout ?? '') + (r.stderr ?? '') };
}

/** `qemu-img check` status and output (0 clean, 2 corrupt, 3 leaks). */
export function qemuCheck(image: string): { status: number | null; out: string } {
  return run('qemu-img', ['check', image]);
}

/** Guest content as qemu-img sees it (convert to raw). */
export function qemuRawContent(image: string, tmp: string): Buffer {
  const r = run('qemu-img', ['convert', '-U', '-O', 'raw', image, tmp]);
  if (r.status !== 0) throw new Error(`qemu-img convert failed: ${r.out}`);
  return readFileSync(tmp);
}

/** Read the whole disk through a backend in chunks. */
export async function readAll(be: BlockBackend, size: number, chunk = 4 * 1024 * 1024): Promise<Uint8Array> {
  const out = new Uint8Array(size);
  for (let off = 0; off < size; off += chunk) {
    const n = Math.min(chunk, size - off);
    await be.pread(off, out.subarray(off, off + n));
  }
  return out;
}

/** Index of the first differing byte, or -1. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

export const fill = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

/** Every byte of `data` is `v` (toEqual on megabytes of typed array takes seconds). */
export const allBytes = (data: Uint8Array, v: number): boolean => data.every((b) => b === v);

/** `p` rejects with a BlockError of `code` (and a message matching `message`). */
export async function expectCode(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    expect(isBlockError(e) ? e.code : e).toBe(code);
    if (message) expect((e as Error).message).toMatch(message);
    return;
  }
  throw new Error(`expected ${code}`);
}

/** One entry of `qemu-img map --output=json`. */
export type MapExtent = Extent & { depth: number };

/** `qemu-img map --output=json` from our block status, with qemu-img's own walk down the backing chain. */
export async function blockgraphMap(node: BlockNode): Promise<MapExtent[]> {
  const out: MapExtent[] = [];
  const size = node.totalBytes;
  for (let off = 0; off < size; ) {
    let depth = 0;
    let n: BlockNode = node;
    let bytes = size - off;
    let r = await blockStatus(n, true, off, bytes);
    for (;;) {
      if (r.ret & (BlockStatus.ZERO | BlockStatus.DATA)) break;
      const cow = n.backing?.node;
      if (!cow) {
        r = { ...r, ret: 0 };
        break;
      }
      bytes = r.pnum;
      n = cow;
      depth++;
      r = await blockStatus(n, true, off, bytes);
      if (r.pnum === 0) {
        r = { ret: BlockStatus.ZERO, pnum: bytes };
        break;
      }
    }
    const e: MapExtent = {
      start: off,
      length: r.pnum,
      depth,
      present: (r.ret & BlockStatus.ALLOCATED) !== 0,
      zero: (r.ret & BlockStatus.ZERO) !== 0,
      data: (r.ret & BlockStatus.DATA) !== 0,
    };
    if (r.ret & BlockStatus.OFFSET_VALID && r.map !== undefined) e.offset = r.map;
    appendExtent(out, e);
    off += r.pnum;
  }
  return out;
}

/** `qemu-img map --output=json` of `image` in `w`. */
export function qemuImgMap(w: Workdir, image: string): MapExtent[] {
  const r = run('qemu-img', ['map', '--output=json', image], w.dir);
  return (JSON.parse(r.out) as MapExtent[]).map(({ start, length, depth, present, zero, data, offset }) =>
    offset === undefined ? { start, length, depth, present, zero, data } : { start, length, depth, present, zero, data, offset },
  );
}
