/**
 * Block status: what a node knows about a range (data, zeroes, allocated here or below, where it lives), and
 * the walk down filters and backing files (bdrv_co_block_status / bdrv_co_common_block_status_above).
 */
import { BlockStatus } from './flags.js';
import type { BlockNode } from './node.js';
import { alignDown, alignUp, checkNodeOpen } from './io.js';

export interface BlockStatusResult {
  /** BlockStatus bits, with ALLOCATED and EOF filled in by the core. */
  ret: number;
  /** Bytes the answer covers (0 only at or past the end). */
  pnum: number;
  map?: number;
  file?: BlockNode;
}

/** Status of one layer; follows RAW (pass-through) answers down to the node that knows. */
export async function blockStatus(node: BlockNode, wantZero: boolean, offset: number, bytes: number): Promise<BlockStatusResult> {
  checkNodeOpen(node);
  const total = node.totalBytes;
  if (offset >= total) return { ret: BlockStatus.EOF, pnum: 0 };
  bytes = Math.min(bytes, total - offset);
  if (bytes <= 0) return { ret: BlockStatus.EOF, pnum: 0 };
  let res: BlockStatusResult;
  const impl = node.impl;
  if (!impl.blockStatus) {
    const filtered = node.isFilter ? node.filteredChild() : undefined;
    if (filtered) {
      res = await blockStatus(filtered.node, wantZero, offset, bytes);
    } else if (node.driver.kind === 'protocol' || node.children.length === 0) {
      res = { ret: BlockStatus.DATA | BlockStatus.OFFSET_VALID | BlockStatus.ALLOCATED, pnum: bytes, map: offset, file: node };
    } else {
      res = { ret: BlockStatus.DATA | BlockStatus.ALLOCATED, pnum: bytes };
    }
  } else {
    node.inFlight++;
    try {
      const align = node.limits.requestAlignment;
      const aOff = alignDown(offset, align);
      const aEnd = alignUp(offset + bytes, align);
      const r = await impl.blockStatus(wantZero, aOff, aEnd - aOff);
      let pnum = r.pnum - (offset - aOff);
      if (pnum > bytes) pnum = bytes;
      let ret = r.status;
      let map = r.map !== undefined ? r.map + (offset - aOff) : undefined;
      let file = r.file;
      if (pnum <= 0) pnum = Math.min(bytes, align);
      if (ret & BlockStatus.RAW && file !== undefined && map !== undefined) {
        const sub = await blockStatus(file, wantZero, map, pnum);
        res = sub.pnum === 0 ? { ret: BlockStatus.ZERO | BlockStatus.ALLOCATED, pnum } : sub;
      } else {
        if (ret & (BlockStatus.DATA | BlockStatus.ZERO)) {
          ret |= BlockStatus.ALLOCATED;
        } else if (node.capabilities.backing) {
          const cow = node.backing;
          if (!cow) ret |= BlockStatus.ZERO;
          else if (wantZero && offset >= cow.node.totalBytes) ret |= BlockStatus.ZERO;
        }
        if (wantZero && ret & BlockStatus.RECURSE && file && file !== node && map !== undefined) {
          // The format says "data"; the protocol below may know that it reads as zeroes (a hole).
          const sub = await blockStatus(file, true, map, pnum);
          if (sub.ret & BlockStatus.EOF && (sub.pnum === 0 || sub.ret & BlockStatus.ZERO)) {
            ret |= BlockStatus.ZERO;
          } else {
            pnum = sub.pnum;
            ret |= sub.ret & BlockStatus.ZERO;
          }
        }
        ret &= ~(BlockStatus.RECURSE | BlockStatus.RAW);
        if (!(ret & BlockStatus.OFFSET_VALID)) {
          map = undefined;
          file = ret & BlockStatus.ALLOCATED ? file : undefined;
        }
        res = { ret, pnum, map, file };
      }
    } finally {
      if (--node.inFlight === 0) node.graph.kick();
    }
  }
  if (offset + res.pnum >= total) res = { ...res, ret: res.ret | BlockStatus.EOF };
  else res = { ...res, ret: res.ret & ~BlockStatus.EOF };
  return res;
}

export interface BlockStatusAboveResult extends BlockStatusResult {
  /** How many layers were asked (1 = `top` answered). */
  depth: number;
}

/**
 * Status of the chain from `top` down to `base` (bdrv_co_common_block_status_above). `base` undefined walks
 * the whole chain. A lower layer shorter than the upper one reads as zeroes, which counts as allocated there.
 */
export async function blockStatusAbove(
  top: BlockNode,
  base: BlockNode | undefined,
  includeBase: boolean,
  wantZero: boolean,
  offset: number,
  bytes: number,
): Promise<BlockStatusAboveResult> {
  if (!includeBase && top === base) return { ret: 0, pnum: bytes, depth: 0 };
  let r = await blockStatus(top, wantZero, offset, bytes);
  let depth = 1;
  if (r.pnum === 0 || r.ret & BlockStatus.ALLOCATED || top === base) return { ...r, depth };
  const eof = r.ret & BlockStatus.EOF ? offset + r.pnum : -1;
  bytes = r.pnum;
  for (let p = top.filterOrCowChild()?.node; p && (includeBase || p !== base); p = p.filterOrCowChild()?.node) {
    r = await blockStatus(p, wantZero, offset, bytes);
    depth++;
    if (r.pnum === 0) {
      r = { ret: BlockStatus.ZERO | BlockStatus.ALLOCATED, pnum: bytes, file: p };
      break;
    }
    if (r.ret & BlockStatus.ALLOCATED) {
      r = { ...r, ret: r.ret & ~BlockStatus.EOF };
      break;
    }
    if (p === base) break;
    bytes = r.pnum;
  }
  let ret = r.ret;
  if (offset + r.pnum === eof) ret |= BlockStatus.EOF;
  return { ...r, ret, depth };
}

/** bdrv_is_allocated(): allocated in `node` itself (not below). */
export async function isAllocated(node: BlockNode, offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }> {
  const r = await blockStatusAbove(node, node, true, false, offset, bytes);
  return { allocated: (r.ret & BlockStatus.ALLOCATED) !== 0, pnum: r.pnum };
}

/**
 * bdrv_is_allocated_above(): 0 if [offset, +pnum) is allocated nowhere in top..base (base included when
 * `includeBase`), else the depth of the first layer that has it.
 */
export async function isAllocatedAbove(
  top: BlockNode,
  base: BlockNode | undefined,
  includeBase: boolean,
  offset: number,
  bytes: number,
): Promise<{ depth: number; pnum: number }> {
  const r = await blockStatusAbove(top, base, includeBase, false, offset, bytes);
  return { depth: r.ret & BlockStatus.ALLOCATED ? r.depth : 0, pnum: r.pnum };
}
