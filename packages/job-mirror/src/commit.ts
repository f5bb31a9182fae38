/**
 * block-commit of the active layer (commit_active_start): a mirror job from the top of a backing chain into a
 * node below it. Everything allocated above the base is copied into it while the top stays in use; on
 * completion the base takes the top's place. The nodes between stay in the graph for their other users.
 */
import { BlockError, type BlockNode, type Graph, type JobTxn, type OnError } from '@blockgraph/block-core';
import type { MirrorJob } from './mirror-job.js';
import { startMirrorJob } from './start.js';
import { normaliseMirrorOptions } from './options.js';

/** block-commit's arguments for an active commit, camelCase (kebab-case accepted). */
export interface CommitOptions {
  /** Job ID; defaults to the device's name. */
  jobId?: string;
  /** The active layer: the top of the chain. */
  device: string;
  /** The node committed into; default: the bottom of the chain, as QMP's block-commit. */
  base?: string;
  /** Bytes per second; 0 = unlimited. */
  speed?: number;
  onError?: OnError;
  /** Name of the node put above the top while the job runs (generated when omitted). */
  filterNodeName?: string;
  autoFinalize?: boolean;
  autoDismiss?: boolean;
}

function below(node: BlockNode): BlockNode | undefined {
  return node.filterOrCowChild()?.node;
}

/** bdrv_find_overlay(): the image (filters skipped) whose next image down is `base`. */
function findOverlay(active: BlockNode, base: BlockNode): BlockNode | undefined {
  const b = base.skipFilters();
  for (let n: BlockNode | undefined = active.skipFilters(); n; ) {
    const next = n.backingChainNext();
    if (next === b) return n;
    n = next;
  }
  return undefined;
}

const ON_ERROR = ['report', 'ignore', 'stop', 'enospc', 'auto'];

export async function startCommit(graph: Graph, input: CommitOptions | Record<string, unknown>, opts: { txn?: JobTxn } = {}): Promise<MirrorJob> {
  const o = normaliseMirrorOptions(input as Record<string, unknown>) as unknown as CommitOptions;
  if (typeof o.device !== 'string') throw new BlockError('EINVAL', "Parameter 'device' is missing");
  const top = graph.getNode(o.device);
  let base: BlockNode | undefined;
  if (o.base !== undefined) {
    base = graph.getNode(o.base);
  } else {
    for (let n = below(top); n; n = below(n)) base = n;
  }
  if (!base || base === top) throw new BlockError('EINVAL', 'cannot commit an image into itself');
  if (o.onError !== undefined && !ON_ERROR.includes(o.onError)) {
    throw new BlockError('EINVAL', `Parameter 'on-error' does not accept value '${String(o.onError)}'`);
  }
  if (o.speed !== undefined && (!Number.isSafeInteger(o.speed) || o.speed < 0)) {
    throw new BlockError('EINVAL', "Parameter 'speed' expects a non-negative value");
  }
  const overlay = findOverlay(top, base);
  if (!overlay) throw new BlockError('EINVAL', `'${base.nodeName}' is not in the backing chain of '${top.nodeName}'`);

  const baseReadOnly = base.readOnly;
  if (baseReadOnly) await graph.reopen(base, { readOnly: false });
  try {
    return await startMirrorJob(
      graph,
      {
        jobId: o.jobId,
        device: top.nodeName,
        target: base.nodeName,
        sync: 'top',
        speed: o.speed,
        onSourceError: o.onError,
        onTargetError: o.onError,
        filterNodeName: o.filterNodeName,
        autoFinalize: o.autoFinalize,
        autoDismiss: o.autoDismiss,
      },
      opts.txn,
      { baseOverlay: overlay, baseReadOnly },
    );
  } catch (e) {
    if (baseReadOnly) await graph.reopen(base, { readOnly: true }).catch(() => undefined);
    throw e;
  }
}
