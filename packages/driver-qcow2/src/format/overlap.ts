/**
 * QEMU's metadata overlap check sections (QCOW2_OL_*): the driver checks them before every metadata or data
 * write, the check module before its repairs. A write landing on one marks the image corrupt.
 */
export const Overlap = {
  MAIN_HEADER: 1 << 0,
  ACTIVE_L1: 1 << 1,
  ACTIVE_L2: 1 << 2,
  REFCOUNT_TABLE: 1 << 3,
  REFCOUNT_BLOCK: 1 << 4,
  SNAPSHOT_TABLE: 1 << 5,
  INACTIVE_L1: 1 << 6,
  INACTIVE_L2: 1 << 7,
  BITMAP_DIRECTORY: 1 << 8,
} as const;

/** Section names as QEMU prints them, by bit number ("overlaps with active L1 table"). */
export const OVERLAP_NAMES = [
  'qcow2_header',
  'active L1 table',
  'active L2 table',
  'refcount table',
  'refcount block',
  'snapshot table',
  'inactive L1 table',
  'inactive L2 table',
  'bitmap directory',
] as const;

/** QEMU's overlap-check templates. */
export const OVERLAP_CONSTANT =
  Overlap.MAIN_HEADER | Overlap.ACTIVE_L1 | Overlap.REFCOUNT_TABLE | Overlap.SNAPSHOT_TABLE | Overlap.BITMAP_DIRECTORY;
export const OVERLAP_CACHED = OVERLAP_CONSTANT | Overlap.ACTIVE_L2 | Overlap.REFCOUNT_BLOCK | Overlap.INACTIVE_L1;
export const OVERLAP_ALL = OVERLAP_CACHED | Overlap.INACTIVE_L2;
