/**
 * `qemu-img check` for qcow2, standalone: checks (and with 'leaks'/'all' repairs) an image through a plain
 * byte interface (ImageIO), independent of the driver's caches, with QEMU 7.2's algorithm, counts, stderr
 * lines and on-disk results; plus formatters that turn a CheckResult into qemu-img's human and JSON output,
 * exit code and final error line.
 *
 * Files, one concept each: check-image (qcow2_co_check_locked + qemu-img's double check), check-state (the
 * check-mode open), snapshot-check, calculate-refcounts (the in-memory refcount array and every validation
 * made while building it), compare-refcounts, oflag-copied, rebuild-refcounts, cluster-allocation (for the
 * snapshot table rewrite), metadata-overlap (QEMU's pre-write overlap check), disk-refcounts, refcount-array,
 * check-report (output formats).
 *
 * Refcount blocks go through a model of QEMU's refcount block cache (disk-refcounts): 4 blocks, LRU, written
 * when evicted or flushed, never once a fatal corruption event made the node unusable. Which repairs reach the
 * file is observable, and this keeps repaired images byte-identical to qemu-img's.
 *
 * Deliberate differences from QEMU 7.2 (everything else is tested byte for byte against qemu-img):
 * - A repair that leaves corruptions keeps the dirty bit. qemu-img clears it anyway when it closes the image
 *   (qcow2_inactivate -> qcow2_mark_clean), e.g. after "-r leaks" failed with "need to rebuild"; the next
 *   read-write open would then trust wrong refcounts.
 * - Open-time warnings (inconsistent bitmaps) are not in `messages`: they belong to whoever opens the image.
 * - qemu-img rewrites persistent bitmaps when it closes a writable image; the check leaves them alone.
 * - Offsets beyond 2^53 are handled as QEMU does where that is observable (reads as zeros, QEMU's EIO limit,
 *   a file system's EFBIG for a refcount block that would need such a file); refcounts of 64-bit entries above
 *   2^53 print approximately.
 * - Growing the refcount table to allocate a new snapshot table is not done (the check fails with ENOSPC);
 *   QEMU's open-time bitmap loading is reduced to the validations that make its open fail.
 */
export type { ImageIO } from './image-io.js';
export { checkImage, checkImageOnce, type CheckImageOptions } from './check-image.js';
export {
  checkExitCode,
  checkFailureMessage,
  checkResultJson,
  formatCheckHuman,
  formatCheckJson,
  formatPercent,
} from './check-report.js';
