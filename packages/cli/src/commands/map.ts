/** blockgraph map — qemu-img map (get_block_status + the merging rule of qemu-img.c). */
import { BlockStatus, blockStatus, type BlockNode } from '@blockgraph/block-core';
import { FORCE_SHARE, HELP, IMAGE_OPTS, OBJECT, OUTPUT, cvtnum, parseArgs, parseOutputFormat } from '../lib/args.js';
import { CliError, usageError, type Ctx } from '../lib/context.js';
import { openImage, withGraph } from '../lib/open.js';
import { hex, padRight } from '../lib/printf.js';
import { strerror } from '../lib/strerror.js';

export interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
  offset?: number;
  depth: number;
  present: boolean;
  filename?: string;
}

const GiB = 2 ** 30;

/** get_block_status(): the first layer of the chain (filters skipped) that knows about [offset, +bytes). */
export async function getBlockStatus(top: BlockNode, offset: number, bytes: number): Promise<MapEntry> {
  let node = top.skipFilters();
  let depth = 0;
  let r;
  for (;;) {
    node = node.skipFilters();
    r = await blockStatus(node, true, offset, bytes);
    bytes = r.pnum;
    if (bytes === 0) throw new CliError('Unexpected end of image');
    if (r.ret & (BlockStatus.ZERO | BlockStatus.DATA)) break;
    const cow = node.backing?.node;
    if (!cow) {
      r = { ...r, ret: 0 };
      break;
    }
    node = cow;
    depth++;
  }
  const hasOffset = (r.ret & BlockStatus.OFFSET_VALID) !== 0 && r.map !== undefined;
  const e: MapEntry = {
    start: offset,
    length: bytes,
    data: (r.ret & BlockStatus.DATA) !== 0,
    zero: (r.ret & BlockStatus.ZERO) !== 0,
    depth,
    present: (r.ret & BlockStatus.ALLOCATED) !== 0,
  };
  if (hasOffset) {
    e.offset = r.map;
    if (r.file) e.filename = r.file.filename;
  }
  return e;
}

/** entry_mergeable(). */
export function mergeable(curr: MapEntry, next: MapEntry): boolean {
  if (curr.length === 0) return false;
  if (curr.zero !== next.zero || curr.data !== next.data || curr.depth !== next.depth || curr.present !== next.present) return false;
  if ((curr.filename !== undefined) !== (next.filename !== undefined)) return false;
  if ((curr.offset !== undefined) !== (next.offset !== undefined)) return false;
  if (curr.filename !== undefined && curr.filename !== next.filename) return false;
  if (curr.offset !== undefined && curr.offset + curr.length !== next.offset) return false;
  return true;
}

export function jsonEntry(e: MapEntry): string {
  let s = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
  if (e.offset !== undefined) s += `, "offset": ${e.offset}`;
  return `${s}}`;
}

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  const { options, operands } = parseArgs(argv, ':f:s:l:hU', [
    HELP,
    { name: 'format', arg: 'required', key: 'f' },
    OUTPUT,
    OBJECT,
    IMAGE_OPTS,
    FORCE_SHARE,
    { name: 'start-offset', arg: 'required', key: 's' },
    { name: 'max-length', arg: 'required', key: 'l' },
  ]);
  let fmt: string | undefined;
  let output: string | undefined;
  let imageOpts = false;
  let forceShare = false;
  let startOffset = 0;
  let maxLength = -1;
  for (const o of options) {
    if (o.key === 'f') fmt = o.value;
    else if (o.key === 'output') output = o.value;
    else if (o.key === 'image-opts') imageOpts = true;
    else if (o.key === 'U') forceShare = true;
    else if (o.key === 's') startOffset = cvtnum(ctx, 'start offset', o.value!);
    else if (o.key === 'l') maxLength = cvtnum(ctx, 'max length', o.value!);
    else if (o.key === 'object') throw new CliError('--object is not supported');
  }
  if (operands.length !== 1) throw usageError('Expecting one image file name');
  const filename = operands[0]!;
  const format = parseOutputFormat(output);

  return withGraph(ctx, async (graph) => {
    const img = await openImage(ctx, graph, { filename, format: fmt, imageOpts, readOnly: true, forceShare });
    const top = img.top;
    let buf = '';
    const flush = () => {
      if (buf) ctx.out(buf);
      buf = '';
    };
    if (format === 'human') buf += `${padRight('Offset', 16)}${padRight('Length', 16)}${padRight('Mapped to', 16)}File\n`;
    else buf += '[';
    let length = top.totalBytes;
    if (maxLength !== -1) length = Math.min(startOffset + maxLength, length);

    const dump = (e: MapEntry, next: MapEntry | undefined): void => {
      if (format === 'human') {
        if (e.data && e.offset === undefined) {
          flush();
          throw new CliError('File contains external, encrypted or compressed clusters.');
        }
        if (e.data && !e.zero) {
          buf += `${padRight(hex(e.start), 16)}${padRight(hex(e.length), 16)}${padRight(hex(e.offset ?? 0), 16)}${e.filename ?? ''}\n`;
        }
        // The human format ignores the distinction between 0, ZERO and ZERO|DATA: merge more.
        if (next && (!next.data || next.zero)) {
          next.data = false;
          next.zero = true;
        }
      } else {
        buf += jsonEntry(e);
        if (next) buf += ',\n';
      }
      if (buf.length > 1 << 16) flush();
    };

    let curr: MapEntry = { start: startOffset, length: 0, data: false, zero: false, depth: 0, present: false };
    try {
      while (curr.start + curr.length < length) {
        const offset = curr.start + curr.length;
        const n = Math.min(GiB, length - offset);
        let next: MapEntry;
        try {
          next = await getBlockStatus(top, offset, n);
        } catch (e) {
          if (e instanceof CliError) throw e;
          throw new CliError(`Could not read file metadata: ${strerror(e)}`);
        }
        if (mergeable(curr, next)) {
          curr.length += next.length;
          continue;
        }
        if (curr.length > 0) dump(curr, next);
        curr = next;
      }
      dump(curr, undefined);
    } finally {
      flush();
    }
    if (format === 'json') ctx.out(']\n');
    return 0;
  });
}
