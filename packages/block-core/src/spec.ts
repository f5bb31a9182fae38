/**
 * The BlockDriver contract, spec version 1. A driver is a static descriptor plus an `open()` that returns the
 * per-node implementation. Everything optional has a generic fallback in the request pipeline or yields a
 * clear "not supported" error; declared capabilities tell users and the conformance suite what to expect.
 *
 * Third-party drivers implement this interface and register into a `DriverRegistry`. The contract is versioned:
 * a driver states `specVersion: 1`; the core refuses drivers of versions it does not know.
 */
import type { BlockNode } from './node.js';
import type { Child } from './child.js';
import type { Graph } from './graph.js';
import type { IOVector } from './iovec.js';
import type { OptionSchema, Options } from './options.js';
import type { PermBits, PermPair, ChildRoles } from './perm.js';
import type { ReqFlags } from './flags.js';
import type { BlockErrorCode } from './errors.js';

export const BLOCK_DRIVER_SPEC_VERSION = 1 as const;

export type DriverKind = 'protocol' | 'format' | 'filter';

export interface DriverCapabilities {
  /** Can be opened read-write. */
  write: boolean;
  /** Reads return what was written (false for null-co, which drops writes). */
  storesData: boolean;
  /** Efficient zero writes; without it the core writes zero-filled buffers. */
  zeroWrite: boolean;
  /** Discard does something (it is advisory; see `discardZeroes`). */
  discard: boolean;
  /** A discarded range reads back as zeroes. */
  discardZeroes: boolean;
  /** Block status tells holes and zeroes apart from data (otherwise everything is reported as data). */
  blockStatus: boolean;
  /** Flush reaches stable storage (false for purely in-memory nodes, where flush is a no-op). */
  flush: boolean;
  /** Can grow by truncate. */
  resize: boolean;
  /** Can shrink by truncate. */
  shrink: boolean;
  /** Writes past the end grow the node. */
  growOnWrite: boolean;
  /** Has a backing-file (COW) child concept. */
  backing: boolean;
  /** Can switch between read-only and read-write with reopen. */
  reopen: boolean;
  create: boolean;
  check: boolean;
  snapshots: boolean;
  compressedWrite: boolean;
}

export const NO_CAPABILITIES: DriverCapabilities = {
  write: false,
  storesData: false,
  zeroWrite: false,
  discard: false,
  discardZeroes: false,
  blockStatus: false,
  flush: false,
  resize: false,
  shrink: false,
  growOnWrite: false,
  backing: false,
  reopen: false,
  create: false,
  check: false,
  snapshots: false,
  compressedWrite: false,
};

export interface BlockLimits {
  /** Requests reaching the driver are aligned to this (power of two). */
  requestAlignment: number;
  /** Largest request the driver takes at once; 0 = no limit. */
  maxTransfer: number;
  optTransfer: number;
  pdiscardAlignment: number;
  maxPdiscard: number;
  pwriteZeroesAlignment: number;
  maxPwriteZeroes: number;
}

export type PreallocMode = 'off' | 'metadata' | 'falloc' | 'full';

export interface BlockStatusReply {
  /** BlockStatus bits for this layer only (DATA, ZERO, OFFSET_VALID, RAW, RECURSE). 0 = "not here, ask backing". */
  status: number;
  /** Bytes the answer covers, > 0 (may exceed the request). */
  pnum: number;
  /** Offset in `file` (with OFFSET_VALID or RAW). */
  map?: number;
  /** The node holding the data at `map` (with OFFSET_VALID or RAW). */
  file?: BlockNode;
}

export interface DriverInfo {
  clusterSize?: number;
  /** Subcluster size for formats with extended L2 entries. */
  subclusterSize?: number;
  isDirty?: boolean;
  backingFilename?: string;
  backingFormat?: string;
  /** Where internal snapshots keep VM state in the guest address space (qemu-io's "vm state offset"). */
  vmStateOffset?: number;
  /** The image is encrypted (qemu-img info's "encrypted: yes"). */
  encrypted?: boolean;
}

/** qemu-img measure's answer (bytes). */
export interface MeasureResult {
  required: number;
  fullyAllocated: number;
  /** Bytes of persistent bitmaps that would be copied along (qcow2). */
  bitmaps?: number;
}

/** qemu-img check's ImageCheck result. */
export interface CheckResult {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset?: number;
  totalClusters?: number;
  allocatedClusters?: number;
  fragmentedClusters?: number;
  compressedClusters?: number;
  /**
   * Per-problem lines, as qemu-img prints them on stderr; those its error_report() prefixes with the program name
   * start with 'qemu-img: ' (a tool prints its own name there).
   */
  messages: string[];
  /** After a repair the driver re-checks; this is the first pass's counts (what was found and repaired). */
  firstPass?: { corruptions: number; leaks: number };
  /** Rebuilt refcount structures etc. — extra lines for the human output. */
  notes?: string[];
  /**
   * The check could not complete (QEMU's bdrv_check returned -errno): qemu-img then prints no report, only
   * "Check failed: <strerror>", and exits with 1. The counters are not meaningful.
   */
  checkFailed?: BlockErrorCode;
}

export type CheckFix = 'none' | 'leaks' | 'all';

export interface SnapshotInfo {
  id: string;
  name: string;
  vmStateSize: number;
  dateSec: number;
  dateNsec: number;
  /**
   * The guest clock when the snapshot was taken, in ns. A 64-bit value: 2^53 ns is only 104 days, so a driver
   * returns a bigint where a number would not be exact (qcow2 always does); readers take either.
   */
  vmClockNsec: number | bigint;
  /** Instructions executed (record/replay), signed 64-bit as QEMU reports it; absent when not recorded. */
  icount?: number | bigint;
}

export interface ReopenState {
  readOnly: boolean;
  options: Options;
}

/** The per-node implementation a driver's `open()` returns. */
export interface BlockDriverInstance {
  /** Size in bytes. Called at open and after truncate. */
  getLength(): number | Promise<number>;

  /** Per-instance refinement of the driver's static capabilities (e.g. no native helper here). */
  readonly capabilities?: Partial<DriverCapabilities>;
  readonly supportedReadFlags?: ReqFlags;
  readonly supportedWriteFlags?: ReqFlags;
  readonly supportedZeroFlags?: ReqFlags;
  /**
   * Flags `truncate()` honours; only ZERO_WRITE means anything (the grown area reads as zeroes, whatever is below
   * or behind it). The core asks for it when a node grows over a longer backing file, and refuses a resize with a
   * flag the driver does not declare (QEMU's supported_truncate_flags).
   */
  readonly supportedTruncateFlags?: ReqFlags;
  /**
   * A child changed size (someone resized the node below). Drivers whose size follows a child's (raw without
   * a window) update themselves here; the core then re-reads `getLength()` if it answers synchronously.
   */
  childResized?(child: Child): void;
  /** The node's backing child was set, replaced or removed at runtime (blockdev-snapshot, blockdev-reopen). */
  backingChanged?(): void;
  /** Called whenever the graph below changes; the core merges the children's limits first. */
  refreshLimits?(merged: BlockLimits): Partial<BlockLimits>;
  /** A name that describes the data, e.g. the file name; formats inherit their file's. */
  readonly filename?: string;

  /** A driver listing PREFETCH in `supportedReadFlags` may get PREFETCH reads with a null `qiov` (copy, don't fill). */
  preadv?(offset: number, bytes: number, qiov: IOVector, flags: ReqFlags): Promise<void>;
  pwritev?(offset: number, bytes: number, qiov: IOVector, flags: ReqFlags): Promise<void>;
  /** Throw BlockError ENOTSUP to let the core fall back to writing a zero buffer. */
  pwriteZeroes?(offset: number, bytes: number, flags: ReqFlags): Promise<void>;
  pdiscard?(offset: number, bytes: number): Promise<void>;
  pwritevCompressed?(offset: number, bytes: number, qiov: IOVector): Promise<void>;
  blockStatus?(wantZero: boolean, offset: number, bytes: number): Promise<BlockStatusReply> | BlockStatusReply;
  /**
   * Copy offloading, source side (bdrv_co_copy_range_from): copy `bytes` at `offset` of this node, which its
   * parent reaches through `src`, to `dst` at `dstOffset` without reading them into a buffer. A driver hands the
   * range on: to the child that holds the bytes (`child.copyRangeFrom`), or, at the bottom, to the destination
   * (`dst.copyRangeTo`). Throw BlockError ENOTSUP where that is not possible; callers then copy through a buffer.
   */
  copyRangeFrom?(src: Child, offset: number, dst: Child, dstOffset: number, bytes: number, readFlags: ReqFlags, writeFlags: ReqFlags): Promise<void>;
  /**
   * Copy offloading, destination side (bdrv_co_copy_range_to): `dst` is the edge into this node. A format
   * allocates where the range goes and hands it on to its file (`file.copyRangeTo`); a protocol driver copies.
   */
  copyRangeTo?(src: Child, srcOffset: number, dst: Child, offset: number, bytes: number, readFlags: ReqFlags, writeFlags: ReqFlags): Promise<void>;
  /**
   * For pass-through drivers (filters, raw): the child that holds the bytes at `offset`, and the offset there.
   * The core uses it to extend copy-on-read exclusion to every layer a copy-up goes through.
   */
  passthroughChild?(offset: number): { child: Child; offset: number } | null;

  /** Flush the whole stack below in one call (filters that fan out, e.g. mirror_top). */
  flush?(): Promise<void>;
  /** Write cached state (metadata caches) down to the children. */
  flushToOs?(): Promise<void>;
  /** Make written data durable (fdatasync). */
  flushToDisk?(): Promise<void>;

  truncate?(offset: number, exact: boolean, prealloc: PreallocMode, flags: ReqFlags): Promise<void>;
  getInfo?(): DriverInfo;
  getSpecificInfo?(): { type: string; data: Record<string, unknown> } | undefined;
  getAllocatedFileSize?(): Promise<number>;
  /**
   * bdrv_co_delete_file(): remove the storage this protocol node is open on (a format's create() does it when it
   * fails half way, so that no unusable file is left behind). The node stays open until it is closed.
   */
  deleteFile?(): Promise<void>;
  /** A freshly created image reads as zeroes (lets jobs skip zeroing the target). */
  hasZeroInit?(): boolean;

  /** Perms this node needs on `child` given its own cumulative perms; default: by the child's role. */
  childPerm?(child: Child, role: ChildRoles, parent: PermPair): PermPair;
  /** Permission transaction hooks (image locking): check may throw; then exactly one of set/abort follows. */
  checkPerm?(perm: PermBits, shared: PermBits): void;
  setPerm?(perm: PermBits, shared: PermBits): void;
  abortPermUpdate?(): void;

  reopenPrepare?(state: ReopenState): Promise<void>;
  reopenCommit?(state: ReopenState): void;
  reopenAbort?(state: ReopenState): void;

  drainBegin?(): void;
  drainEnd?(): void;
  close?(): Promise<void>;

  check?(fix: CheckFix): Promise<CheckResult>;
  /** qemu-img amend: change creation options of an open image (validated against the driver's amendOptions). */
  amend?(options: Options): Promise<void>;
  /** Rewrite the backing file name/format recorded in the image (qemu-img rebase, -u). */
  changeBackingFile?(filename: string | undefined, format: string | undefined): Promise<void>;
  snapshotList?(): Promise<SnapshotInfo[]>;
  snapshotCreate?(info: { id?: string; name: string; dateSec?: number; dateNsec?: number }): Promise<void>;
  snapshotGoto?(idOrName: string): Promise<void>;
  snapshotDelete?(id: string | undefined, name: string | undefined): Promise<void>;
  /**
   * Make a read-only node show an internal snapshot instead of the active image until it is closed
   * (bdrv_snapshot_load_tmp; `qemu-img convert -l`). Matches `id` and/or `name`, both when both are given; the
   * guest size stays the active one. Call it through block-core's `snapshotLoadTmp()`, which checks read-only.
   * Errors: ENOENT "Can't find snapshot", EINVAL/EFBIG for a bad snapshot L1 table.
   */
  snapshotLoadTmp?(id: string | undefined, name: string | undefined): Promise<void>;
  /**
   * Drop everything the image holds, so that it reads as its backing file (bdrv_make_empty; qemu-img commit
   * empties the committed top). Called through `BlockBackend.makeEmpty()`, by a user with write permission.
   */
  makeEmpty?(): Promise<void>;
  /**
   * The VM state area of internal snapshots (bdrv_save_vmstate / bdrv_load_vmstate; qemu-io's `write -b` /
   * `read -b`): `pos` counts from the start of that area, which lies outside the guest disk. A node without these
   * passes the request to its primary child; where nobody has them it is ENOTSUP.
   */
  saveVmstate?(qiov: IOVector, pos: number): Promise<void>;
  loadVmstate?(qiov: IOVector, pos: number): Promise<void>;
}

/** What a driver's `open()` can do: see its node, open children through the graph. */
export interface OpenContext {
  readonly graph: Graph;
  readonly node: BlockNode;
  readonly readOnly: boolean;
  /**
   * Attach a child. `ref` is a node name (existing node) or an options object (a new implicit node). With
   * `optional`, an undefined/null ref yields null instead of an error. A format's backing child can be
   * replaced at runtime (Graph.snapshot, Graph.setBacking): read it from `node.backing` when you need it.
   */
  openChild(name: string, ref: unknown, role: ChildRoles, opts?: { optional?: boolean }): Promise<Child | null>;
  /**
   * Open an image named by a filename found inside another image (a backing file): the name is resolved
   * against this node's file name and opened with the same protocol, with `format` or by probing.
   */
  openImageByName(name: string, filename: string, format: string | undefined, role: ChildRoles): Promise<Child>;
}

export interface BlockDriver {
  readonly specVersion: typeof BLOCK_DRIVER_SPEC_VERSION;
  /** format_name / protocol name: "qcow2", "raw", "file", "copy-on-read". */
  readonly name: string;
  readonly kind: DriverKind;
  readonly description?: string;
  readonly capabilities: DriverCapabilities;
  /** Runtime options (blockdev-add), besides the common ones every node takes. */
  readonly options: OptionSchema;
  /** Options of `create` (qemu-img create -o). */
  readonly createOptions?: OptionSchema;
  /** Options `amend` accepts (qemu-img amend -o). */
  readonly amendOptions?: OptionSchema;
  /**
   * qemu-img measure: the file size an image with `createOptions` would need, for a disk of
   * `createOptions.size` bytes or for the data of `source` (an open node) when given.
   */
  measure?(createOptions: Options, source?: BlockNode): Promise<MeasureResult>;
  /** Format probing: a score (higher wins) for the image's first bytes; 0 = not this format. */
  probe?(head: Uint8Array, filename: string | undefined): number;
  open(ctx: OpenContext, options: Options): Promise<BlockDriverInstance>;
  create?(graph: Graph, options: Options): Promise<void>;
}

/** Helper for driver authors: a typed identity function that fills in the spec version. */
export function defineBlockDriver(driver: Omit<BlockDriver, 'specVersion'>): BlockDriver {
  return { specVersion: BLOCK_DRIVER_SPEC_VERSION, ...driver };
}
