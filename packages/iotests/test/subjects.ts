/**
 * Factories over block-core's test drivers, plus a few drivers made for the self-test: a read-only one, one that
 * does not store data, and deliberately broken ones that the suite must catch.
 */
import {
  BlockStatus,
  defineBlockDriver,
  Graph,
  IOVector,
  NO_CAPABILITIES,
  type BlockDriver,
  type BlockDriverInstance,
} from '@blockgraph/block-core';
import { testCowDriver, testDrivers, testFilterDriver, testMemDriver } from '../../block-core/test/drivers.js';
import type { ConformanceOptions, ConformanceSubject } from '../src/index.js';

export type Factory = ConformanceOptions['factory'];

export function memFactory(
  alignment: number,
  o: { maxTransfer?: number; latencyMs?: number; driver?: string; drivers?: readonly BlockDriver[] } = {},
): Factory {
  const { maxTransfer = 0, latencyMs = 0, driver = 'test-mem', drivers = testDrivers } = o;
  return async ({ size, readOnly }): Promise<ConformanceSubject> => {
    const graph = new Graph({ drivers });
    const opts: Record<string, unknown> = { driver, nodeName: 'mem', size, alignment, maxTransfer, discard: 'unmap', readOnly: !!readOnly };
    if (latencyMs) opts.latencyMs = latencyMs;
    const node = await graph.addNode(opts as { driver: string });
    return { graph, node };
  };
}

/** test-filter over a separately named test-mem node. */
export const filterFactory: Factory = async ({ size, readOnly }) => {
  const graph = new Graph({ drivers: testDrivers });
  await graph.addNode({ driver: 'test-mem', nodeName: 'mem', size, alignment: 512, discard: 'unmap', readOnly: !!readOnly });
  const node = await graph.addNode({ driver: 'test-filter', nodeName: 'filter', file: 'mem', discard: 'unmap', readOnly: !!readOnly });
  return { graph, node };
};

/** test-cow over an implicit test-mem file child, no backing. */
export function cowFactory(latencyMs = 0): Factory {
  return async ({ size, readOnly }) => {
    const graph = new Graph({ drivers: testDrivers });
    const node = await graph.addNode({
      driver: 'test-cow',
      nodeName: 'cow',
      size,
      discard: 'unmap',
      readOnly: !!readOnly,
      file: latencyMs ? { driver: 'test-mem', size, latencyMs } : { driver: 'test-mem', size },
    });
    return { graph, node };
  };
}

/** A driver wrapping test-mem's instance: for drivers that only change a detail. */
export function wrapMem(
  name: string,
  caps: Partial<BlockDriver['capabilities']>,
  wrap: (impl: BlockDriverInstance) => BlockDriverInstance = (i) => i,
): BlockDriver {
  return defineBlockDriver({
    name,
    kind: 'protocol',
    options: testMemDriver.options,
    capabilities: { ...testMemDriver.capabilities, ...caps },
    async open(ctx, o) {
      return wrap(await testMemDriver.open(ctx, o));
    },
  });
}

/** A driver that can only be opened read-only. */
export const readOnlyDriver = wrapMem('test-ro', { ...NO_CAPABILITIES, storesData: true, blockStatus: true });

export const readOnlyFactory: Factory = async ({ size }) => {
  const graph = new Graph({ drivers: [readOnlyDriver] });
  const node = await graph.addNode({ driver: 'test-ro', nodeName: 'ro', size, readOnly: true });
  return { graph, node };
};

/** null-co style: accepts every request, keeps nothing, reads zeroes. */
export const nullDriver: BlockDriver = defineBlockDriver({
  name: 'test-null',
  kind: 'protocol',
  capabilities: { ...NO_CAPABILITIES, write: true, zeroWrite: true, discard: true, resize: true, shrink: true, reopen: true },
  options: { size: { type: 'size', required: true } },
  async open(_ctx, o) {
    let size = o.size as number;
    return {
      getLength: () => size,
      async preadv(_off: number, _bytes: number, qiov: IOVector) {
        qiov.fill(0);
      },
      async pwritev() {},
      async pwriteZeroes() {},
      async pdiscard() {},
      async truncate(n: number) {
        size = n;
      },
      blockStatus: (_w: boolean, _off: number, bytes: number) => ({ status: BlockStatus.ZERO, pnum: bytes }),
    };
  },
});

export const nullFactory: Factory = async ({ size, readOnly }) => {
  const graph = new Graph({ drivers: [nullDriver] });
  const node = await graph.addNode({ driver: 'test-null', nodeName: 'null', size, discard: 'unmap', readOnly: !!readOnly });
  return { graph, node };
};

// --- broken drivers ------------------------------------------------------------------------------------------

/** Drops every 7th write on the floor (and says it succeeded). */
export const dropsWritesDriver = wrapMem('buggy-drop-writes', {}, (impl) => {
  let n = 0;
  return {
    ...impl,
    async pwritev(offset: number, bytes: number, qiov: IOVector, flags: number) {
      if (++n % 7 === 0) return;
      return impl.pwritev!(offset, bytes, qiov, flags);
    },
  };
});

/** Serves a repeated read of the same range from a cache that writes do not invalidate. */
export const staleReadsDriver = wrapMem('buggy-stale-reads', {}, (impl) => {
  const cache = new Map<string, Uint8Array>();
  return {
    ...impl,
    async preadv(offset: number, bytes: number, qiov: IOVector, flags: number) {
      const key = `${offset}:${bytes}`;
      const hit = cache.get(key);
      if (hit) return qiov.copyFrom(hit);
      await impl.preadv!(offset, bytes, qiov, flags);
      const copy = new Uint8Array(bytes);
      qiov.copyTo(copy);
      cache.set(key, copy);
    },
  };
});

/** Discard zeroes one byte too many (an off-by-one at the end of the range). */
export const discardOverrunDriver = wrapMem('buggy-discard-overrun', {}, (impl) => ({
  ...impl,
  async pdiscard(offset: number, bytes: number) {
    return impl.pdiscard!(offset, bytes + 1);
  },
}));

/** Claims everything reads as zeroes. */
export const lyingStatusDriver = wrapMem('buggy-status', {}, (impl) => ({
  ...impl,
  blockStatus: (_w: boolean, offset: number, bytes: number) => ({ status: BlockStatus.ZERO, pnum: bytes, map: offset }),
}));

/** Only fills the first slice of a multi-slice read. */
export const firstSliceDriver = wrapMem('buggy-iovec', {}, (impl) => ({
  ...impl,
  async preadv(offset: number, bytes: number, qiov: IOVector, flags: number) {
    const buf = new Uint8Array(bytes);
    await impl.preadv!(offset, bytes, IOVector.of(buf), flags);
    const first = qiov.iov[0]!;
    first.set(buf.subarray(0, first.byteLength));
  },
}));

/** Declares discard on every other instance only: the manifest is not stable. */
let instances = 0;
export const unstableManifestDriver = wrapMem('buggy-unstable-manifest', {}, (impl) => ({
  ...impl,
  capabilities: { discard: instances++ % 2 === 0, discardZeroes: instances % 2 === 1 },
}));

export const buggyDrivers = [dropsWritesDriver, staleReadsDriver, discardOverrunDriver, lyingStatusDriver, firstSliceDriver, unstableManifestDriver];

export { testCowDriver, testFilterDriver, testMemDriver };
