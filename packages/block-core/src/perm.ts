/**
 * Permission bits (BLK_PERM_*). Every edge says what its parent uses (`perm`) and what it lets other
 * parents use at the same time (`shared`); see DESIGN.md §2.4.
 */
export const Perm = {
  CONSISTENT_READ: 0x1,
  WRITE: 0x2,
  WRITE_UNCHANGED: 0x4,
  RESIZE: 0x8,
} as const;
export type PermBits = number;

export const PERM_ALL = 0xf;
/** Bits a filter forwards from its parents to its child. */
export const PERM_PASSTHROUGH = Perm.CONSISTENT_READ | Perm.WRITE | Perm.WRITE_UNCHANGED | Perm.RESIZE;
/** Bits a filter always shares (none since GRAPH_MOD was dropped in QEMU 6.2). */
export const PERM_UNCHANGED = PERM_ALL & ~PERM_PASSTHROUGH;

const NAMES: [number, string][] = [
  [Perm.CONSISTENT_READ, 'consistent read'],
  [Perm.WRITE, 'write'],
  [Perm.WRITE_UNCHANGED, 'write unchanged'],
  [Perm.RESIZE, 'resize'],
];

/** bdrv_perm_names(): "consistent read, write" in QEMU's fixed order. */
export function permNames(perm: PermBits): string {
  return NAMES.filter(([bit]) => perm & bit)
    .map(([, n]) => n)
    .join(', ');
}

/** Child roles (BdrvChildRole). */
export const ChildRole = {
  DATA: 1,
  METADATA: 2,
  FILTERED: 4,
  COW: 8,
  PRIMARY: 16,
  IMAGE: 1 | 2 | 16,
} as const;
export type ChildRoles = number;

export interface PermPair {
  perm: PermBits;
  shared: PermBits;
}

/**
 * bdrv_default_perms(): what a node needs from a child given the node's own cumulative perms (`perm`,
 * `shared`) and the child's role. `writable` is whether the node itself is opened read-write.
 */
export function defaultChildPerms(
  role: ChildRoles,
  parent: PermPair,
  writable: boolean,
  noIO = false,
): PermPair {
  if (role & ChildRole.FILTERED) return filterPerms(parent);
  if (role & ChildRole.COW) return cowPerms(parent);
  if (role & (ChildRole.DATA | ChildRole.METADATA)) return storagePerms(role, parent, writable, noIO);
  // A child with no role bits (e.g. a job's auxiliary edge) gets nothing and shares everything.
  return { perm: 0, shared: PERM_ALL };
}

export function filterPerms(parent: PermPair): PermPair {
  return {
    perm: parent.perm & PERM_PASSTHROUGH,
    shared: (parent.shared & PERM_PASSTHROUGH) | PERM_UNCHANGED,
  };
}

/** Backing files are read-only for their overlay; they share writes only if the overlay's users do. */
export function cowPerms(parent: PermPair): PermPair {
  let perm = 0;
  if (parent.perm & Perm.CONSISTENT_READ) perm |= Perm.CONSISTENT_READ;
  let shared = Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED;
  if (parent.shared & Perm.WRITE) shared |= Perm.WRITE | Perm.RESIZE;
  return { perm, shared };
}

/** bdrv_default_perms_for_storage(): a format owns its file; nobody else may write or resize it. */
export function storagePerms(role: ChildRoles, parent: PermPair, writable: boolean, noIO: boolean): PermPair {
  let { perm, shared } = filterPerms(parent);
  if (role & ChildRole.METADATA) {
    if (writable) perm |= Perm.WRITE | Perm.RESIZE;
    if (!noIO) perm |= Perm.CONSISTENT_READ;
    shared &= ~(Perm.WRITE | Perm.RESIZE);
  }
  if (role & ChildRole.DATA) {
    shared &= ~Perm.RESIZE;
    // Copy-on-read write-back allocates clusters in the format: a real write on the file.
    if (perm & Perm.WRITE_UNCHANGED) perm |= Perm.WRITE;
    if (perm & Perm.WRITE) perm |= Perm.RESIZE;
  }
  return { perm, shared };
}
