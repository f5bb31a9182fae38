import {
  BlockError,
  BlockStatus,
  blockStatusAbove,
  errnoError,
  normaliseOptions,
  toBlockError,
  type BlockNode,
  type MeasureResult,
  type Options,
} from '@blockgraph/block-core';
import { QCOW_MAX_L1_SIZE } from '../format/index.js';
import { optBool, optSize } from './opt-values.js';
import { refcountMetadataSize } from './refcount.js';
import type { Qcow2State } from './state.js';

/**
 * qemu-img measure for qcow2 (QEMU 7.2's qcow2_measure): the file size an image with the given creation
 * options needs, for a new disk of `size` bytes or for the data of an existing image (`source`, read through
 * its whole backing chain). "fully allocated" is header + L2 tables + L1 table + refcount structures + every
 * data cluster; "required" leaves out the data clusters the source does not have (all of them with
 * preallocation=falloc/full, none with a backing_file, which may share nothing with the source).
 */

function einval(message: string): BlockError {
  return new BlockError('EINVAL', message);
}

/** qcow2_calc_prealloc_size(): every byte of a fully allocated image. */
export function calcPreallocSize(totalSize: number, clusterSize: number, refcountOrder: number, extendedL2: boolean): number {
  const l2eSize = extendedL2 ? 16 : 8;
  const aligned = Math.ceil(totalSize / clusterSize) * clusterSize;
  let meta = clusterSize; // header
  const perL2 = clusterSize / l2eSize;
  const nl2e = Math.ceil(aligned / clusterSize / perL2) * perL2;
  meta += nl2e * l2eSize;
  const perL1Cluster = clusterSize / 8;
  const nl1e = Math.ceil((nl2e * l2eSize) / clusterSize / perL1Cluster) * perL1Cluster;
  meta += nl1e * 8;
  meta += refcountMetadataSize((meta + aligned) / clusterSize, clusterSize, refcountOrder, false).bytes;
  return meta + aligned;
}

/** Bytes the persistent bitmaps of a qcow2 v3 source would take (qcow2_get_persistent_dirty_bitmap_size). */
function bitmapsSize(source: BlockNode, clusterSize: number): number | undefined {
  const impl = source.impl as { state?: Qcow2State; bitmaps?: { name: string; granularity: number }[] | null };
  const st = impl.state;
  // bdrv_supports_persistent_dirty_bitmap(): qcow2 v3 only.
  if (source.driver.name !== 'qcow2' || !st || st.version < 3) return undefined;
  let total = 0;
  let dir = 0;
  for (const bm of impl.bitmaps ?? []) {
    const bytes = Math.ceil(Math.ceil(source.totalBytes / bm.granularity) / 8);
    const clusters = Math.ceil(bytes / clusterSize);
    total += clusters * clusterSize;
    total += Math.ceil((clusters * 8) / clusterSize) * clusterSize;
    dir += Math.ceil((24 + new TextEncoder().encode(bm.name).length) / 8) * 8;
  }
  return total + Math.ceil(dir / clusterSize) * clusterSize;
}

export async function measureQcow2(options: Options, source?: BlockNode): Promise<MeasureResult> {
  // Dotted keys (`encrypt.key-secret`, as the CLI passes them) nest like any other options: one form to read.
  const o = normaliseOptions(options);
  const extendedL2 = o.extendedL2 === undefined ? false : optBool('extended_l2', o.extendedL2);
  const clusterSize = o.clusterSize === undefined ? 65536 : optSize('cluster_size', o.clusterSize);
  if (!(clusterSize >= 512 && clusterSize <= 2 * 1024 * 1024) || (clusterSize & (clusterSize - 1)) !== 0) {
    throw einval('Cluster size must be a power of two between 512 and 2048k');
  }
  if (extendedL2 && clusterSize < 16384) {
    throw einval('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  }
  let version = 3;
  if (o.compat !== undefined) {
    const c = String(o.compat);
    if (c === '0.10') version = 2;
    else if (c === '1.1') version = 3;
    else throw einval(`Invalid compatibility level: '${c}'`);
  }
  const refcountBits = o.refcountBits === undefined ? 16 : Number(o.refcountBits);
  if (!Number.isInteger(refcountBits) || refcountBits > 64 || refcountBits <= 0 || (refcountBits & (refcountBits - 1)) !== 0) {
    throw einval('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && refcountBits !== 16) {
    throw einval('Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  const prealloc = o.preallocation === undefined ? 'off' : String(o.preallocation);
  if (!['off', 'metadata', 'falloc', 'full'].includes(prealloc)) throw einval(`invalid parameter value: ${prealloc}`);
  const hasBackingFile = o.backingFile !== undefined;
  // Only LUKS changes the size (its header); qcow2_measure() needs the secret to lay one out, AES needs nothing.
  const encrypt = (o.encrypt as Options | undefined) ?? {};
  if (encrypt.format === 'luks') {
    if (encrypt.keySecret === undefined) throw einval("Parameter 'encrypt.key-secret' is required for cipher");
    throw new BlockError('ENOTSUP', 'qcow2: encrypted images are not supported');
  }

  let virtualSize = Math.ceil((o.size === undefined ? 0 : optSize('size', o.size)) / clusterSize) * clusterSize;
  const l2eSize = extendedL2 ? 16 : 8;
  const l2Tables = Math.ceil(virtualSize / clusterSize / (clusterSize / l2eSize));
  if (l2Tables * 8 > QCOW_MAX_L1_SIZE) throw einval('The image size is too large (try using a larger cluster size)');

  let required = 0;
  if (source) {
    const ssize = source.totalBytes;
    virtualSize = Math.ceil(ssize / clusterSize) * clusterSize;
    if (hasBackingFile) {
      // The new image's backing file may share nothing with the source: count every cluster.
      required = virtualSize;
    } else {
      let pnum = 0;
      for (let offset = 0; offset < ssize; offset += pnum) {
        let r;
        try {
          r = await blockStatusAbove(source, undefined, false, true, offset, ssize - offset);
        } catch (e) {
          // error_setg_errno(): the errno's text, not the message (a corruption event has printed that already).
          throw errnoError(toBlockError(e), 'Unable to get block status');
        }
        pnum = r.pnum;
        if (pnum <= 0) throw new BlockError('EIO', 'Unable to get block status: unexpected end of image');
        if (r.ret & BlockStatus.ZERO) {
          // zero regions need no data cluster (safe: the new image has no backing file)
        } else if ((r.ret & (BlockStatus.DATA | BlockStatus.ALLOCATED)) === (BlockStatus.DATA | BlockStatus.ALLOCATED)) {
          pnum = Math.ceil((offset + pnum) / clusterSize) * clusterSize - offset;
          required += (offset % clusterSize) + pnum;
        }
      }
    }
  }
  // Metadata preallocation needs nothing extra: metadata is always counted.
  if (prealloc === 'full' || prealloc === 'falloc') required = virtualSize;

  const fullyAllocated = calcPreallocSize(virtualSize, clusterSize, 31 - Math.clz32(refcountBits), extendedL2);
  const result: MeasureResult = { required: fullyAllocated - virtualSize + required, fullyAllocated };
  if (version >= 3 && source) {
    const b = bitmapsSize(source, clusterSize);
    if (b !== undefined) result.bitmaps = b;
  }
  return result;
}
