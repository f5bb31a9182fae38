import { STRERROR, isBlockError } from '@blockgraph/block-core';
import { FIX_ERRORS, FIX_LEAKS } from './check-abort.js';
import type { RefcountPass } from './calculate-refcounts.js';

/**
 * compare_refcounts(): the on-disk refcount of every cluster the array covers against the references
 * counted. A higher on-disk value is a leak, a lower one a corruption; an on-disk 0 for a referenced cluster
 * means the refcount structures themselves are broken (rebuild). With the matching repair mode the entry is
 * set to the counted value in place ("Repairing ..."); the refcount block changes are written back by the
 * caller. Returns the highest cluster index with a non-zero refcount on either side.
 */
export async function compareRefcounts(p: RefcountPass, fix: number): Promise<number> {
  try {
    return await compareAll(p, fix);
  } finally {
    // update_refcount() discards a freed cluster at once, whatever happens to the refcount itself (it waits in
    // the cache, and may never be written): the discards are not held back with it. They touch only freed
    // clusters, so issuing them together after the walk, merged into ranges, leaves the same file.
    await p.st.refcounts.processDiscards();
  }
}

async function compareAll(p: RefcountPass, fix: number): Promise<number> {
  const { st, res, imrt } = p;
  const perBlock = st.g.refcountBlockEntries;
  let highest = 0;
  // One refcount block at a time (a repair changes only the current cluster's entry, so reading the rest of
  // the block from the same buffer sees exactly what per-cluster lookups would).
  for (let start = 0; start < imrt.size; start += perBlock) {
    const end = Math.min(imrt.size, start + perBlock);
    let block: Uint8Array | null = null;
    let failure: string | null = null;
    try {
      block = await st.refcounts.blockData(start);
    } catch (e) {
      failure = isBlockError(e) ? STRERROR[e.code] : STRERROR.EIO;
    }
    // Nothing on disk and nothing counted: every entry agrees (a sparse image's long empty stretches).
    if (block === null && failure === null && imrt.blockIsZero(start / perBlock)) continue;
    for (let i = start; i < end; i++) {
      if (failure !== null) {
        st.messages.push(`Can't get refcount for cluster ${i}: ${failure}`);
        res.checkErrors++;
        continue;
      }
      const onDisk = block ? st.refcounts.entry(block, i) : 0;
      const counted = imrt.get(i);
      if (onDisk > 0 || counted > 0) highest = i;
      if (onDisk === counted) continue;

      let fixed: 'leaksFixed' | 'corruptionsFixed' | null = null;
      if (onDisk === 0) p.rebuild = true;
      else if (onDisk > counted && fix & FIX_LEAKS) fixed = 'leaksFixed';
      else if (onDisk < counted && fix & FIX_ERRORS) fixed = 'corruptionsFixed';

      const what = fixed ? 'Repairing' : onDisk < counted ? 'ERROR' : 'Leaked';
      st.messages.push(`${what} cluster ${i} refcount=${block ? st.refcounts.entryText(block, i) : 0} reference=${counted}`);
      if (fixed) {
        try {
          await st.refcounts.set(i, counted);
          res[fixed]++;
          continue;
        } catch {
          // Counted below like an unrepaired mismatch.
        }
      }
      if (onDisk < counted) res.corruptions++;
      else res.leaks++;
    }
  }
  return highest;
}
