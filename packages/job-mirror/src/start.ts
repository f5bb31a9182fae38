import {
  alignUp,
  BlockError,
  defaultBitmapGranularity,
  isBlockError,
  Perm,
  PERM_ALL,
  type BlockNode,
  type Graph,
  type JobTxn,
} from '@blockgraph/block-core';
import { copyOnReadDriver } from '@blockgraph/filter-cor';
import { MirrorJob, type ActiveCommit } from './mirror-job.js';
import { mirrorTopDriver, registerMirrorTopState, type MirrorTopState } from './mirror-top.js';
import { DEFAULT_MIRROR_BUF_SIZE, normaliseMirrorOptions, validateMirrorOptions, type MirrorOptions } from './options.js';

function inChainBelow(top: BlockNode, node: BlockNode): boolean {
  for (let n = top.filterOrCowChild()?.node; n; n = n.filterOrCowChild()?.node) if (n === node) return true;
  return false;
}

/**
 * blockdev-mirror: put a mirror node above `device`, start a job copying it to `target`. Resolves once the job
 * runs; follow it with the graph's events or `job.waitFor('ready')`.
 */
export async function startMirror(graph: Graph, input: MirrorOptions | Record<string, unknown>, opts: { txn?: JobTxn } = {}): Promise<MirrorJob> {
  const o = normaliseMirrorOptions(input as Record<string, unknown>);
  validateMirrorOptions(o);
  return startMirrorJob(graph, o, opts.txn, undefined);
}

/**
 * mirror_start_job(): what blockdev-mirror and the active commit share. With `commit`, the target is the base
 * of the source's backing chain (commit_active_start): it may be smaller (it grows), the job shares write access
 * to it and to the nodes in between with the chain's own users, and the chain stays frozen while the job runs.
 */
export async function startMirrorJob(graph: Graph, o: MirrorOptions, txn: JobTxn | undefined, commit: ActiveCommit | undefined): Promise<MirrorJob> {
  if (!graph.registry.has(mirrorTopDriver.name)) graph.registry.register(mirrorTopDriver);
  if (!graph.registry.has(copyOnReadDriver.name)) graph.registry.register(copyOnReadDriver);

  const source = graph.getNode(o.device);
  const target = graph.getNode(o.target);
  if (source === target || source.skipFilters() === target.skipFilters()) {
    throw new BlockError('EINVAL', "Can't mirror node into itself");
  }
  if (!commit && inChainBelow(source, target.skipFilters())) {
    throw new BlockError('EINVAL', target.isFilter
      ? "Cannot mirror to a filter on top of a node in the source's backing chain"
      : `Cannot mirror to '${target.nodeName}': it is in the backing chain of '${source.nodeName}'`);
  }
  if (graph.isBelowOrSelf(source, target)) {
    throw new BlockError('EINVAL', `Cannot mirror to '${target.nodeName}': the source is part of it`);
  }
  const jobId = o.jobId ?? source.nodeName;
  if (o.jobId === undefined && source.implicit) throw new BlockError('EINVAL', 'An explicit job ID is required');
  if (graph.jobs.has(jobId)) throw new BlockError('EEXIST', `Job ID '${jobId}' already in use`);
  if (o.replaces !== undefined) {
    const r = graph.findNode(o.replaces);
    if (!r) throw new BlockError('EINVAL', `Failed to find node with node-name='${o.replaces}'`);
    if (r !== source && !inChainBelow(source, r)) {
      throw new BlockError('EINVAL', `Cannot replace '${o.replaces}' by a node mirrored from '${source.nodeName}', because it cannot be guaranteed that doing so would not lead to an abrupt change of visible data`);
    }
    if (r.totalBytes !== source.totalBytes) throw new BlockError('EINVAL', 'cannot replace image with a mirror image of different size');
  }
  const granularity = o.granularity || defaultBitmapGranularity(target);
  const bufSize = alignUp(o.bufSize || DEFAULT_MIRROR_BUF_SIZE, granularity);
  const copyMode = o.copyMode ?? 'background';
  const sync = o.sync;

  const state: MirrorTopState = { job: null, copyMode, stop: false, isCommit: commit !== undefined };
  const mirrorTop = await graph.insertFilter({
    driver: 'mirror_top',
    file: source.nodeName,
    state: registerMirrorTopState(state),
    ...(o.filterNodeName !== undefined ? { nodeName: o.filterNodeName } : {}),
  });
  let job: MirrorJob | undefined;
  try {
    // The base of an active commit is read through the chain above it while the job writes what it already has.
    const targetBackend = graph.backend(target, {
      perm: Perm.WRITE | (commit && target.totalBytes < source.totalBytes ? Perm.RESIZE : 0),
      shared: Perm.WRITE_UNCHANGED | (commit ? Perm.CONSISTENT_READ | Perm.WRITE : 0),
      disableRequestQueuing: true,
      describe: `${commit ? 'commit' : 'mirror'} job '${jobId}'`,
    });
    try {
      job = new MirrorJob({
        graph,
        id: jobId,
        source,
        mirrorTop,
        state,
        target,
        targetBackend,
        sync,
        granularity,
        bufSize,
        speed: o.speed ?? 0,
        onSourceError: o.onSourceError ?? 'report',
        onTargetError: o.onTargetError ?? 'report',
        unmap: o.unmap ?? true,
        zeroTarget: sync === 'full' && !o.targetIsZero,
        targetIsZero: o.targetIsZero ?? false,
        backingMode: o.backingMode ?? 'leave',
        replaces: o.replaces,
        commit,
        autoFinalize: o.autoFinalize ?? true,
        autoDismiss: o.autoDismiss ?? true,
        txn,
      });
    } catch (e) {
      targetBackend.remove();
      throw e;
    }
    // The job reads the source through the mirror node's edge; its own edges keep nodes from being resized.
    job.addNodeEdge('main node', mirrorTop, Perm.CONSISTENT_READ, Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED | Perm.WRITE);
    job.addNodeEdge('source', source, 0, Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED | Perm.WRITE);
    job.addNodeEdge('target', target, 0, PERM_ALL);
    if (commit) {
      // Writes to the base are seen by the nodes above it: they must let the job write (QEMU's intermediate nodes).
      for (let n = source.filterOrCowChild()?.node; n && n !== target; n = n.filterOrCowChild()?.node) {
        const filtersOnBase = n.skipFilters() === target.skipFilters();
        job.addNodeEdge('intermediate node', n, 0, Perm.WRITE_UNCHANGED | Perm.WRITE | (filtersOnBase ? Perm.CONSISTENT_READ : 0));
      }
      job.freezeCommitChain();
    }
  } catch (e) {
    if (job) job.cancel(true);
    state.stop = true;
    await graph.removeFilter(mirrorTop).catch(() => undefined);
    throw isBlockError(e) ? e : e;
  }
  job.start();
  return job;
}
