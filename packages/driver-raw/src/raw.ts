/**
 * The `raw` format (QEMU's block/raw-format.c): the image is its file, byte for byte, optionally seen through
 * an `offset`/`size` window. Everything passes through to the `file` child; block status answers RAW so the
 * core asks the child. Without a window the child is FILTERED|PRIMARY (raw behaves like a filter), with one
 * it is DATA|PRIMARY (QEMU's raw_open()).
 */
import {
  type DriverInfo,
  BlockError,
  BlockStatus,
  ChildRole,
  defaultChildPerms,
  defineBlockDriver,
  NO_CAPABILITIES,
  Perm,
  ReqFlag,
  type BlockDriver,
  type BlockDriverInstance,
  type BlockStatusReply,
  type Child,
  type ChildRoles,
  type DriverCapabilities,
  type IOVector,
  type PermPair,
  type PreallocMode,
  type ReqFlags,
} from '@blockgraph/block-core';

const SECTOR = 512;

/** Flags raw hands to its child unchanged; the child's own pipeline emulates what its driver lacks. */
const RAW_WRITE_FLAGS = ReqFlag.FUA | ReqFlag.WRITE_UNCHANGED;
const RAW_ZERO_FLAGS = ReqFlag.FUA | ReqFlag.MAY_UNMAP | ReqFlag.NO_FALLBACK | ReqFlag.WRITE_UNCHANGED;

class RawInstance implements BlockDriverInstance {
  readonly supportedWriteFlags = RAW_WRITE_FLAGS;
  readonly supportedZeroFlags = RAW_ZERO_FLAGS;
  /** Current window size (QEMU keeps it up to date in raw_getlength()). */
  size: number;

  constructor(
    readonly file: Child,
    /** Where the window starts in the file. */
    readonly offset: number,
    /** A `size` option was given: requests past it are refused and the disk cannot be resized. */
    readonly hasSize: boolean,
    size: number,
    private readonly writable: () => boolean,
  ) {
    this.size = size;
  }

  /** raw_open(): whatever of ZERO_WRITE the child honours, for truncate() passes the flags down. */
  get supportedTruncateFlags(): ReqFlags {
    return this.file.node.supportedTruncateFlags & ReqFlag.ZERO_WRITE;
  }

  /** The child's capabilities, minus resizing when a window fixes the size. */
  get capabilities(): Partial<DriverCapabilities> {
    const c = this.file.node.capabilities;
    const fixed = this.offset !== 0 || this.hasSize;
    return {
      write: c.write,
      storesData: c.storesData,
      zeroWrite: c.zeroWrite,
      discard: c.discard,
      discardZeroes: c.discardZeroes,
      blockStatus: c.blockStatus,
      flush: c.flush,
      resize: c.resize && !this.hasSize,
      shrink: c.shrink && !this.hasSize,
      growOnWrite: c.growOnWrite && !fixed,
    };
  }

  /** raw_getlength(). */
  getLength(): number {
    const len = this.file.node.totalBytes;
    if (len < this.offset) this.size = 0;
    else if (this.hasSize) this.size = Math.min(this.size, len - this.offset);
    else this.size = len - this.offset;
    return this.size;
  }

  /** raw_adjust_offset(): is [offset, +bytes) inside the window? (Only a `size` option limits it.) */
  private outside(offset: number, bytes: number): boolean {
    return this.hasSize && (offset > this.size || bytes > this.size - offset);
  }

  /** What raw_adjust_offset() returns for a request outside the window: -ENOSPC for writes, -EINVAL for reads. */
  private refuse(offset: number, bytes: number, write: boolean): Promise<never> {
    return Promise.reject(
      new BlockError(write ? 'ENOSPC' : 'EINVAL', `Request [${offset}, +${bytes}) is outside the raw window of ${this.size} bytes`),
    );
  }

  preadv(offset: number, bytes: number, qiov: IOVector, flags: ReqFlags): Promise<void> {
    if (this.outside(offset, bytes)) return this.refuse(offset, bytes, false);
    return this.file.preadv(offset + this.offset, bytes, qiov, flags);
  }

  pwritev(offset: number, bytes: number, qiov: IOVector, flags: ReqFlags): Promise<void> {
    if (this.outside(offset, bytes)) return this.refuse(offset, bytes, true);
    return this.file.pwritev(offset + this.offset, bytes, qiov, flags);
  }

  pwriteZeroes(offset: number, bytes: number, flags: ReqFlags): Promise<void> {
    if (this.outside(offset, bytes)) return this.refuse(offset, bytes, true);
    return this.file.pwriteZeroes(offset + this.offset, bytes, flags);
  }

  pdiscard(offset: number, bytes: number): Promise<void> {
    if (this.outside(offset, bytes)) return this.refuse(offset, bytes, true);
    return this.file.pdiscard(offset + this.offset, bytes);
  }

  copyRangeFrom(_src: Child, offset: number, dst: Child, dstOffset: number, bytes: number, readFlags: ReqFlags, writeFlags: ReqFlags): Promise<void> {
    if (this.outside(offset, bytes)) return this.refuse(offset, bytes, false);
    return this.file.copyRangeFrom(offset + this.offset, dst, dstOffset, bytes, readFlags, writeFlags);
  }

  copyRangeTo(src: Child, srcOffset: number, _dst: Child, offset: number, bytes: number, readFlags: ReqFlags, writeFlags: ReqFlags): Promise<void> {
    if (this.outside(offset, bytes)) return this.refuse(offset, bytes, true);
    return this.file.copyRangeTo(src, srcOffset, offset + this.offset, bytes, readFlags, writeFlags);
  }

  blockStatus(_wantZero: boolean, offset: number, bytes: number): BlockStatusReply {
    return { status: BlockStatus.RAW | BlockStatus.OFFSET_VALID, pnum: bytes, map: offset + this.offset, file: this.file.node };
  }

  passthroughChild(offset: number): { child: Child; offset: number } {
    return { child: this.file, offset: offset + this.offset };
  }

  async truncate(offset: number, exact: boolean, prealloc: PreallocMode, flags: ReqFlags): Promise<void> {
    if (this.hasSize) throw new BlockError('ENOTSUP', 'Cannot resize fixed-size raw disks');
    if (offset + this.offset > Number.MAX_SAFE_INTEGER) {
      throw new BlockError('EINVAL', 'Disk size too large for the chosen offset');
    }
    this.size = offset;
    await this.file.truncate(offset + this.offset, exact, prealloc, flags);
  }

  /** raw_child_perm(): the default perms, but WRITE and RESIZE only when our parents use them. */
  childPerm(_child: Child, role: ChildRoles, parent: PermPair): PermPair {
    const p = defaultChildPerms(role, parent, this.writable());
    let perm = p.perm & ~(Perm.WRITE | Perm.RESIZE);
    perm |= parent.perm & (Perm.WRITE | Perm.RESIZE | Perm.WRITE_UNCHANGED);
    return { perm, shared: p.shared };
  }

  /** QEMU's raw answers with the file's info (a zeroed one for plain files): no cluster size, not dirty. */
  getInfo(): DriverInfo {
    return this.file.node.impl.getInfo?.() ?? {};
  }

  getAllocatedFileSize(): Promise<number> {
    const f = this.file.node.impl.getAllocatedFileSize;
    if (!f) return Promise.reject(new BlockError('ENOTSUP', 'Allocated file size is not available'));
    return f.call(this.file.node.impl);
  }

  hasZeroInit(): boolean {
    return this.file.node.impl.hasZeroInit?.() ?? false;
  }

  async reopenPrepare(): Promise<void> {
    // offset/size can't change through block-core's reopen (it passes the current options).
  }
}

export const rawDriver: BlockDriver = defineBlockDriver({
  name: 'raw',
  kind: 'format',
  description: 'Raw disk image: the file itself, optionally an offset/size window of it',
  capabilities: {
    ...NO_CAPABILITIES,
    write: true,
    storesData: true,
    zeroWrite: true,
    discard: true,
    discardZeroes: true,
    blockStatus: true,
    flush: true,
    resize: true,
    shrink: true,
    growOnWrite: true,
    reopen: true,
    create: true,
  },
  options: {
    file: { type: 'ref', required: true, description: 'the node holding the data' },
    offset: { type: 'size', min: 0, description: 'offset in the disk where the image starts' },
    size: { type: 'size', min: 0, description: 'virtual disk size' },
  },
  createOptions: {
    filename: { type: 'string', required: true },
    size: { type: 'size', default: 0, min: 0, description: 'Virtual disk size' },
    preallocation: { type: 'enum', values: ['off', 'falloc', 'full'], description: 'Preallocation mode of the file' },
    nocow: { type: 'boolean' },
    extentSizeHint: { type: 'size' },
  },
  /** Smallest positive score: raw is used if and only if no other format claims the image. */
  probe: () => 1,
  async open(ctx, o) {
    const offset = (o.offset as number | undefined) ?? 0;
    const hasSize = o.size !== undefined;
    const size = (o.size as number | undefined) ?? 0;
    // Without offset and size limit raw behaves very much like a filter; with any such limit it does not.
    const role = offset || hasSize ? ChildRole.DATA | ChildRole.PRIMARY : ChildRole.FILTERED | ChildRole.PRIMARY;
    const file = (await ctx.openChild('file', o.file, role))!;
    const real = file.node.totalBytes;
    if (offset > real) {
      throw new BlockError('EINVAL', `Offset (${offset}) cannot be greater than size of the containing file (${real})`);
    }
    if (hasSize && real - offset < size) {
      throw new BlockError(
        'EINVAL',
        `The sum of offset (${offset}) and size (${size}) has to be smaller or equal to the  actual size of the containing file (${real})`,
      );
    }
    if (hasSize && size % SECTOR) throw new BlockError('EINVAL', `Specified size is not multiple of ${SECTOR}`);
    const node = ctx.node;
    return new RawInstance(file, offset, hasSize, hasSize ? size : real - offset, () => !node.readOnly);
  },
  /** raw_co_create_opts(): a raw image is a file of that size, created by the `file` protocol. */
  async create(graph, o) {
    if (!graph.registry.has('file')) {
      throw new BlockError('ENOTSUP', "Creating a raw image needs the 'file' protocol driver (@blockgraph/driver-raw/file)");
    }
    const opts: Record<string, unknown> = { filename: o.filename, size: o.size };
    for (const k of ['preallocation', 'nocow', 'extentSizeHint']) if (o[k] !== undefined) opts[k] = o[k];
    await graph.createImage('file', opts);
  },
});
