import { BlockError, errnoError, IOVector, toBlockError, type CheckFix, type CheckResult } from '@blockgraph/block-core';
import { checkImage, type ImageIO } from '../check/index.js';
import { AUTOCLEAR_BITMAPS, AUTOCLEAR_MASK } from '../format/index.js';
import { flushCaches, updateHeader } from './header-io.js';
import { reloadMetadata } from './metadata.js';
import type { Qcow2State } from './state.js';

/**
 * What a read-write user needs done before the first write (QEMU does it in qcow2_do_open for read-write
 * opens; here also after a reopen to read-write): repair a dirty image, clear unknown autoclear bits.
 *
 * Persistent dirty bitmaps: blockgraph does not track guest writes in them, so it behaves exactly like a
 * program without bitmap support — it clears autoclear bit 0 (keeping the extension), after which QEMU
 * considers the bitmaps inconsistent, warns, and drops them (leaking their clusters) on its next read-write
 * open. Nothing pretends the bitmaps are still valid after blockgraph wrote the disk. An open for `check -r`
 * keeps them: a repair changes no guest data, and QEMU (which understands them) keeps them through it too.
 */

/** The image file as the check module sees it. */
export function imageIO(s: Qcow2State): ImageIO {
  const file = s.file;
  return {
    async readAt(offset, length) {
      const avail = Math.max(0, Math.min(length, file.node.totalBytes - offset));
      // Wholly past EOF: the short answer the contract allows, so that the check can skip the range cheaply.
      if (!avail) return new Uint8Array(0);
      const buf = new Uint8Array(length);
      await file.preadv(offset, avail, IOVector.of(buf.subarray(0, avail)));
      return buf;
    },
    writeAt: (offset, data) => file.pwritev(offset, data.length, IOVector.of(data)),
    flush: () => file.flush(),
    length: async () => file.node.totalBytes,
    truncate: (length) => file.truncate(length, true, 'off'),
    async discard(offset, length) {
      try {
        await file.pdiscard(offset, length);
      } catch {
        // advisory
      }
    },
  };
}

/** Flush the caches, run the check module, and re-read the metadata when it may have changed the image. */
export async function runCheck(s: Qcow2State, fix: CheckFix): Promise<CheckResult> {
  if (!s.readOnly && !s.broken) await flushCaches(s);
  try {
    return await checkImage(imageIO(s), fix, { dataFileRaw: s.dataFileIsRaw, refcountCacheBlocks: s.options.refcountCacheEntries });
  } finally {
    if (fix !== 'none') await reloadMetadata(s);
  }
}

export async function prepareForWriting(s: Qcow2State, atOpen = false): Promise<void> {
  if (s.isDirty && !s.checkMode) {
    s.trace('repair_dirty', {});
    let res: CheckResult;
    try {
      res = await runCheck(s, 'all');
    } catch (e) {
      throw errnoError(toBlockError(e), 'Could not repair dirty image');
    }
    const failed = res.checkFailed;
    if (failed || res.checkErrors) {
      throw new BlockError(failed ?? 'EIO', 'Could not repair dirty image');
    }
  }
  const h = s.header;
  const bitmaps = h.autoclearFeatures & AUTOCLEAR_BITMAPS;
  // A repair open writes no guest data, so the bitmaps stay valid (and their clusters in use) through the check:
  // they are given up only when a guest write comes, which runs this setup again.
  const keepBitmaps = atOpen && s.checkMode && bitmaps !== 0n;
  const clear = (h.autoclearFeatures & ~AUTOCLEAR_MASK) | (keepBitmaps ? 0n : bitmaps);
  if (clear) {
    h.autoclearFeatures &= ~clear;
    await updateHeader(s);
    await s.flushFile();
  }
  s.useLazyRefcounts = s.options.lazyRefcounts;
  s.pendingWriteSetup = keepBitmaps;
}

/** Run the pending read-write setup; `atOpen` for the one the open itself runs (no guest write yet). */
export async function runWriteSetup(s: Qcow2State, atOpen = false): Promise<void> {
  if (!s.lock.tryLock()) await s.lock.lock();
  try {
    if (s.pendingWriteSetup) await prepareForWriting(s, atOpen);
  } finally {
    s.lock.unlock();
  }
}
