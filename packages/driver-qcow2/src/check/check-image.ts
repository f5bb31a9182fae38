import type { BlockErrorCode, CheckFix, CheckResult } from '@blockgraph/block-core';
import { INCOMPAT_CORRUPT, INCOMPAT_DIRTY } from '../format/index.js';
import { CheckAbort, fixBits } from './check-abort.js';
import { addCounters, emptyCounters, type CheckCounters } from './check-counters.js';
import { openForCheck, writeHeader, type CheckState } from './check-state.js';
import { checkRefcounts } from './check-refcounts.js';
import type { ImageIO } from './image-io.js';
import { checkFixSnapshotTable, checkReadSnapshotTable } from './snapshot-check.js';

export interface CheckImageOptions {
  /**
   * The image uses an external data file opened as raw data (data_file_raw). Accepted for symmetry with the
   * driver's open options; the check itself only needs the header (incompatible bit 2 decides whether data
   * clusters are refcounted), so this does not change the result.
   */
  dataFileRaw?: boolean;
  /**
   * Refcount blocks the image's refcount cache holds (QEMU's refcount-cache-size / cluster size; default 4): the
   * check keeps its repairs in a cache of this shape, which decides what reaches the file when.
   */
  refcountCacheBlocks?: number;
}

interface PassOutcome {
  counters: CheckCounters;
  failed?: BlockErrorCode;
  /** The image was marked corrupt by a fatal event: QEMU's node is unusable afterwards. */
  nodeGone: boolean;
}

/** qcow2_co_check_locked() on a freshly opened image, plus QEMU's close-time write-back. */
async function checkPass(
  io: ImageIO,
  fix: number,
  writable: boolean,
  messages: string[],
  opts: CheckImageOptions,
): Promise<PassOutcome> {
  const st: CheckState = await openForCheck(io, writable, opts.refcountCacheBlocks);
  st.messages = messages;
  const result = emptyCounters();
  const snapshotRes = emptyCounters();
  const refcountRes = emptyCounters();
  let failed: BlockErrorCode | undefined;
  try {
    try {
      await checkReadSnapshotTable(st, snapshotRes, fix);
    } catch (e) {
      addCounters(result, snapshotRes, false);
      throw e;
    }
    try {
      await checkRefcounts(st, refcountRes, fix);
    } finally {
      addCounters(result, refcountRes, true);
    }
    try {
      await checkFixSnapshotTable(st, snapshotRes, fix);
    } finally {
      addCounters(result, snapshotRes, false);
    }
    if (fix && result.checkErrors === 0 && result.corruptions === 0) {
      await markClean(st);
      await markConsistent(st);
    }
  } catch (e) {
    if (!(e instanceof CheckAbort)) throw e;
    failed = e.code;
  } finally {
    // Closing writes the refcount cache back — unless a fatal corruption event made QEMU's node unusable.
    if (fix && !st.nodeGone && (await st.refcounts.writeBack())) await io.flush();
  }
  return { counters: result, ...(failed ? { failed } : {}), nodeGone: st.nodeGone };
}

/** qcow2_mark_clean(): clear the dirty bit (full header rewrite after the caches are on disk). */
async function markClean(st: CheckState): Promise<void> {
  if (!(st.header.incompatibleFeatures & INCOMPAT_DIRTY)) return;
  st.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
  if (await st.refcounts.writeBack()) await st.io.flush();
  await writeHeader(st);
}

/** qcow2_mark_consistent(): clear the corrupt bit the same way. */
async function markConsistent(st: CheckState): Promise<void> {
  if (!(st.header.incompatibleFeatures & INCOMPAT_CORRUPT)) return;
  if (await st.refcounts.writeBack()) await st.io.flush();
  st.header.incompatibleFeatures &= ~INCOMPAT_CORRUPT;
  await writeHeader(st);
}

/** BdrvCheckResult's counters are C ints: a count past 2^31 (a table of 2^31 bogus snapshots) wraps as in QEMU. */
const int32 = (n: number): number => n | 0;

function toResult(c: CheckCounters, messages: string[]): CheckResult {
  return {
    corruptions: int32(c.corruptions),
    leaks: int32(c.leaks),
    checkErrors: int32(c.checkErrors),
    corruptionsFixed: int32(c.corruptionsFixed),
    leaksFixed: int32(c.leaksFixed),
    imageEndOffset: c.imageEndOffset,
    totalClusters: c.totalClusters,
    allocatedClusters: c.allocatedClusters,
    fragmentedClusters: c.fragmentedClusters,
    compressedClusters: c.compressedClusters,
    messages,
  };
}

/**
 * `qemu-img check [-r leaks|all]` on a qcow2 image, as a standalone module working on the image file only.
 *
 * One pass is QEMU's qcow2 check (snapshot table sanity, refcount computation and comparison, in-place
 * repair or full rebuild of the refcount structures, COPIED flags, snapshot table rewrite, dirty and corrupt
 * bits). When that pass repaired anything, the image is checked again without repairs, like qemu-img's
 * "Double checking the fixed image now...": the result then holds the second pass's counts with the first
 * pass's `corruptionsFixed`/`leaksFixed`, and `firstPass` holds what the first pass left unrepaired.
 * `messages` are the lines qemu-img prints on stderr during both passes (without qemu-img's final
 * "Check failed" line; see checkFailureMessage()).
 *
 * A check QEMU cannot complete yields `checkFailed` (the errno) and zero counters; an image QEMU cannot
 * even open rejects with a BlockError carrying QEMU's open error message.
 */
export async function checkImage(io: ImageIO, fix: CheckFix, opts: CheckImageOptions = {}): Promise<CheckResult> {
  const messages: string[] = [];
  const writable = fix !== 'none';
  const first = await checkPass(io, fixBits(fix), writable, messages, opts);
  if (first.failed) return { ...toResult(emptyCounters(), messages), checkFailed: first.failed };
  const c = first.counters;
  if (!c.corruptionsFixed && !c.leaksFixed) return toResult(c, messages);

  // The node QEMU checks again is gone after a fatal corruption event.
  const second: PassOutcome = first.nodeGone
    ? { counters: emptyCounters(), failed: 'ENOMEDIUM', nodeGone: true }
    : await checkPass(io, 0, writable, messages, opts);
  const firstPass = { corruptions: int32(c.corruptions), leaks: int32(c.leaks) };
  if (second.failed) {
    return {
      ...toResult(emptyCounters(), messages),
      corruptionsFixed: int32(c.corruptionsFixed),
      leaksFixed: int32(c.leaksFixed),
      firstPass,
      checkFailed: second.failed,
    };
  }
  return {
    ...toResult(second.counters, messages),
    corruptionsFixed: int32(c.corruptionsFixed),
    leaksFixed: int32(c.leaksFixed),
    firstPass,
  };
}

/**
 * One check pass without qemu-img's double check: what QEMU runs itself (qcow2_co_check_locked with
 * fix = 'all') when a dirty image is opened read-write. The caller treats `checkFailed` or `checkErrors` as
 * "Could not repair dirty image".
 */
export async function checkImageOnce(io: ImageIO, fix: CheckFix, opts: CheckImageOptions = {}): Promise<CheckResult> {
  const messages: string[] = [];
  const pass = await checkPass(io, fixBits(fix), fix !== 'none', messages, opts);
  if (pass.failed) return { ...toResult(emptyCounters(), messages), checkFailed: pass.failed };
  return toResult(pass.counters, messages);
}
