/**
 * Drivers used by block-core's own tests (and by the conformance suite's self-test): a memory protocol with
 * configurable alignment, a pass-through filter, and a minimal copy-on-write format with a backing file.
 */
import {
  BlockError,
  BlockStatus,
  ChildRole,
  defineBlockDriver,
  NO_CAPABILITIES,
  ReqFlag,
  type BlockDriver,
  type Child,
  type IOVector,
} from '../src/index.js';

export const testMemDriver: BlockDriver = defineBlockDriver({
  name: 'test-mem',
  kind: 'protocol',
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
  },
  options: {
    size: { type: 'size', required: true },
    alignment: { type: 'integer', default: 1 },
    maxTransfer: { type: 'integer', default: 0 },
    /** Share one buffer between nodes opened with the same name (re-open tests). */
    name: { type: 'string' },
    /** Random delay of up to this many ms per request, so concurrent requests interleave. */
    latencyMs: { type: 'integer', default: 0 },
  },
  async open(ctx, o) {
    const shared = typeof o.name === 'string' ? memStore.get(o.name) : undefined;
    let data = shared ?? new Uint8Array(o.size as number);
    // Allocation per 512-byte sector so block status can report holes.
    let alloc = new Uint8Array(Math.ceil(data.byteLength / 512));
    if (shared) alloc.fill(1);
    const alignment = o.alignment as number;
    const latency = o.latencyMs as number;
    const delay = (): Promise<void> | undefined =>
      latency ? new Promise((r) => setTimeout(r, Math.floor(Math.random() * (latency + 1)))) : undefined;
    const store = (): void => {
      if (typeof o.name === 'string') memStore.set(o.name, data);
    };
    store();
    const grow = (end: number): void => {
      if (end <= data.byteLength) return;
      const n = new Uint8Array(end);
      n.set(data);
      data = n;
      const a = new Uint8Array(Math.ceil(end / 512));
      a.set(alloc);
      alloc = a;
      store();
    };
    const mark = (off: number, len: number, v: number): void => {
      const first = v ? Math.floor(off / 512) : Math.ceil(off / 512);
      const last = v ? Math.ceil((off + len) / 512) : Math.floor((off + len) / 512);
      alloc.fill(v, first, last);
    };
    return {
      getLength: () => data.byteLength,
      filename: typeof o.name === 'string' ? o.name : `mem:${ctx.node.nodeName}`,
      supportedZeroFlags: ReqFlag.MAY_UNMAP,
      refreshLimits: () => ({ requestAlignment: alignment, maxTransfer: o.maxTransfer as number }),
      async preadv(offset: number, bytes: number, qiov: IOVector) {
        if (offset % alignment || bytes % alignment) throw new BlockError('EINVAL', `unaligned read ${offset}+${bytes}`);
        await delay();
        const avail = Math.max(0, Math.min(bytes, data.byteLength - offset));
        qiov.copyFrom(data.subarray(offset, offset + avail), 0);
        if (avail < bytes) qiov.fill(0, avail);
      },
      async pwritev(offset: number, bytes: number, qiov: IOVector) {
        if (offset % alignment || bytes % alignment) throw new BlockError('EINVAL', `unaligned write ${offset}+${bytes}`);
        await delay();
        grow(offset + bytes);
        qiov.copyTo(data, 0, bytes, offset);
        mark(offset, bytes, 1);
      },
      async pwriteZeroes(offset: number, bytes: number, flags: number) {
        await delay();
        grow(offset + bytes);
        data.fill(0, offset, offset + bytes);
        mark(offset, bytes, flags & ReqFlag.MAY_UNMAP ? 0 : 1);
      },
      /** Copy offloading between test-mem nodes: the destination copies out of the source's array. */
      copyRangeFrom(src: Child, offset: number, dst: Child, dstOffset: number, bytes: number, rf: number, wf: number) {
        return dst.copyRangeTo(src, offset, dstOffset, bytes, rf, wf);
      },
      async copyRangeTo(src: Child, srcOffset: number, _dst: Child, offset: number, bytes: number) {
        const from = (src.node.impl as { peek?: (o: number, n: number) => Uint8Array }).peek;
        if (!from) throw new BlockError('ENOTSUP', 'test-mem copies only from test-mem');
        await delay();
        const bytesIn = from(srcOffset, bytes);
        grow(offset + bytes);
        data.set(bytesIn, offset);
        mark(offset, bytes, 1);
      },
      peek: (offset: number, bytes: number): Uint8Array => {
        const out = new Uint8Array(bytes);
        out.set(data.subarray(offset, Math.min(offset + bytes, data.byteLength)));
        return out;
      },
      async pdiscard(offset: number, bytes: number) {
        await delay();
        const end = Math.min(offset + bytes, data.byteLength);
        if (end <= offset) return;
        data.fill(0, offset, end);
        mark(offset, end - offset, 0);
      },
      blockStatus(_wantZero: boolean, offset: number, bytes: number) {
        // Answers cover whole request-alignment blocks; a block reads as zeroes only if none of its sectors is
        // allocated (the unaligned head or tail of a discard can leave a block partly allocated).
        const unit = Math.max(alignment, 512);
        const allocated = (u: number): number => (alloc.subarray((u * unit) / 512, ((u + 1) * unit) / 512).includes(1) ? 1 : 0);
        let u = Math.floor(offset / unit);
        const v = allocated(u++);
        while (u * unit < offset + bytes && allocated(u) === v) u++;
        const pnum = Math.min(u * unit, offset + bytes) - offset;
        return {
          status: (v ? BlockStatus.DATA : BlockStatus.ZERO) | BlockStatus.OFFSET_VALID,
          pnum,
          map: offset,
          file: ctx.node,
        };
      },
      async truncate(offset: number) {
        const n = new Uint8Array(offset);
        n.set(data.subarray(0, Math.min(offset, data.byteLength)));
        data = n;
        const a = new Uint8Array(Math.ceil(offset / 512));
        a.set(alloc.subarray(0, a.length));
        alloc = a;
        store();
      },
    };
  },
});

export const memStore = new Map<string, Uint8Array>();

/** A filter with no I/O methods at all: everything goes through the core's generic forwarding. */
export const testFilterDriver: BlockDriver = defineBlockDriver({
  name: 'test-filter',
  kind: 'filter',
  capabilities: { ...NO_CAPABILITIES, write: true, storesData: true, zeroWrite: true, discard: true, blockStatus: true, resize: true, reopen: true },
  options: { file: { type: 'ref', required: true } },
  async open(ctx, o) {
    const file = (await ctx.openChild('file', o.file, ChildRole.FILTERED | ChildRole.PRIMARY))!;
    return { getLength: () => file.node.totalBytes };
  },
});

/**
 * A minimal COW format: data lives in `file` at the guest offset, an in-memory per-cluster allocation map says
 * what this layer has; the rest comes from `backing`. Clusters are the request alignment, so no partial-cluster
 * copy-on-write is needed.
 */
export const testCowDriver: BlockDriver = defineBlockDriver({
  name: 'test-cow',
  kind: 'format',
  capabilities: { ...NO_CAPABILITIES, write: true, storesData: true, zeroWrite: true, discard: true, discardZeroes: true, blockStatus: true, backing: true, reopen: true },
  options: {
    file: { type: 'ref', required: true },
    backing: { type: 'ref', nullable: true },
    size: { type: 'size', required: true },
    clusterSize: { type: 'integer', default: 4096 },
  },
  async open(ctx, o) {
    const file = (await ctx.openChild('file', o.file, ChildRole.IMAGE))!;
    await ctx.openChild('backing', o.backing, ChildRole.COW, { optional: true });
    // The backing child can change at runtime (snapshot, setBacking): look it up per request.
    const node = ctx.node;
    const cluster = o.clusterSize as number;
    const size = o.size as number;
    // 0 unallocated, 1 data, 2 zero
    const state = new Uint8Array(Math.ceil(size / cluster));
    const each = (off: number, len: number, fn: (c: number) => void): void => {
      for (let c = Math.floor(off / cluster); c < Math.ceil((off + len) / cluster); c++) fn(c);
    };
    return {
      getLength: () => size,
      getInfo: () => ({ clusterSize: cluster }),
      supportedWriteFlags: ReqFlag.WRITE_UNCHANGED,
      supportedZeroFlags: ReqFlag.WRITE_UNCHANGED | ReqFlag.MAY_UNMAP,
      refreshLimits: () => ({ requestAlignment: cluster }),
      async preadv(offset: number, bytes: number, qiov: IOVector) {
        for (let done = 0; done < bytes; ) {
          const c = Math.floor((offset + done) / cluster);
          const n = Math.min(bytes - done, (c + 1) * cluster - offset - done);
          const part = qiov.slice(done, n);
          const backing = node.backing;
          if (state[c] === 1) await file.preadv(offset + done, n, part);
          else if (state[c] === 0 && backing) {
            const blen = backing.node.totalBytes;
            const avail = Math.max(0, Math.min(n, blen - offset - done));
            if (avail) await backing.preadv(offset + done, avail, part.slice(0, avail));
            if (avail < n) part.fill(0, avail);
          } else part.fill(0);
          done += n;
        }
      },
      async pwritev(offset: number, bytes: number, qiov: IOVector) {
        await file.pwritev(offset, bytes, qiov);
        each(offset, bytes, (c) => (state[c] = 1));
      },
      async pwriteZeroes(offset: number, bytes: number) {
        each(offset, bytes, (c) => (state[c] = 2));
      },
      async pdiscard(offset: number, bytes: number) {
        // Only whole clusters: the core passes unaligned heads and tails down too (as QEMU does), and
        // those must keep their data (qcow2 ignores them the same way).
        for (let c = Math.ceil(offset / cluster); (c + 1) * cluster <= offset + bytes; c++) state[c] = node.backing ? 2 : 0;
      },
      blockStatus(_wantZero: boolean, offset: number, bytes: number) {
        const c0 = Math.floor(offset / cluster);
        const v = state[c0]!;
        let c = c0 + 1;
        while (c * cluster < offset + bytes && state[c] === v) c++;
        const pnum = Math.min(c * cluster, offset + bytes) - offset;
        if (v === 1) return { status: BlockStatus.DATA | BlockStatus.OFFSET_VALID, pnum, map: offset, file: file.node };
        if (v === 2) return { status: BlockStatus.ZERO, pnum };
        return { status: 0, pnum };
      },
    };
  },
});

export const testDrivers = [testMemDriver, testFilterDriver, testCowDriver];
