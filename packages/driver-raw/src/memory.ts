/**
 * The `memory` protocol: a sparse in-memory disk. Data lives in 64 KiB chunks allocated on first write, so a
 * 100 GiB node costs nothing until written; unallocated chunks read as zeroes and show as ZERO in block
 * status; zero writes and discards free whole chunks. Grows on writes past the end. Platform-neutral (runs in
 * a browser). Nodes opened with the same `name` share one store (per JS realm) until it is deleted with
 * {@link deleteMemoryStore}.
 */
import {
  BlockError,
  BlockStatus,
  defineBlockDriver,
  isZeroBuffer,
  NO_CAPABILITIES,
  ReqFlag,
  type BlockDriver,
  type BlockDriverInstance,
  type BlockLimits,
  type BlockNode,
  type BlockStatusReply,
  type IOVector,
  type PreallocMode,
} from '@blockgraph/block-core';

/** Allocation unit of a memory node. */
export const MEMORY_CHUNK_SIZE = 64 * 1024;
const CHUNK = MEMORY_CHUNK_SIZE;

/** The bytes of one memory disk: chunk index → chunk; absent chunks are zeroes. */
export class MemoryStore {
  readonly chunks = new Map<number, Uint8Array>();
  constructor(public size: number) {}

  /** Bytes held in chunks. */
  get allocatedBytes(): number {
    return this.chunks.size * CHUNK;
  }

  read(offset: number, bytes: number, qiov: IOVector): void {
    const end = offset + bytes;
    let pos = 0;
    for (let i = Math.floor(offset / CHUNK); pos < bytes; i++) {
      const base = i * CHUNK;
      const a = Math.max(offset, base) - base;
      const b = Math.min(end, base + CHUNK) - base;
      const chunk = this.chunks.get(i);
      if (chunk) qiov.copyFrom(chunk.subarray(a, b), pos);
      else qiov.fill(0, pos, b - a);
      pos += b - a;
    }
  }

  write(offset: number, bytes: number, qiov: IOVector): void {
    const end = offset + bytes;
    let pos = 0;
    for (let i = Math.floor(offset / CHUNK); pos < bytes; i++) {
      const base = i * CHUNK;
      const a = Math.max(offset, base) - base;
      const b = Math.min(end, base + CHUNK) - base;
      let chunk = this.chunks.get(i);
      if (!chunk) {
        chunk = new Uint8Array(CHUNK);
        this.chunks.set(i, chunk);
      }
      qiov.copyTo(chunk, pos, b - a, a);
      pos += b - a;
    }
    if (end > this.size) this.size = end;
  }

  /** Zero [offset, offset+bytes): whole chunks are freed, partial ones zeroed (and freed once all zero). */
  zero(offset: number, bytes: number): void {
    const end = offset + bytes;
    const first = Math.floor(offset / CHUNK);
    const last = Math.floor((end - 1) / CHUNK);
    if (last - first > this.chunks.size) {
      // Few chunks in a big range: visit the chunks, not the range.
      for (const i of [...this.chunks.keys()]) if (i >= first && i <= last) this.zeroChunk(i, offset, end);
    } else {
      for (let i = first; i <= last; i++) if (this.chunks.has(i)) this.zeroChunk(i, offset, end);
    }
  }

  private zeroChunk(i: number, offset: number, end: number): void {
    const base = i * CHUNK;
    const a = Math.max(offset, base) - base;
    const b = Math.min(end, base + CHUNK) - base;
    if (a === 0 && b === CHUNK) {
      this.chunks.delete(i);
      return;
    }
    const chunk = this.chunks.get(i)!;
    chunk.fill(0, a, b);
    if (isZeroBuffer(chunk)) this.chunks.delete(i);
  }

  /** Allocation status from `offset`: whether the first chunk holds data, and how far that state goes. */
  status(offset: number, bytes: number): { data: boolean; pnum: number } {
    const end = offset + bytes;
    const first = Math.floor(offset / CHUNK);
    const data = this.chunks.has(first);
    let i = first + 1;
    const lastChunk = Math.floor((end - 1) / CHUNK);
    if (!data && lastChunk - first > this.chunks.size) {
      // Sparse: jump to the next allocated chunk instead of walking the hole.
      let next = Infinity;
      for (const k of this.chunks.keys()) if (k > first && k < next) next = k;
      i = next;
    } else {
      while (i <= lastChunk && this.chunks.has(i) === data) i++;
    }
    return { data, pnum: Math.min(end, i * CHUNK) - offset };
  }

  truncate(size: number): void {
    if (size < this.size) {
      const keep = Math.ceil(size / CHUNK);
      for (const i of [...this.chunks.keys()]) if (i >= keep) this.chunks.delete(i);
      if (size % CHUNK) {
        const tail = this.chunks.get(keep - 1);
        tail?.fill(0, size % CHUNK);
      }
    }
    this.size = size;
  }
}

const stores = new Map<string, MemoryStore>();

/** The store behind memory nodes named `name`, if any. */
export function getMemoryStore(name: string): MemoryStore | undefined {
  return stores.get(name);
}

/** Forget a named store (open nodes keep theirs); true if there was one. */
export function deleteMemoryStore(name: string): boolean {
  return stores.delete(name);
}

class MemoryInstance implements BlockDriverInstance {
  readonly supportedZeroFlags = ReqFlag.MAY_UNMAP | ReqFlag.NO_FALLBACK;
  /** A store grows by zeroes. */
  readonly supportedTruncateFlags = ReqFlag.ZERO_WRITE;

  constructor(
    readonly store: MemoryStore,
    readonly filename: string,
    readonly node: BlockNode,
  ) {}

  getLength(): number {
    return this.store.size;
  }

  refreshLimits(): Partial<BlockLimits> {
    return { requestAlignment: 1, maxTransfer: 0 };
  }

  async preadv(offset: number, bytes: number, qiov: IOVector): Promise<void> {
    this.store.read(offset, bytes, qiov);
  }

  async pwritev(offset: number, bytes: number, qiov: IOVector): Promise<void> {
    this.store.write(offset, bytes, qiov);
  }

  async pwriteZeroes(offset: number, bytes: number): Promise<void> {
    this.store.zero(offset, bytes);
    if (offset + bytes > this.store.size) this.store.size = offset + bytes;
  }

  async pdiscard(offset: number, bytes: number): Promise<void> {
    const end = Math.min(offset + bytes, this.store.size);
    if (end > offset) this.store.zero(offset, end - offset);
  }

  blockStatus(_wantZero: boolean, offset: number, bytes: number): BlockStatusReply {
    const s = this.store.status(offset, bytes);
    return {
      status: (s.data ? BlockStatus.DATA : BlockStatus.ZERO) | BlockStatus.OFFSET_VALID,
      pnum: s.pnum,
      map: offset,
      file: this.node,
    };
  }

  async truncate(offset: number, _exact: boolean, prealloc: PreallocMode): Promise<void> {
    if (prealloc !== 'off') throw new BlockError('ENOTSUP', `Unsupported preallocation mode: ${prealloc}`);
    this.store.truncate(offset);
  }

  async getAllocatedFileSize(): Promise<number> {
    return this.store.allocatedBytes;
  }

  hasZeroInit(): boolean {
    return true;
  }
}

export const memoryDriver: BlockDriver = defineBlockDriver({
  name: 'memory',
  kind: 'protocol',
  description: 'A sparse in-memory disk (64 KiB chunks allocated on first write)',
  capabilities: {
    ...NO_CAPABILITIES,
    write: true,
    storesData: true,
    zeroWrite: true,
    discard: true,
    discardZeroes: true,
    blockStatus: true,
    resize: true,
    shrink: true,
    growOnWrite: true,
    reopen: true,
    create: true,
  },
  options: {
    size: { type: 'size', min: 0, description: 'size in bytes (default: the named store\'s, else 0)' },
    name: { type: 'string', description: 'share the data with other memory nodes of this name' },
  },
  createOptions: {
    name: { type: 'string', required: true },
    size: { type: 'size', default: 0, min: 0 },
  },
  async open(ctx, o) {
    const name = o.name as string | undefined;
    const size = o.size as number | undefined;
    let store: MemoryStore;
    if (name !== undefined) {
      const existing = stores.get(name);
      if (existing) {
        if (size !== undefined && size !== existing.size) existing.truncate(size);
        store = existing;
      } else {
        store = new MemoryStore(size ?? 0);
        stores.set(name, store);
      }
    } else {
      store = new MemoryStore(size ?? 0);
    }
    return new MemoryInstance(store, `memory:${name ?? ctx.node.nodeName}`, ctx.node);
  },
  /** A new (or emptied) named store of that size. */
  async create(_graph, o) {
    const name = o.name as string;
    const existing = stores.get(name);
    if (existing) {
      existing.truncate(0);
      existing.truncate(o.size as number);
    } else {
      stores.set(name, new MemoryStore(o.size as number));
    }
  },
});
