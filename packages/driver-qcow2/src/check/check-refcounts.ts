import { CheckAbort, FIX_ERRORS, FIX_LEAKS } from './check-abort.js';
import { emptyCounters, type CheckCounters } from './check-counters.js';
import type { CheckState } from './check-state.js';
import { calculateRefcounts, type RefcountPass } from './calculate-refcounts.js';
import { compareRefcounts } from './compare-refcounts.js';
import { checkOflagCopied } from './oflag-copied.js';
import { RefcountArray } from './refcount-array.js';
import { rebuildRefcountStructure } from './rebuild-refcounts.js';

const INT_MAX = 0x7fffffff;

/**
 * qcow2_check_refcounts(): compute the references, compare them with the stored refcounts, repair in place
 * or rebuild the whole refcount structure, check the COPIED flags, and compute the image end offset.
 * Throws CheckAbort where QEMU returns an error (the counters in `res` are then still updated).
 */
export async function checkRefcounts(st: CheckState, res: CheckCounters, fix: number): Promise<void> {
  const cs = st.clusterSize;
  const nbClusters = Math.ceil(st.fileLength / cs);
  if (nbClusters > INT_MAX) {
    res.checkErrors++;
    throw new CheckAbort('EFBIG');
  }
  res.totalClusters = Math.ceil((Math.floor(st.header.size / 512) * 512) / cs);

  const p: RefcountPass = { st, res, imrt: new RefcountArray(st.g.refcountOrder, cs, nbClusters), rebuild: false };
  await calculateRefcounts(p, fix);

  // If the structure need not be rebuilt but something is to be fixed, the comparison runs again with
  // repairs from this state.
  const preCompare: CheckCounters = { ...res };
  let highest = await compareRefcounts(p, 0);

  if (p.rebuild && fix & FIX_ERRORS) {
    const old: CheckCounters = { ...res };
    let freshLeaks = 0;
    st.messages.push('Rebuilding refcount structure');
    await rebuildRefcountStructure(st, res, p.imrt);
    res.corruptions = 0;
    res.leaks = 0;

    // The old refcount table has been replaced: recount everything.
    p.rebuild = false;
    p.imrt.clear();
    await calculateRefcounts(p, 0);

    if (fix & FIX_LEAKS) {
      // The old refcount structures are now leaked: fix that. Leaks left over were introduced by the
      // rebuild itself.
      const saved: CheckCounters = { ...res };
      Object.assign(res, emptyCounters());
      highest = await compareRefcounts(p, FIX_LEAKS);
      if (p.rebuild) st.messages.push('ERROR rebuilt refcount structure is still broken');
      freshLeaks = res.leaks;
      Object.assign(res, saved);
    }
    if (res.corruptions < old.corruptions) res.corruptionsFixed += old.corruptions - res.corruptions;
    if (res.leaks < old.leaks) res.leaksFixed += old.leaks - res.leaks;
    res.leaks += freshLeaks;
  } else if (fix) {
    if (p.rebuild) {
      st.messages.push('ERROR need to rebuild refcount structures');
      res.checkErrors++;
      throw new CheckAbort('EIO');
    }
    if (res.leaks || res.corruptions) {
      Object.assign(res, preCompare);
      highest = await compareRefcounts(p, fix);
    }
  }

  // The refcount repairs stay in the cache, as in QEMU's refcount block cache: the COPIED check reads them
  // there, and they reach the disk when the image is closed (or marked clean), not when a fatal corruption event
  // has made the node unusable first.
  await checkOflagCopied(st, res, fix);
  res.imageEndOffset = (highest + 1) * cs;
}
