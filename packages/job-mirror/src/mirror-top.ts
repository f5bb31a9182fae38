/**
 * The mirror node (`mirror_top`): a filter the mirror job puts above the source, so every write a parent of the
 * source makes passes it. In background mode it forwards writes and marks them dirty; in write-blocking and
 * read-write-blocking modes it writes them to the source and then synchronously to the target.
 *
 * Its contract with a copy-on-read node above it (what makes read-write-blocking work, DESIGN.md §3):
 * - block status: a clean chunk (already on the target) is reported allocated, a dirty one unallocated, so
 *   copy-on-read copies exactly what the target lacks;
 * - WRITE_UNCHANGED writes go to the target only (the source already has the data) and make their chunks clean.
 * Outside those modes (or once the job is gone) the node is a plain pass-through filter.
 */
import {
  BlockStatus,
  ChildRole,
  defineBlockDriver,
  filterPerms,
  NO_CAPABILITIES,
  Perm,
  PERM_ALL,
  ReqFlag,
  type Child,
} from '@blockgraph/block-core';
import type { MirrorCopyMode } from './options.js';
import type { MirrorJob } from './mirror-job.js';

export interface MirrorTopState {
  /** Attached once the initial dirty scan is done; active mirroring starts then. */
  job: MirrorJob | null;
  copyMode: MirrorCopyMode;
  /** The job is leaving: take nothing, share everything. */
  stop: boolean;
  /** An active commit: the mirror node is above the top of the chain it commits. */
  isCommit?: boolean;
}

const states = new Map<string, MirrorTopState>();
let tokens = 0;

/** Hand a state object to the driver's open() through an opaque token option. */
export function registerMirrorTopState(state: MirrorTopState): string {
  const token = `mirror-top-${++tokens}`;
  states.set(token, state);
  return token;
}

export const mirrorTopDriver = defineBlockDriver({
  name: 'mirror_top',
  kind: 'filter',
  description: 'The mirror job’s node above its source (created by the job, not by users)',
  capabilities: { ...NO_CAPABILITIES, write: true, storesData: true, zeroWrite: true, discard: true, flush: true, blockStatus: true, reopen: true },
  options: {
    file: { type: 'ref', required: true },
    state: { type: 'string', required: true, description: 'internal' },
  },
  async open(ctx, options) {
    const state = states.get(options.state as string);
    if (!state) throw new Error('mirror_top can only be created by the mirror job');
    states.delete(options.state as string);
    const file = (await ctx.openChild('file', options.file, ChildRole.FILTERED | ChildRole.PRIMARY)) as Child;
    const active = (): MirrorJob | null => (state.job && state.copyMode !== 'background' && !state.stop ? state.job : null);
    return {
      getLength: () => file.node.totalBytes,
      getInfo: () => (state.job && !state.stop ? { clusterSize: state.job.granularity } : {}),
      get supportedWriteFlags() {
        return ReqFlag.WRITE_UNCHANGED | (file.node.supportedWriteFlags & ReqFlag.FUA);
      },
      get supportedZeroFlags() {
        return ReqFlag.WRITE_UNCHANGED | ReqFlag.NO_FALLBACK | (file.node.supportedZeroFlags & (ReqFlag.FUA | ReqFlag.MAY_UNMAP));
      },
      childPerm(_child, _role, parent) {
        if (state.stop) return { perm: 0, shared: PERM_ALL };
        const p = filterPerms(parent);
        // Weakness 3 of the seed series: nobody may write the source behind the mirror node's back while it
        // promises the target is in sync.
        if (state.copyMode !== 'background') p.shared &= ~Perm.WRITE;
        if (state.isCommit) {
          // The job unshares CONSISTENT_READ on the nodes above the base, which the chain's own backing edges would
          // want: the mirror node does not read consistently through them. It must also share WRITE, or the backing
          // edges below would refuse the job's writes to the base (QEMU's bdrv_mirror_top_child_perms()).
          p.perm &= ~Perm.CONSISTENT_READ;
          p.shared |= Perm.WRITE;
        }
        return p;
      },
      preadv(offset, bytes, qiov, flags) {
        return file.preadv(offset, bytes, qiov, flags);
      },
      pwritev(offset, bytes, qiov, flags) {
        const job = state.stop ? null : state.job;
        if (flags & ReqFlag.WRITE_UNCHANGED) {
          const a = active();
          if (a) return a.unchangedWrite('copy', offset, bytes, qiov, flags);
          return file.pwritev(offset, bytes, qiov, flags);
        }
        return job ? job.guestWrite('copy', offset, bytes, qiov, flags) : file.pwritev(offset, bytes, qiov, flags);
      },
      pwriteZeroes(offset, bytes, flags) {
        const job = state.stop ? null : state.job;
        if (flags & ReqFlag.WRITE_UNCHANGED) {
          const a = active();
          if (a) return a.unchangedWrite('zero', offset, bytes, null, flags);
          return file.pwriteZeroes(offset, bytes, flags);
        }
        return job ? job.guestWrite('zero', offset, bytes, null, flags) : file.pwriteZeroes(offset, bytes, flags);
      },
      pdiscard(offset, bytes) {
        const job = state.stop ? null : state.job;
        return job ? job.guestWrite('discard', offset, bytes, null, 0) : file.pdiscard(offset, bytes);
      },
      async flush() {
        await file.flush();
        // A flushed guest write is durable on the target too when the mode promises the target is in sync.
        await active()?.flushTargetForGuest();
      },
      blockStatus(_wantZero, offset, bytes) {
        const a = active();
        if (a) return a.mirrorTopBlockStatus(offset, bytes);
        return { status: BlockStatus.RAW | BlockStatus.OFFSET_VALID, pnum: bytes, map: offset, file: file.node };
      },
      passthroughChild(offset) {
        return active() ? null : { child: file, offset };
      },
    };
  },
});
