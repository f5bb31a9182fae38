/**
 * The `copy-on-read` filter (block/copy-on-read.c): reads through it copy data found in the backing chain into
 * the filtered node, so later reads find it there. With `bottom`, only data allocated above `bottom` is copied
 * (block-stream uses this); the chain from the filter down to `bottom` is frozen while the filter exists.
 *
 * The copy itself happens in block-core's request pipeline when the COPY_ON_READ flag reaches the node below;
 * block-core also extends the copy's exclusion to every pass-through layer down to the node holding the data,
 * so a write entering any of those layers is never overwritten by a stale copy-up.
 */
import {
  BlockError,
  ChildRole,
  defineBlockDriver,
  isAllocated,
  isAllocatedAbove,
  NO_CAPABILITIES,
  Perm,
  PERM_ALL,
  ReqFlag,
  type BlockNode,
  type Child,
  type IOVector,
  type PermPair,
  type ReqFlags,
} from '@blockgraph/block-core';

/** What the filter forwards from its parents (everything but WRITE_UNCHANGED, which it always takes). */
const PASSTHROUGH = Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE;

/** cor_child_perm(): the parents' perms plus WRITE_UNCHANGED; shares WRITE_UNCHANGED always. */
export function corChildPerm(parent: PermPair): PermPair {
  return {
    perm: (parent.perm & PASSTHROUGH) | Perm.WRITE_UNCHANGED,
    shared: (parent.shared & PASSTHROUGH) | (PERM_ALL & ~PASSTHROUGH),
  };
}

export const copyOnReadDriver = defineBlockDriver({
  name: 'copy-on-read',
  kind: 'filter',
  description: 'Copy data read from the backing chain into the node below',
  capabilities: {
    ...NO_CAPABILITIES,
    write: true,
    storesData: true,
    zeroWrite: true,
    discard: true,
    blockStatus: true,
    flush: true,
    resize: true,
    shrink: true,
    reopen: true,
  },
  options: {
    file: { type: 'ref', required: true, description: 'the node to filter' },
    bottom: { type: 'string', description: 'copy only data allocated above this node' },
  },
  async open(ctx, options) {
    const graph = ctx.graph;
    const file = (await ctx.openChild('file', options.file, ChildRole.FILTERED | ChildRole.PRIMARY)) as Child;
    let bottom: BlockNode | undefined;
    const bottomName = options.bottom as string | undefined;
    if (bottomName !== undefined) {
      bottom = graph.findNode(bottomName);
      if (!bottom) throw new BlockError('EINVAL', `Bottom node '${bottomName}' not found`);
      if (!bottom.opened || bottom.closed) throw new BlockError('EINVAL', `Bottom node '${bottomName}' not opened`);
      if (bottom.isFilter) throw new BlockError('EINVAL', `Bottom node '${bottomName}' is a filter`);
      let inChain = false;
      for (let n: BlockNode | undefined = file.node; n; n = n.filterOrCowChild()?.node) if (n === bottom) inChain = true;
      if (!inChain) {
        throw new BlockError('EINVAL', `Bottom node '${bottomName}' is not in the backing chain of '${file.node.nodeName}'`);
      }
      graph.freezeChain(ctx.node, bottom);
    }
    const node = ctx.node;
    const childZeroFlags = (): number => file.node.supportedZeroFlags & (ReqFlag.FUA | ReqFlag.MAY_UNMAP | ReqFlag.NO_FALLBACK);

    /** cor_co_preadv_part() with `bottom`: per extent, copy only what lies above bottom. */
    async function readAboveBottom(offset: number, bytes: number, qiov: IOVector | null, flags: ReqFlags): Promise<void> {
      let done = 0;
      while (done < bytes) {
        let localFlags = flags;
        const off = offset + done;
        let n: number;
        let allocatedHere: boolean;
        try {
          const r = await isAllocated(file.node, off, bytes - done);
          allocatedHere = r.allocated;
          n = r.pnum;
        } catch {
          allocatedHere = false;
          n = bytes - done;
        }
        if (!allocatedHere) {
          const next = file.node.backingChainNext();
          try {
            const r = next ? await isAllocatedAbove(next, bottom, true, off, n) : { depth: 0, pnum: n };
            if (r.depth > 0) localFlags |= ReqFlag.COPY_ON_READ;
            n = r.pnum;
          } catch {
            localFlags |= ReqFlag.COPY_ON_READ;
          }
          // The end of a backing file has been reached.
          if (n === 0) break;
        }
        if ((localFlags & (ReqFlag.PREFETCH | ReqFlag.COPY_ON_READ)) !== ReqFlag.PREFETCH) {
          await file.preadv(off, n, qiov ? qiov.slice(done, n) : null, localFlags);
        }
        done += n;
      }
    }

    return {
      getLength: () => file.node.totalBytes,
      supportedReadFlags: ReqFlag.PREFETCH,
      get supportedWriteFlags() {
        return ReqFlag.WRITE_UNCHANGED | (file.node.supportedWriteFlags & ReqFlag.FUA);
      },
      get supportedZeroFlags() {
        return ReqFlag.WRITE_UNCHANGED | childZeroFlags();
      },
      childPerm(_child, _role, parent) {
        return corChildPerm(parent);
      },
      preadv(offset, bytes, qiov, flags) {
        if (!bottom) return file.preadv(offset, bytes, flags & ReqFlag.PREFETCH ? null : qiov, flags | ReqFlag.COPY_ON_READ);
        return readAboveBottom(offset, bytes, flags & ReqFlag.PREFETCH ? null : qiov, flags);
      },
      pwritev(offset, bytes, qiov, flags) {
        return file.pwritev(offset, bytes, qiov, flags);
      },
      pwriteZeroes(offset, bytes, flags) {
        return file.pwriteZeroes(offset, bytes, flags);
      },
      pdiscard(offset, bytes) {
        return file.pdiscard(offset, bytes);
      },
      pwritevCompressed(offset, bytes, qiov) {
        return file.pwritevCompressed(offset, bytes, qiov);
      },
      passthroughChild(offset) {
        return { child: file, offset };
      },
      async close() {
        if (bottom) graph.unfreezeChain(node, bottom);
      },
    };
  },
});
