import {
  BlockError,
  IOVector,
  trace,
  traceEnabled,
  type BlockNode,
  type Child,
  type Graph,
} from '@blockgraph/block-core';
import type { CodecTable, CompressionCodec } from '../codec.js';
import {
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  OFFSET_MASK_HI,
  OFFSET_MASK_LO,
  AUTOCLEAR_DATA_FILE_RAW,
  headerGeometry,
  l1EntryL2Offset,
  l2Mode,
  writeL1Entry,
  type LuksInfo,
  type Qcow2Geometry,
  type Qcow2Header,
  type SnapshotEntry,
} from '../format/index.js';
import { MetaCache, type CacheIO } from './cache.js';
import { IoTickets, type L2Meta } from './inflight.js';
import { AsyncMutex } from './mutex.js';
import { TableClusters } from './table-clusters.js';

/** Why a cluster is freed; decides whether the freed range is also discarded in the file (QEMU's enum). */
export const DiscardType = {
  NEVER: 0,
  ALWAYS: 1,
  REQUEST: 2,
  SNAPSHOT: 3,
  OTHER: 4,
} as const;
export type DiscardType = (typeof DiscardType)[keyof typeof DiscardType];

export { Overlap, OVERLAP_NAMES, OVERLAP_CONSTANT, OVERLAP_CACHED, OVERLAP_ALL } from '../format/overlap.js';

/** Runtime options after parsing (qcow2_update_options). */
export interface Qcow2RuntimeOptions {
  lazyRefcounts: boolean;
  /** By DiscardType: pass freed ranges down to the file as discards. */
  discardPassthrough: boolean[];
  overlapCheck: number;
  l2CacheEntries: number;
  l2CacheEntrySize: number;
  refcountCacheEntries: number;
  cacheCleanInterval: number;
}

export interface DiscardRegion {
  offset: number;
  bytes: number;
}

/** ImageInfoSpecificQCow2Encryption: `aes`, or `luks` with the LUKS header's description. */
export type EncryptionInfo = { format: 'aes' } | ({ format: 'luks' } & LuksInfo);

/**
 * Everything an open qcow2 image knows (QEMU's BDRVQcow2State). The modules beside this file are functions over
 * it: refcount.ts (refcounts and the cluster allocator), l1.ts, cluster.ts (mapping, allocation of guest
 * clusters, zero/discard), rw.ts (the request paths), header-io.ts, overlap.ts.
 */
export class Qcow2State {
  header: Qcow2Header;
  g: Qcow2Geometry;
  /** 2 or 3; changed only by amend (compat upgrade/downgrade). */
  version: 2 | 3;
  readonly clusterSize: number;
  readonly clusterBits: number;
  /** Classification mode for the L2 entry decoders (extended entries, external data file). */
  readonly mode: number;
  readonly extendedL2: boolean;
  readonly hasDataFile: boolean;
  /** Guest size in bytes (a multiple of 512). */
  size: number;

  /** Active L1 table, big-endian as on disk. Entries change through setL1()/restoreL1(), or call l1Changed(). */
  l1: Uint8Array = new Uint8Array(0);
  /** Clusters of the active L2 tables, or null until activeL2Tables() counts them. */
  private l2Tables: TableClusters | null = null;
  l1View: DataView = new DataView(new ArrayBuffer(0));
  l1Size = 0;
  l1Offset = 0;

  /** Refcount table: refcount block offsets (0 = none, -1 = unreadable). Changed through setReftable*() only. */
  reftable: Float64Array = new Float64Array(0);
  /** Clusters of the refcount blocks, or null until refcountBlocks() counts them. */
  private refBlocks: TableClusters | null = null;
  reftableOffset = 0;
  maxRefcountTableIndex = 0;

  l2Cache!: MetaCache;
  refCache!: MetaCache;
  /** Entries per L2 cache slice. */
  l2SliceEntries = 0;
  l2SliceBytes = 0;

  freeClusterIndex = 0;
  /** Next free byte for compressed data (inside a partially used host cluster), 0 = none. */
  freeByteOffset = 0;

  cacheDiscards = false;
  readonly discards: DiscardRegion[] = [];

  readonly lock = new AsyncMutex();
  readonly clusterAllocs: L2Meta[] = [];
  readonly tickets = new IoTickets();

  options: Qcow2RuntimeOptions;
  useLazyRefcounts = false;

  /** Set when a fatal corruption was found: the image is not used any more. */
  broken: BlockError | null = null;
  signaledCorruption = false;
  /** Header changes to make before the first write (unknown autoclear bits, dirty-image repair). */
  pendingWriteSetup = false;
  /** Opened for qemu-img check: no automatic repair. */
  checkMode = false;
  /** Opened for metadata inspection only (the `noIo` option): no data file, no guest I/O. */
  noIo = false;
  /** An encrypted image's description (only a `noIo` open accepts one). */
  encryption: EncryptionInfo | null = null;

  snapshots: SnapshotEntry[] = [];
  /** Byte length of the snapshot table (for overlap checks). */
  snapshotTableBytes = 0;
  /** L2 offsets of the inactive L1 tables, for overlap-check=all. */
  inactiveL2: number[] | null = null;

  metadataPreallocation: boolean | null = null;
  /** snapshotLoadTmp() switched the (read-only) image to a snapshot's L1 table. */
  snapshotLoaded = false;
  /**
   * Where the compression codecs come from (the driver's table, loaded once per process on first need). Nothing
   * is loaded at open: most images have no compressed cluster, and loading zstd's WebAssembly costs ~30 ms.
   */
  loadCodecs: () => Promise<CodecTable> = () => Promise.resolve({});
  private codecCache: CompressionCodec | null = null;
  cleanTimer: ReturnType<typeof setInterval> | null = null;

  constructor(
    readonly node: BlockNode,
    readonly file: Child,
    /** Where guest data lives: the external data file, else `file`. */
    public dataFile: Child,
    public backing: Child | null,
    header: Qcow2Header,
    options: Qcow2RuntimeOptions,
  ) {
    this.header = header;
    this.g = headerGeometry(header);
    this.version = header.version;
    this.clusterSize = this.g.clusterSize;
    this.clusterBits = this.g.clusterBits;
    this.extendedL2 = (header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
    this.hasDataFile = (header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
    this.mode = l2Mode(this.extendedL2, this.hasDataFile);
    this.size = Math.floor(header.size / 512) * 512;
    this.options = options;
  }

  get graph(): Graph {
    return this.node.graph;
  }

  get readOnly(): boolean {
    return this.node.readOnly;
  }

  get dataFileIsRaw(): boolean {
    return this.hasDataFile && (this.header.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n;
  }

  get isDirty(): boolean {
    return (this.header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n;
  }

  /** qcow2_need_accurate_refcounts(): refcounts are written (not postponed by lazy refcounts). */
  get needAccurateRefcounts(): boolean {
    return !this.isDirty;
  }

  /** Length of the image file. */
  get fileLength(): number {
    return this.file.node.totalBytes;
  }

  /** Number of L1 entries needed for the guest size (l1_vm_state_index). */
  get l1VmStateIndex(): number {
    return Math.ceil(this.size / this.g.bytesPerL2Table);
  }

  // --- L1 --------------------------------------------------------------------------------------------------

  l1L2Offset(index: number): number {
    return l1EntryL2Offset(this.l1View.getUint32(index * 8), this.l1View.getUint32(index * 8 + 4));
  }

  l1Raw(index: number): { hi: number; lo: number } {
    return { hi: this.l1View.getUint32(index * 8), lo: this.l1View.getUint32(index * 8 + 4) };
  }

  setL1(index: number, l2Offset: number, copied: boolean): void {
    const before = this.l2TableOffset(index);
    writeL1Entry(this.l1View, index, l2Offset, copied);
    this.l2TableMoved(index, before);
  }

  /** Put an entry back as it was read (l1Raw()), after a failed update. */
  restoreL1(index: number, raw: { hi: number; lo: number }): void {
    const before = this.l2TableOffset(index);
    this.l1View.setUint32(index * 8, raw.hi);
    this.l1View.setUint32(index * 8 + 4, raw.lo);
    this.l2TableMoved(index, before);
  }

  /** Entries of the active L1 table were changed in place other than through setL1()/restoreL1(). */
  l1Changed(): void {
    this.l2Tables = null;
  }

  /** The L2 table offset of an L1 entry as the overlap check reads it: masked, not validated. */
  private l2TableOffset(index: number): number {
    const v = this.l1View;
    return (v.getUint32(index * 8) & OFFSET_MASK_HI) * 4294967296 + ((v.getUint32(index * 8 + 4) & OFFSET_MASK_LO) >>> 0);
  }

  private l2TableMoved(index: number, before: number): void {
    const t = this.l2Tables;
    if (t === null || index >= this.l1Size) return;
    t.remove(before);
    t.add(this.l2TableOffset(index));
  }

  /** The host clusters of the active L2 tables (metadata overlap check), counted from the L1 table on first use. */
  activeL2Tables(): TableClusters {
    if (this.l2Tables === null) {
      const t = new TableClusters(this.clusterSize);
      for (let i = 0; i < this.l1Size; i++) t.add(this.l2TableOffset(i));
      this.l2Tables = t;
    }
    return this.l2Tables;
  }

  setL1Table(table: Uint8Array, size: number, offset: number): void {
    this.l2Tables = null;
    this.l1 = table;
    this.l1View = new DataView(table.buffer, table.byteOffset, table.byteLength);
    this.l1Size = size;
    this.l1Offset = offset;
    this.header.l1Size = size;
    this.header.l1TableOffset = offset;
  }

  // --- reftable --------------------------------------------------------------------------------------------

  /** Replace the whole refcount table (in memory only). */
  setReftable(table: Float64Array): void {
    this.reftable = table;
    this.refBlocks = null;
  }

  /** Set one refcount table entry (in memory only): 0 for none. */
  setReftableEntry(index: number, offset: number): void {
    this.refBlocks?.remove(this.reftable[index]!);
    this.reftable[index] = offset;
    this.refBlocks?.add(offset);
  }

  /** The host clusters of the refcount blocks (metadata overlap check), counted from the table on first use. */
  refcountBlocks(): TableClusters {
    if (this.refBlocks === null) {
      const t = new TableClusters(this.clusterSize);
      for (const offset of this.reftable) t.add(offset);
      this.refBlocks = t;
    }
    return this.refBlocks;
  }

  updateMaxRefcountTableIndex(): void {
    let i = this.reftable.length - 1;
    while (i > 0 && this.reftable[i] === 0) i--;
    this.maxRefcountTableIndex = Math.max(0, i);
  }

  // --- file I/O ----------------------------------------------------------------------------------------------

  async readFile(offset: number, buf: Uint8Array): Promise<void> {
    await this.file.preadv(offset, buf.byteLength, IOVector.of(buf));
  }

  async writeFile(offset: number, buf: Uint8Array): Promise<void> {
    await this.file.pwritev(offset, buf.byteLength, IOVector.of(buf));
  }

  /** bdrv_pwrite_sync(). */
  async writeFileSync(offset: number, buf: Uint8Array): Promise<void> {
    await this.writeFile(offset, buf);
    await this.flushFile();
  }

  flushFile(): Promise<void> {
    return this.file.flush();
  }

  // --- events ----------------------------------------------------------------------------------------------

  trace(event: string, data: Record<string, unknown>): void {
    if (traceEnabled()) trace(`qcow2.${event}`, { node: this.node.nodeName, ...data });
  }

  /** The codec for this image's compression type; ENOTSUP when the driver was given none for it. */
  async codec(): Promise<CompressionCodec> {
    if (this.codecCache) return this.codecCache;
    const table = await this.loadCodecs();
    const codec = table[this.header.compressionType];
    if (!codec) {
      throw new BlockError('ENOTSUP', `qcow2: no codec for compression type ${this.header.compressionType} was provided`);
    }
    this.codecCache = codec;
    return codec;
  }

  /**
   * After a fatal corruption event (or a failed emptying) QEMU sets bs->drv = NULL: the request that met it failed
   * with EIO, every later one fails with ENOMEDIUM.
   */
  checkUsable(): void {
    if (this.noIo) throw new BlockError('ENOTSUP', 'The image was opened for metadata inspection only (no-io)');
    if (this.broken) throw new BlockError('ENOMEDIUM', `No medium found (the image is unusable: ${this.broken.message})`, { cause: this.broken });
  }

  makeCaches(io: CacheIO): void {
    const o = this.options;
    this.l2SliceBytes = o.l2CacheEntrySize;
    this.l2SliceEntries = o.l2CacheEntrySize / this.g.l2EntrySize;
    this.l2Cache = new MetaCache('L2', o.l2CacheEntrySize, o.l2CacheEntries, io);
    this.refCache = new MetaCache('refcount', this.clusterSize, o.refcountCacheEntries, io);
  }
}
