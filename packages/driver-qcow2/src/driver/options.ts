import { BlockError, type OptionSchema, type Options } from '@blockgraph/block-core';
import type { Qcow2Header } from '../format/index.js';
import { INT_MAX, headerGeometry } from '../format/index.js';
import { OVERLAP_ALL, OVERLAP_CACHED, OVERLAP_CONSTANT, type Qcow2RuntimeOptions } from './state.js';

/** QEMU's defaults (block/qcow2.h). */
export const DEFAULT_L2_CACHE_MAX_SIZE = 32 * 1024 * 1024;
export const MIN_L2_CACHE_SIZE = 2;
export const MIN_REFCOUNT_CACHE_SIZE = 4;
export const DEFAULT_CACHE_CLEAN_INTERVAL = 600;

/** Runtime options (blockdev-add), camelCase; the Graph also accepts QEMU's kebab-case names. */
export const QCOW2_RUNTIME_OPTIONS: OptionSchema = {
  file: { type: 'ref', required: true, description: 'the node holding the image file' },
  backing: {
    type: 'ref',
    nullable: true,
    description: 'backing node (name or options); null opens none; default: the file named in the image',
  },
  dataFile: { type: 'ref', description: 'external data file node (default: the file named in the image)' },
  lazyRefcounts: { type: 'boolean', description: 'postpone refcount updates (default: the image\'s lazy_refcounts bit)' },
  passDiscardRequest: { type: 'boolean', description: 'pass guest discard requests to the file (default: discard=unmap)' },
  passDiscardSnapshot: { type: 'boolean', default: true, description: 'discard clusters freed by snapshot operations in the file' },
  passDiscardOther: { type: 'boolean', default: false, description: 'discard other freed clusters in the file' },
  overlapCheck: {
    type: 'enum',
    values: ['none', 'constant', 'cached', 'all'],
    default: 'cached',
    description: 'which metadata structures are checked before every write',
  },
  cacheSize: { type: 'size', min: 0, description: 'maximum combined metadata (L2 + refcount) cache size' },
  l2CacheSize: { type: 'size', min: 0, description: 'maximum L2 table cache size (default: whole disk, at most 32 MiB)' },
  l2CacheEntrySize: { type: 'size', min: 0, description: 'size of each L2 cache entry (slice)' },
  refcountCacheSize: { type: 'size', min: 0, description: 'maximum refcount block cache size' },
  cacheCleanInterval: {
    type: 'integer',
    min: 0,
    default: DEFAULT_CACHE_CLEAN_INTERVAL,
    description: 'drop unused cache entries after this many seconds (0 = never)',
  },
  checkMode: {
    type: 'boolean',
    default: false,
    description: 'open for qemu-img check: a corrupt image may be opened read-write, a dirty one is not repaired',
  },
  noIo: {
    type: 'boolean',
    default: false,
    description:
      'open read-only for metadata inspection (qemu-img info, BDRV_O_NO_IO): an external data file is not opened, checks only I/O needs are skipped, guest I/O is refused',
  },
};

export interface CacheSizes {
  l2CacheEntries: number;
  l2CacheEntrySize: number;
  refcountCacheEntries: number;
}

/** read_cache_sizes() + the minimums of qcow2_update_options_prepare(). */
export function cacheSizes(o: Options, header: Qcow2Header, virtualSize: number): CacheSizes {
  const g = headerGeometry(header);
  const cs = g.clusterSize;
  const minRefcountCache = MIN_REFCOUNT_CACHE_SIZE * cs;
  const maxL2Entries = Math.ceil(virtualSize / cs);
  const maxL2Cache = Math.ceil((maxL2Entries * g.l2EntrySize) / cs) * cs;
  const combinedSet = o.cacheSize !== undefined;
  const l2Set = o.l2CacheSize !== undefined;
  const refSet = o.refcountCacheSize !== undefined;
  const entrySizeSet = o.l2CacheEntrySize !== undefined;
  const combined = (o.cacheSize as number | undefined) ?? 0;
  const l2Max = (o.l2CacheSize as number | undefined) ?? DEFAULT_L2_CACHE_MAX_SIZE;
  let refcountCache = (o.refcountCacheSize as number | undefined) ?? 0;
  let entrySize = (o.l2CacheEntrySize as number | undefined) ?? cs;
  let l2Cache = Math.min(maxL2Cache, l2Max);
  if (combinedSet) {
    if (l2Set && refSet) {
      throw new BlockError('EINVAL', 'cache-size, l2-cache-size and refcount-cache-size may not be set at the same time');
    } else if (l2Set && l2Max > combined) {
      throw new BlockError('EINVAL', 'l2-cache-size may not exceed cache-size');
    } else if (refcountCache > combined) {
      throw new BlockError('EINVAL', 'refcount-cache-size may not exceed cache-size');
    }
    if (l2Set) {
      refcountCache = combined - l2Cache;
    } else if (refSet) {
      l2Cache = combined - refcountCache;
    } else if (combined >= maxL2Cache + minRefcountCache) {
      l2Cache = maxL2Cache;
      refcountCache = combined - l2Cache;
    } else {
      refcountCache = Math.min(combined, minRefcountCache);
      l2Cache = combined - refcountCache;
    }
  }
  // A cache that cannot cover the whole disk works better with small (4 KiB) slices.
  if (l2Cache < maxL2Cache && !entrySizeSet) entrySize = Math.min(cs, 4096);
  if (entrySize < 512 || entrySize > cs || (entrySize & (entrySize - 1)) !== 0) {
    throw new BlockError('EINVAL', `L2 cache entry size must be a power of two between 512 and the cluster size (${cs})`);
  }
  let l2Entries = Math.floor(l2Cache / entrySize);
  if (l2Entries < MIN_L2_CACHE_SIZE) l2Entries = MIN_L2_CACHE_SIZE;
  if (l2Entries > INT_MAX) throw new BlockError('EINVAL', 'L2 cache size too big');
  let refEntries = Math.floor(refcountCache / cs);
  if (refEntries < MIN_REFCOUNT_CACHE_SIZE) refEntries = MIN_REFCOUNT_CACHE_SIZE;
  if (refEntries > INT_MAX) throw new BlockError('EINVAL', 'Refcount cache size too big');
  return { l2CacheEntries: l2Entries, l2CacheEntrySize: entrySize, refcountCacheEntries: refEntries };
}

/** qcow2_update_options_prepare(): validate and resolve everything but the children. */
export function parseRuntimeOptions(
  o: Options,
  header: Qcow2Header,
  virtualSize: number,
  discardUnmap: boolean,
): Qcow2RuntimeOptions {
  const sizes = cacheSizes(o, header, virtualSize);
  const lazy = (o.lazyRefcounts as boolean | undefined) ?? (header.compatibleFeatures & 1n) !== 0n;
  if (lazy && header.version < 3) {
    throw new BlockError('EINVAL', 'Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level');
  }
  const interval = o.cacheCleanInterval as number;
  if (interval > 0xffffffff) throw new BlockError('EINVAL', 'Cache clean interval too big');
  const ol = o.overlapCheck as string;
  const overlapCheck = ol === 'none' ? 0 : ol === 'constant' ? OVERLAP_CONSTANT : ol === 'all' ? OVERLAP_ALL : OVERLAP_CACHED;
  const passthrough = [
    false,
    true,
    (o.passDiscardRequest as boolean | undefined) ?? discardUnmap,
    o.passDiscardSnapshot as boolean,
    o.passDiscardOther as boolean,
  ];
  return {
    lazyRefcounts: lazy,
    discardPassthrough: passthrough,
    overlapCheck,
    l2CacheEntries: sizes.l2CacheEntries,
    l2CacheEntrySize: sizes.l2CacheEntrySize,
    refcountCacheEntries: sizes.refcountCacheEntries,
    cacheCleanInterval: interval,
  };
}
