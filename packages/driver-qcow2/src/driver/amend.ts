import { BlockError, camelCase, errnoError, isBlockError, type OptionSchema, type Options } from '@blockgraph/block-core';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  ClusterType,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DIRTY,
  OFFSET_MASK_HI,
  OFFSET_MASK_LO,
  OFLAG_COPIED_HI,
  SNAPSHOT_EXTRA_DATA_SIZE,
  SubclusterType,
  hex,
  hexAlt,
  l2ClusterType,
} from '../format/index.js';
import { changeRefcountOrder } from './amend-refcount.js';
import { QCOW2_CREATE_OPTIONS } from './create.js';
import { Mapping, mapLocked } from './cluster.js';
import { markClean, updateHeader } from './header-io.js';
import { optBool, optNumber, optSize } from './opt-values.js';
import { readAt } from './metadata.js';
import { preWriteOverlapCheck, signalCorruption } from './overlap.js';
import { allocClusters, freeClusters, getRefcount, updateRefcount } from './refcount.js';
import { validateSnapshotL1, withReports, writeSnapshots } from './snapshot.js';
import { DiscardType, Overlap, type Qcow2State } from './state.js';

/**
 * qemu-img amend for qcow2 (QEMU 7.2's qcow2_amend_options): compat upgrade (0.10 -> 1.1) first, the
 * refcount width, data-file-raw / data-file, one header rewrite, then lazy_refcounts, size, and the compat
 * downgrade (1.1 -> 0.10, turning zero clusters into data) last. backing_file / backing_fmt can only be
 * "changed" to what they are (QEMU sends you to rebase); the other creation options are refused by the caller
 * ("This option is only supported for image creation").
 */

/** The amend options, in QEMU's order (qcow2_amend_opts: encrypt.* then QCOW_COMMON_OPTIONS). */
export const QCOW2_AMEND_OPTIONS: OptionSchema = {
  encrypt: {
    type: 'object',
    description: 'LUKS keyslot changes',
    fields: {
      state: { type: 'string', description: 'Select new state of affected keyslots (active/inactive)' },
      keyslot: { type: 'integer', description: 'Select a single keyslot to modify explicitly' },
      oldSecret: { type: 'string', description: 'Select all keyslots that match this password' },
      newSecret: { type: 'string', description: 'New secret to set in the matching keyslots. Empty string to erase' },
      iterTime: { type: 'integer', description: 'Time to spend in PBKDF in milliseconds' },
    },
  },
  // QCOW_COMMON_OPTIONS, shared with creation (only size has no lower bound here).
  size: { type: 'size', description: 'Virtual disk size' },
  compat: QCOW2_CREATE_OPTIONS.compat,
  backingFile: QCOW2_CREATE_OPTIONS.backingFile,
  backingFmt: QCOW2_CREATE_OPTIONS.backingFmt,
  dataFile: QCOW2_CREATE_OPTIONS.dataFile,
  dataFileRaw: QCOW2_CREATE_OPTIONS.dataFileRaw,
  lazyRefcounts: QCOW2_CREATE_OPTIONS.lazyRefcounts,
  refcountBits: QCOW2_CREATE_OPTIONS.refcountBits,
};

/** An error with QEMU's hint line (error_append_hint), printed after the message. */
function withHint(e: BlockError, hint: string): BlockError {
  return Object.assign(e, { hint });
}

function einval(message: string): BlockError {
  return new BlockError('EINVAL', message);
}

/** Flatten nested `{ encrypt: { keyslot } }` into `encrypt.keyslot` and accept snake/kebab spellings. */
function flatten(o: Options): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const [k, v] of Object.entries(o)) {
    if (v === undefined) continue;
    if (k === 'encrypt' && v && typeof v === 'object') {
      for (const [k2, v2] of Object.entries(v as Options)) out.set(`encrypt.${k2}`, v2);
    } else if (k.startsWith('encrypt.')) {
      out.set(k, v);
    } else {
      out.set(camelCase(k), v);
    }
  }
  return out;
}

export interface AmendHooks {
  /** Resize the image and its node (the instance's truncate, exact). */
  resize(size: number): Promise<void>;
  /** Progress of the long steps (QEMU's amend status callback), 0..1. */
  progress?(fraction: number): void;
}

/** qcow2_amend_options(). Runs drained, under the metadata lock except for the resize. */
export async function amendImage(s: Qcow2State, options: Options, hooks: AmendHooks, lock: <T>(fn: () => Promise<T>) => Promise<T>): Promise<void> {
  const oldVersion = s.version;
  let newVersion = oldVersion;
  let newSize = 0;
  let backingFile: string | undefined;
  let backingFormat: string | undefined;
  let dataFile: string | undefined;
  let lazyRefcounts = s.useLazyRefcounts;
  let dataFileRaw = s.dataFileIsRaw;
  let refcountBits = s.g.refcountBits;

  const given = flatten(options);
  for (const k of given.keys()) {
    if (k === 'force') continue;
    if (!(k in QCOW2_AMEND_OPTIONS) && !k.startsWith('encrypt.')) throw einval(`Invalid parameter '${k}'`);
  }
  // In QEMU's option order: the encryption options come first.
  if ([...given.keys()].some((k) => k.startsWith('encrypt.'))) {
    throw einval("Can't amend encryption options - encryption not present");
  }
  for (const key of Object.keys(QCOW2_AMEND_OPTIONS)) {
    if (!given.has(key)) continue;
    const v = given.get(key);
    switch (key) {
      case 'compat': {
        const c = String(v);
        if (c === '0.10' || c === 'v2') newVersion = 2;
        else if (c === '1.1' || c === 'v3') newVersion = 3;
        else throw einval(`Unknown compatibility level ${c}`);
        break;
      }
      case 'size':
        newSize = optSize('size', v);
        break;
      case 'backingFile':
        backingFile = String(v);
        break;
      case 'backingFmt':
        backingFormat = String(v);
        break;
      case 'lazyRefcounts':
        lazyRefcounts = optBool('lazy_refcounts', v);
        break;
      case 'refcountBits':
        refcountBits = optNumber('refcount_bits', v);
        if (!(refcountBits > 0 && refcountBits <= 64) || (refcountBits & (refcountBits - 1)) !== 0) {
          throw einval('Refcount width must be a power of two and may not exceed 64 bits');
        }
        break;
      case 'dataFile':
        dataFile = String(v);
        if (!s.hasDataFile) throw einval('data-file can only be set for images that use an external data file');
        break;
      case 'dataFileRaw':
        dataFileRaw = optBool('data_file_raw', v);
        if (dataFileRaw && !s.dataFileIsRaw) throw einval('data-file-raw cannot be set on existing images');
        break;
    }
  }

  await lock(async () => {
    // Upgrade first: some features need compat=1.1.
    if (newVersion > oldVersion) await upgrade(s);

    if (s.g.refcountBits !== refcountBits) {
      if (newVersion < 3 && refcountBits !== 16) {
        throw einval(
          'Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)',
        );
      }
      await changeRefcountOrder(s, 31 - Math.clz32(refcountBits), (done, total) => hooks.progress?.(total ? done / total : 1));
    }

    // data-file-raw blocks backing files, so it is cleared first when asked.
    const h = s.header;
    if (dataFileRaw) h.autoclearFeatures |= AUTOCLEAR_DATA_FILE_RAW;
    else h.autoclearFeatures &= ~AUTOCLEAR_DATA_FILE_RAW;
    if (dataFile !== undefined) h.extensions.dataFile = dataFile === '' ? null : dataFile;
    try {
      await updateHeader(s);
    } catch (e) {
      throw errnoError(e, 'Failed to update the image header');
    }

    if (backingFile !== undefined || backingFormat !== undefined) {
      if ((backingFile ?? null) !== h.backingFile || (backingFormat ?? null) !== h.extensions.backingFormat) {
        throw withHint(einval('Cannot amend the backing file'), "You can use 'qemu-img rebase' instead.");
      }
    }

    if (s.useLazyRefcounts !== lazyRefcounts) {
      if (lazyRefcounts) {
        if (newVersion < 3) {
          throw einval('Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
        }
        h.compatibleFeatures |= COMPAT_LAZY_REFCOUNTS;
        try {
          await updateHeader(s);
        } catch (e) {
          h.compatibleFeatures &= ~COMPAT_LAZY_REFCOUNTS;
          throw errnoError(e, 'Failed to update the image header');
        }
        s.useLazyRefcounts = true;
      } else {
        try {
          await markClean(s);
        } catch (e) {
          throw errnoError(e, 'Failed to make the image clean');
        }
        h.compatibleFeatures &= ~COMPAT_LAZY_REFCOUNTS;
        try {
          await updateHeader(s);
        } catch (e) {
          h.compatibleFeatures |= COMPAT_LAZY_REFCOUNTS;
          throw errnoError(e, 'Failed to update the image header');
        }
        s.useLazyRefcounts = false;
      }
      s.options = { ...s.options, lazyRefcounts: s.useLazyRefcounts };
    }
  });

  // Amending sets exactly the size asked for (exact=true).
  if (newSize) await hooks.resize(newSize);

  // Downgrade last, once the options that need compat=1.1 are gone.
  if (newVersion < oldVersion) await lock(() => downgrade(s, hooks));
}

/** qcow2_upgrade(): v3 snapshot table entries need the extra data QEMU always writes, then the header. */
async function upgrade(s: Qcow2State): Promise<void> {
  if (s.snapshots.some((sn) => sn.extraDataSize < 16)) {
    // qcow2_write_snapshots() always writes the 24 bytes of extra data.
    s.snapshots = s.snapshots.map((sn) => ({ ...sn, extraDataSize: Math.max(sn.extraDataSize, SNAPSHOT_EXTRA_DATA_SIZE) }));
    try {
      await writeSnapshots(s);
    } catch (e) {
      throw errnoError(e, 'Failed to update the snapshot table');
    }
  }
  setVersion(s, 3);
  try {
    await updateHeader(s);
  } catch (e) {
    setVersion(s, 2);
    throw errnoError(e, 'Failed to update the image header');
  }
}

function setVersion(s: Qcow2State, v: 2 | 3): void {
  s.version = v;
  s.header.version = v;
  if (v === 3) {
    // A v2 header reads as v3 with QEMU's defaults for the fields it lacks.
    s.header.refcountOrder = s.g.refcountOrder;
  }
}

/** qcow2_downgrade(). */
async function downgrade(s: Qcow2State, hooks: AmendHooks): Promise<void> {
  const h = s.header;
  if (s.g.refcountOrder !== 4) throw new BlockError('ENOTSUP', 'compat=0.10 requires refcount_bits=16');
  if (s.hasDataFile) throw new BlockError('ENOTSUP', 'Cannot downgrade an image with a data file');
  // Other v2 programs would not know that a different disk size or a 64-bit VM state size matters.
  for (const sn of s.snapshots) {
    if (sn.vmStateSize > 0xffffffff || sn.diskSize !== s.size) {
      throw new BlockError('ENOTSUP', 'Internal snapshots prevent downgrade of image');
    }
  }
  if (h.incompatibleFeatures & INCOMPAT_DIRTY) {
    try {
      await markClean(s);
    } catch (e) {
      throw errnoError(e, 'Failed to make the image clean');
    }
  }
  const incompat = h.incompatibleFeatures & ~INCOMPAT_COMPRESSION;
  if (incompat) {
    throw new BlockError('ENOTSUP', `Cannot downgrade an image with incompatible features ${hex(incompat)} set`);
  }
  // Compatible features can be dropped; lazy refcounts were settled when the dirty bit was cleared.
  h.compatibleFeatures = 0n;
  h.autoclearFeatures = 0n;
  s.useLazyRefcounts = false;
  s.options = { ...s.options, lazyRefcounts: false };

  try {
    await expandZeroClusters(s, hooks);
  } catch (e) {
    const failed = errnoError(e, 'Failed to turn zero into data clusters');
    const reported = (e as { reported?: string[] }).reported;
    throw reported && isBlockError(failed) ? withReports(failed, reported) : failed;
  }

  if (h.compressionType !== 0) {
    let found: boolean;
    try {
      found = await hasCompressedClusters(s);
    } catch {
      throw einval('Failed to check block status');
    }
    if (found) {
      throw new BlockError('ENOTSUP', 'Cannot downgrade an image with zstd compression type and existing compressed clusters');
    }
    h.incompatibleFeatures &= ~INCOMPAT_COMPRESSION;
    h.compressionType = 0;
  }

  setVersion(s, 2);
  try {
    await updateHeader(s);
  } catch (e) {
    setVersion(s, 3);
    throw errnoError(e, 'Failed to update the image header');
  }
  s.node.refreshLimits();
}

/** qcow2_has_compressed_clusters(): any compressed cluster in the active table. */
async function hasCompressedClusters(s: Qcow2State): Promise<boolean> {
  const m = new Mapping();
  for (let offset = 0; offset < s.size; ) {
    const bytes = Math.min(0x7fffffff, s.size - offset);
    await mapLocked(s, offset, bytes, m);
    if (m.type === SubclusterType.COMPRESSED) return true;
    offset += m.bytes;
  }
  return false;
}

const TWO32 = 4294967296;

/**
 * qcow2_expand_zero_clusters(): every zero cluster of every L1 table (active and snapshots) becomes a data
 * cluster full of zeroes (or, without a backing file, an unallocated one), so that a v2 reader sees the same
 * disk. Active L2 tables are changed through the cache, inactive ones on disk.
 */
async function expandZeroClusters(s: Qcow2State, hooks: AmendHooks): Promise<void> {
  let total = s.l1Size;
  for (const sn of s.snapshots) total += sn.l1Size;
  const visited = { n: 0 };
  const tick = () => {
    visited.n++;
    hooks.progress?.(total ? visited.n / total : 1);
  };
  await expandInL1(s, s.l1View, s.l1Size, true, tick);
  // Inactive tables may point at active L2 tables: write those back first and forget them (qcow2_cache_empty).
  await s.l2Cache.flush();
  s.l2Cache.dropAll();
  for (const sn of s.snapshots) {
    const bad = validateSnapshotL1(s, sn);
    if (bad) throw withReports(bad, [bad.message]); // error_report_err() before the caller's message
    const bytes = await readAt(s, sn.l1TableOffset, sn.l1Size * 8);
    await expandInL1(s, new DataView(bytes.buffer), sn.l1Size, false, tick);
  }
}

async function expandInL1(s: Qcow2State, l1: DataView, l1Size: number, active: boolean, tick: () => void): Promise<void> {
  const cs = s.clusterSize;
  const esz = s.g.l2EntrySize;
  const sliceBytes = s.l2SliceBytes;
  const nSlices = cs / sliceBytes;
  for (let i = 0; i < l1Size; i++) {
    const l2Offset = (l1.getUint32(i * 8) & OFFSET_MASK_HI) * TWO32 + ((l1.getUint32(i * 8 + 4) & OFFSET_MASK_LO) >>> 0);
    if (!l2Offset) {
      tick();
      continue;
    }
    if (l2Offset % cs) {
      throw await signalCorruption(s, true, -1, -1, `L2 table offset ${hexAlt(l2Offset)} unaligned (L1 index: ${hexAlt(i)})`);
    }
    const l2Refcount = await getRefcount(s, l2Offset / cs);
    for (let slice = 0; slice < nSlices; slice++) {
      const sliceOffset = l2Offset + slice * sliceBytes;
      const entry = active ? await s.l2Cache.get(sliceOffset) : null;
      const buf = entry ? entry.buf : await readAt(s, sliceOffset, sliceBytes);
      const v = entry ? entry.view : new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      let dirty = false;
      try {
        for (let j = 0; j < s.l2SliceEntries; j++) {
          const hi = v.getUint32(j * esz);
          const lo = v.getUint32(j * esz + 4);
          const type = l2ClusterType(hi, lo, s.mode);
          if (type !== ClusterType.ZERO_PLAIN && type !== ClusterType.ZERO_ALLOC) continue;
          let offset = (hi & OFFSET_MASK_HI) * TWO32 + ((lo & OFFSET_MASK_LO) >>> 0);
          const plain = type === ClusterType.ZERO_PLAIN;
          if (plain) {
            if (!s.backing) {
              // Not backed: the cluster can simply be unallocated.
              v.setUint32(j * esz, 0);
              v.setUint32(j * esz + 4, 0);
              dirty = true;
              continue;
            }
            offset = await allocClusters(s, cs);
            if (l2Refcount > 1) {
              // A shared L2 table: the new cluster is referenced as often as the table.
              try {
                for (;;) if ((await updateRefcount(s, offset, 1, l2Refcount - 1, false, DiscardType.OTHER)) === 'ok') break;
              } catch (e) {
                await freeClusters(s, offset, cs, DiscardType.OTHER);
                throw e;
              }
            }
          }
          if (offset % cs) {
            const err = await signalCorruption(
              s,
              true,
              -1,
              -1,
              `Cluster allocation offset ${hexAlt(offset)} unaligned (L2 offset: ${hexAlt(l2Offset)}, L2 index: ${hexAlt(slice * s.l2SliceEntries + j)})`,
            );
            if (plain) await freeClusters(s, offset, cs, DiscardType.ALWAYS);
            throw err;
          }
          try {
            await preWriteOverlapCheck(s, 0, offset, cs, true);
            await s.dataFile.pwriteZeroes(offset, cs, 0);
          } catch (e) {
            if (plain) await freeClusters(s, offset, cs, DiscardType.ALWAYS);
            throw e;
          }
          // COPIED only when both the L2 table and the cluster are referenced once. QEMU 7.2 looks at the L2
          // table alone, so a preallocated zero cluster shared with a snapshot comes out COPIED with refcount 2
          // (qemu-img check: "ERROR OFLAG_COPIED data cluster"), and a later write would change the snapshot.
          const copied = l2Refcount === 1 && (plain || (await getRefcount(s, offset / cs)) === 1);
          v.setUint32(j * esz, (copied ? OFLAG_COPIED_HI : 0) + Math.floor(offset / TWO32));
          v.setUint32(j * esz + 4, offset >>> 0);
          dirty = true;
        }
        if (entry) {
          if (dirty) {
            s.l2Cache.markDirty(entry);
            s.l2Cache.setDependsOnFlush();
          }
        } else if (dirty) {
          await preWriteOverlapCheck(s, Overlap.INACTIVE_L2 | Overlap.ACTIVE_L2, sliceOffset, sliceBytes, false);
          await s.writeFile(sliceOffset, buf);
        }
      } finally {
        if (entry) s.l2Cache.put(entry);
      }
    }
    tick();
  }
}
