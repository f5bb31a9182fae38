import type { Child } from './child.js';
import { BlockError } from './errors.js';
import type { BlockNode } from './node.js';
import { defaultChildPerms, Perm, PERM_ALL, permNames, type PermPair } from './perm.js';
import type { Transaction } from './transaction.js';

/** What a parent lets others use; an edge onto a force-share node shares everything (bdrv_child_perm). */
export function effectiveShared(edge: Child): number {
  return edge.node.common.forceShare ? PERM_ALL : edge.shared;
}

/** Cumulative perms of a node's parents: OR of uses, AND of shares. */
export function cumulativePerms(node: BlockNode): PermPair {
  let perm = 0;
  let shared = PERM_ALL;
  for (const p of node.parents) {
    perm |= p.perm;
    shared &= effectiveShared(p);
  }
  return { perm, shared };
}

/** bdrv_a_allow_b(): null if `a` tolerates what `b` uses, else QEMU's conflict message. */
function conflictMessage(node: BlockNode, a: Child, b: Child): string | null {
  const missing = b.perm & ~effectiveShared(a);
  if (!missing) return null;
  return (
    `Permission conflict on node '${node.nodeName}': permissions '${permNames(missing)}' are both required by ` +
    `${b.describe()} and unshared by ${a.describe()}.`
  );
}

export function checkParentConflicts(node: BlockNode): void {
  // QEMU keeps the newest parent first; iterate the same way so the same pair is named.
  const parents = [...node.parents].reverse();
  for (const a of parents) {
    for (const b of parents) {
      if (a === b) continue;
      const msg = conflictMessage(node, a, b);
      if (msg) throw new BlockError('EPERM', msg);
    }
  }
}

/** Nodes reachable downwards from `roots`, parents before children. */
export function topologicalOrder(roots: readonly BlockNode[]): BlockNode[] {
  const seen = new Set<BlockNode>();
  const out: BlockNode[] = [];
  const visit = (n: BlockNode): void => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const c of n.children) visit(c.node);
    out.push(n);
  };
  for (const r of roots) visit(r);
  return out.reverse();
}

export function childPermsFor(node: BlockNode, child: Child, cum: PermPair): PermPair {
  const p = node.impl.childPerm
    ? node.impl.childPerm(child, child.role, cum)
    : defaultChildPerms(child.role, cum, !node.readOnly);
  return p;
}

function refreshNode(node: BlockNode, tran: Transaction): void {
  checkParentConflicts(node);
  const cum = cumulativePerms(node);
  if (cum.perm & (Perm.WRITE | Perm.WRITE_UNCHANGED) && node.readOnly) {
    throw new BlockError('EPERM', `Read-only block node '${node.nodeName}' cannot support read-write users`);
  }
  if (cum.perm & Perm.WRITE && !(cum.perm & Perm.RESIZE) && node.totalBytes % node.limits.requestAlignment) {
    throw new BlockError(
      'EPERM',
      "Cannot get 'write' permission without 'resize': Image size is not a multiple of request alignment",
    );
  }
  const impl = node.impl;
  if (impl.checkPerm) {
    impl.checkPerm(cum.perm, cum.shared);
    tran.add({
      commit: () => impl.setPerm?.(cum.perm, cum.shared),
      abort: () => impl.abortPermUpdate?.(),
    });
  }
  const old = node.perms;
  node.perms = cum;
  tran.add({ abort: () => (node.perms = old) });
  for (const c of node.children) {
    const p = childPermsFor(node, c, cum);
    if (p.perm !== c.perm || p.shared !== c.shared) setEdgePerms(c, p, tran);
  }
}

export function setEdgePerms(c: Child, p: PermPair, tran: Transaction): void {
  const old = { perm: c.perm, shared: c.shared };
  c.perm = p.perm;
  c.shared = p.shared;
  tran.add({
    abort: () => {
      c.perm = old.perm;
      c.shared = old.shared;
    },
  });
}

/**
 * Recompute permissions of every node below `roots`, top-down, inside `tran` (bdrv_refresh_perms). Throws on the
 * first conflict; the caller aborts the transaction, which restores every edge.
 */
export function refreshPerms(roots: readonly BlockNode[], tran: Transaction): void {
  for (const node of topologicalOrder(roots)) {
    if (node.closed) continue;
    refreshNode(node, tran);
  }
}
