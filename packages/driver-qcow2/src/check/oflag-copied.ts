import { STRERROR, isBlockError } from '@blockgraph/block-core';
import { ClusterType, l2ClusterType } from '../format/index.js';
import { CheckAbort, FIX_ERRORS, FIX_LEAKS } from './check-abort.js';
import type { CheckCounters } from './check-counters.js';
import type { CheckState } from './check-state.js';
import { readFullOrBeyondEof } from './image-io.js';
import { Overlap, preWriteOverlapCheck } from './metadata-overlap.js';
import { hex64, u64 } from './u64-text.js';

/**
 * check_oflag_copied(): in the active L1 table and its L2 tables, COPIED must be set exactly when the
 * on-disk refcount of the table / data cluster is 1. Runs after the refcounts were compared (and repaired).
 * Repairs with -r all, and with -r leaks only when nothing else is wrong (then the refcounts are known to be
 * right). L1 entries are written one by one with a flush (qcow2_write_l1_entry), L2 tables as a whole.
 */
export async function checkOflagCopied(st: CheckState, res: CheckCounters, fix: number): Promise<void> {
  const repair =
    fix & FIX_ERRORS ? true : fix & FIX_LEAKS ? !res.checkErrors && !res.corruptions && !res.leaks : false;
  const cs = st.clusterSize;
  const es = st.g.l2EntrySize;
  const l1 = st.l1;

  for (let i = 0; i < st.header.l1Size; i++) {
    const l1Hi = l1.getUint32(i * 8);
    const l1Lo = l1.getUint32(i * 8 + 4);
    const offHi = l1Hi & 0x00ffffff;
    const offLo = l1Lo & 0xfffffe00;
    if (!offHi && !offLo) continue;
    const l2Offset = offHi * 4294967296 + (offLo >>> 0);
    const l2Safe = offHi <= 0x1fffff;

    let refcount: number;
    try {
      refcount = await st.refcounts.get(Math.floor(l2Offset / cs));
    } catch {
      continue; // already reported by the comparison
    }
    if ((refcount === 1) !== ((l1Hi & 0x80000000) !== 0)) {
      res.corruptions++;
      st.messages.push(
        `${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} ` +
          `l1_entry=${hex64(l1Hi, l1Lo)} refcount=${await st.refcounts.getText(Math.floor(l2Offset / cs))}`,
      );
      if (repair) {
        const hi = refcount === 1 ? (l1Hi | 0x80000000) >>> 0 : l1Hi & 0x7fffffff;
        l1.setUint32(i * 8, hi);
        const entryOffset = Number(st.l1Offset) + i * 8;
        try {
          await preWriteOverlapCheck(st, Overlap.ACTIVE_L1, entryOffset, 8);
          await st.io.writeAt(entryOffset, new Uint8Array(l1.buffer.slice(l1.byteOffset + i * 8, l1.byteOffset + i * 8 + 8)));
          await st.io.flush();
        } catch (e) {
          res.checkErrors++;
          throw e instanceof CheckAbort ? e : new CheckAbort('EIO');
        }
        res.corruptions--;
        res.corruptionsFixed++;
      }
    }

    let table: Uint8Array | null;
    try {
      table = await readFullOrBeyondEof(st.io, l2Safe ? l2Offset : u64(offHi, offLo), cs);
    } catch (e) {
      const code = isBlockError(e) ? e.code : 'EIO';
      st.messages.push(`ERROR: Could not read L2 table: ${STRERROR[code]}`);
      res.checkErrors++;
      throw new CheckAbort(code);
    }
    if (!table) continue; // zeroes: no data cluster to check
    const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
    let dirty = 0;
    for (let j = 0; j < st.g.l2Entries; j++) {
      const hi = view.getUint32(j * es);
      const lo = view.getUint32(j * es + 4);
      const type = l2ClusterType(hi, lo, st.l2Mode);
      if (type !== ClusterType.NORMAL && type !== ClusterType.ZERO_ALLOC) continue;
      let rc: number;
      const dataCluster = Math.floor(((hi & 0x00ffffff) * 4294967296 + ((lo & 0xfffffe00) >>> 0)) / cs);
      if (st.hasDataFile) {
        rc = 1;
      } else {
        try {
          rc = await st.refcounts.get(dataCluster);
        } catch {
          continue;
        }
      }
      if ((rc === 1) !== ((hi & 0x80000000) !== 0)) {
        res.corruptions++;
        st.messages.push(
          `${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hex64(hi, lo)} refcount=${
            st.hasDataFile ? rc : await st.refcounts.getText(dataCluster)
          }`,
        );
        if (repair) {
          view.setUint32(j * es, rc === 1 ? (hi | 0x80000000) >>> 0 : hi & 0x7fffffff);
          dirty++;
        }
      }
    }
    if (dirty > 0 && l2Safe) {
      try {
        await preWriteOverlapCheck(st, Overlap.ACTIVE_L2, l2Offset, cs);
      } catch (e) {
        st.messages.push(
          `ERROR: Could not write L2 table; metadata overlap check failed: ${isBlockError(e) ? STRERROR[e.code] : STRERROR.EIO}`,
        );
        res.checkErrors++;
        throw e instanceof CheckAbort ? e : new CheckAbort('EIO');
      }
      try {
        await st.io.writeAt(l2Offset, table);
      } catch (e) {
        st.messages.push(`ERROR: Could not write L2 table: ${isBlockError(e) ? STRERROR[e.code] : STRERROR.EIO}`);
        res.checkErrors++;
        throw new CheckAbort('EIO');
      }
      res.corruptions -= dirty;
      res.corruptionsFixed += dirty;
    }
  }
  await st.io.flush();
}
