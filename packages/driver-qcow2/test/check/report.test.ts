import { describe, expect, it } from 'vitest';
import { BlockError, type CheckResult } from '@blockgraph/block-core';
import { serializeHeader, setRefcount } from '../../src/format/index.js';
import {
  checkExitCode,
  checkFailureMessage,
  checkImage,
  checkImageOnce,
  checkResultJson,
  formatCheckHuman,
  formatCheckJson,
  formatPercent,
  type ImageIO,
} from '../../src/check/index.js';
import { minimalHeader } from '../format/fixtures.js';
import { MemoryImageIO } from './helpers.js';

/** Formatting and in-memory checks that need no QEMU. */

function result(over: Partial<CheckResult> = {}): CheckResult {
  return {
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    imageEndOffset: 1441792,
    totalClusters: 1024,
    allocatedClusters: 17,
    fragmentedClusters: 0,
    compressedClusters: 0,
    messages: [],
    ...over,
  };
}

describe('formatPercent (printf %0.2f)', () => {
  it('rounds exact ties to even like glibc, not up like toFixed', () => {
    expect(formatPercent(12.125)).toBe('12.12');
    expect(formatPercent(12.375)).toBe('12.38');
    expect(formatPercent(0.125)).toBe('0.12');
    expect((12.125).toFixed(2)).toBe('12.13');
  });
  it('rounds the exact binary value otherwise', () => {
    expect(formatPercent((17 * 100.0) / 1024)).toBe('1.66');
    expect(formatPercent((63 * 100.0) / 64)).toBe('98.44');
    expect(formatPercent(2.675)).toBe('2.67'); // 2.67499999999999982236431605997495353221893310546875
    expect(formatPercent(0.005)).toBe('0.01'); // 0.005000000000000000104083408558608425664715468883514404296875
    expect(formatPercent(100)).toBe('100.00');
    expect(formatPercent(0)).toBe('0.00');
    expect(formatPercent(99.995)).toBe('100.00'); // 99.99500000000000454747...
    expect(formatPercent(1.005)).toBe('1.00'); // 1.00499999999999989341858963598497211933135986328125
    expect(formatPercent(1e-9)).toBe('0.00');
  });
});

describe('qemu-img check output', () => {
  it('clean image (measured std.qcow2)', () => {
    expect(formatCheckHuman(result(), 'std.qcow2')).toBe(
      'No errors were found on the image.\n' +
        '17/1024 = 1.66% allocated, 0.00% fragmented, 0.00% compressed clusters\n' +
        'Image end offset: 1441792\n',
    );
    expect(formatCheckJson(result(), 'std.qcow2')).toBe(
      '{\n    "image-end-offset": 1441792,\n    "total-clusters": 1024,\n    "check-errors": 0,\n' +
        '    "allocated-clusters": 17,\n    "filename": "std.qcow2",\n    "format": "qcow2"\n}\n',
    );
    expect(checkExitCode(result(), 'none')).toBe(0);
    expect(checkFailureMessage(result())).toBeNull();
  });

  it('fresh image: no allocation line, zero counters omitted from JSON', () => {
    const r = result({ imageEndOffset: 262144, allocatedClusters: 0 });
    expect(formatCheckHuman(r)).toBe('No errors were found on the image.\nImage end offset: 262144\n');
    expect(Object.keys(checkResultJson(r, 'e.qcow2')!)).toEqual([
      'image-end-offset',
      'total-clusters',
      'check-errors',
      'filename',
      'format',
    ]);
  });

  it('every key, in QEMU 7.2 order', () => {
    const r = result({
      corruptions: 1,
      leaks: 2,
      corruptionsFixed: 3,
      leaksFixed: 4,
      fragmentedClusters: 5,
      compressedClusters: 6,
      checkErrors: 7,
    });
    expect(Object.keys(checkResultJson(r, 'x')!)).toEqual([
      'image-end-offset',
      'compressed-clusters',
      'total-clusters',
      'corruptions',
      'corruptions-fixed',
      'check-errors',
      'leaks',
      'leaks-fixed',
      'allocated-clusters',
      'filename',
      'format',
      'fragmented-clusters',
    ]);
  });

  it('errors, leaks and internal errors', () => {
    const r = result({ corruptions: 3, leaks: 1, checkErrors: 2 });
    expect(formatCheckHuman(r)).toBe(
      '\n3 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n' +
        '\n1 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n' +
        '\n2 internal errors have occurred during the check.\n' +
        '17/1024 = 1.66% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: 1441792\n',
    );
    expect(checkExitCode(r)).toBe(1);
    expect(checkFailureMessage(r)).toBe('Check failed');
    expect(checkExitCode(result({ corruptions: 3, leaks: 1 }))).toBe(2);
    expect(checkExitCode(result({ leaks: 1 }))).toBe(3);
  });

  it('after a repair: the repaired block, then the double check', () => {
    const r = result({ leaksFixed: 1, corruptionsFixed: 1, imageEndOffset: 1572864 });
    expect(formatCheckHuman(r)).toBe(
      'The following inconsistencies were found and repaired:\n\n    1 leaked clusters\n    1 corruptions\n\n' +
        'Double checking the fixed image now...\nNo errors were found on the image.\n' +
        '17/1024 = 1.66% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: 1572864\n',
    );
  });

  it('a failed double check still shows what was repaired', () => {
    const r = result({ checkFailed: 'ENOMEDIUM', leaksFixed: 1, corruptionsFixed: 3 });
    expect(formatCheckHuman(r)).toBe(
      'The following inconsistencies were found and repaired:\n\n    1 leaked clusters\n    3 corruptions\n\n' +
        'Double checking the fixed image now...\n',
    );
    expect(formatCheckJson(r, 'x')).toBe('');
    expect(checkFailureMessage(r)).toBe('Check failed: No medium found');
  });

  it('a failed check prints no report', () => {
    const r = result({ checkFailed: 'EIO' });
    expect(formatCheckHuman(r)).toBe('');
    expect(formatCheckJson(r, 'x')).toBe('');
    expect(checkResultJson(r, 'x')).toBeNull();
    expect(checkExitCode(r, 'leaks')).toBe(1);
    expect(checkFailureMessage(r)).toBe('Check failed: Input/output error');
  });
});

/** A v3 image built in memory: header, refcount table, one refcount block, L1 table with one L2 table. */
function tinyImage(): Uint8Array {
  const cs = 65536;
  const h = minimalHeader(16);
  h.size = 64 * 1024 * 1024;
  h.l1Size = 1;
  const bytes = new Uint8Array(6 * cs);
  bytes.set(serializeHeader(h), 0);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(cs, BigInt(2 * cs)); // reftable[0] -> refblock
  view.setBigUint64(3 * cs, 0x8000000000000000n | BigInt(4 * cs)); // L1[0] -> L2 at cluster 4
  view.setBigUint64(4 * cs, 0x8000000000000000n | BigInt(5 * cs)); // guest cluster 0 -> host cluster 5
  const refblock = bytes.subarray(2 * cs, 3 * cs);
  for (let c = 0; c < 6; c++) setRefcount(refblock, c, 4, 1);
  return bytes;
}

/** An ImageIO that returns short buffers past EOF (like pread), over the same bytes. */
class ShortReadIO extends MemoryImageIO {
  override async readAt(offset: number, length: number): Promise<Uint8Array> {
    return this.bytes.slice(offset, Math.min(offset + length, this.bytes.length));
  }
}

describe('checkImage on images built in memory', () => {
  it('a consistent image is clean', async () => {
    const r = await checkImage(new MemoryImageIO(tinyImage()), 'none');
    expect(r).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0, imageEndOffset: 6 * 65536, allocatedClusters: 1 });
    expect(r.messages).toEqual([]);
  });

  it('short reads and zero-filled reads past EOF give the same result', async () => {
    const bytes = tinyImage().slice(0, 5 * 65536 + 100); // data cluster only partly present
    const a = await checkImage(new MemoryImageIO(bytes.slice()), 'none');
    const b = await checkImage(new ShortReadIO(bytes.slice()), 'none');
    expect(b).toEqual(a);
    expect(a.corruptions + a.leaks).toBe(0);
  });

  it('leak found, then repaired in place with a double check', async () => {
    const bytes = tinyImage();
    setRefcount(bytes.subarray(2 * 65536, 3 * 65536), 5, 4, 3);
    const io = new MemoryImageIO(bytes);
    const none = await checkImage(io, 'none');
    expect(none.messages).toEqual([
      'Leaked cluster 5 refcount=3 reference=1',
      'ERROR OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=3',
    ]);
    expect(checkExitCode(none)).toBe(2);
    const fixed = await checkImage(io, 'all');
    expect(fixed).toMatchObject({ leaksFixed: 1, corruptionsFixed: 0, corruptions: 0, leaks: 0, firstPass: { corruptions: 0, leaks: 0 } });
    expect(fixed.messages).toEqual([
      'Leaked cluster 5 refcount=3 reference=1',
      'Repairing cluster 5 refcount=3 reference=1',
    ]);
    expect((await checkImage(io, 'none')).messages).toEqual([]);
  });

  it('checkImageOnce: one pass, no double check (the dirty-image repair at open)', async () => {
    const bytes = tinyImage();
    setRefcount(bytes.subarray(2 * 65536, 3 * 65536), 5, 4, 3);
    const r = await checkImageOnce(new MemoryImageIO(bytes), 'all');
    expect(r).toMatchObject({ leaksFixed: 1, leaks: 0, corruptions: 0 });
    expect(r.firstPass).toBeUndefined();
    expect(r.messages).toEqual(['Leaked cluster 5 refcount=3 reference=1', 'Repairing cluster 5 refcount=3 reference=1']);
  });

  it('zero refcount: -r leaks fails, -r all rebuilds at the end of the file', async () => {
    const bytes = tinyImage();
    setRefcount(bytes.subarray(2 * 65536, 3 * 65536), 4, 4, 0);
    const io: ImageIO & { bytes: Uint8Array } = new MemoryImageIO(bytes);
    const leaks = await checkImage(io, 'leaks');
    expect(leaks.checkFailed).toBe('EIO');
    expect(leaks.messages.at(-1)).toBe('ERROR need to rebuild refcount structures');
    const all = await checkImage(io, 'all');
    expect(all.messages).toEqual([
      'ERROR cluster 4 refcount=0 reference=1',
      'Rebuilding refcount structure',
      'Repairing cluster 1 refcount=1 reference=0',
      'Repairing cluster 2 refcount=1 reference=0',
    ]);
    expect(all).toMatchObject({ corruptionsFixed: 1, corruptions: 0, leaks: 0, imageEndOffset: 8 * 65536 });
    // New refblock at cluster 6, new table at cluster 7, header switched.
    expect(new DataView(io.bytes.buffer).getBigUint64(48)).toBe(7n * 65536n);
    expect((await checkImage(io, 'none')).messages).toEqual([]);
  });

  it('an I/O error while reading an L2 table ends the check', async () => {
    class FailingIO extends MemoryImageIO {
      override async readAt(offset: number, length: number): Promise<Uint8Array> {
        if (offset === 4 * 65536) throw new BlockError('EIO');
        return super.readAt(offset, length);
      }
    }
    const r = await checkImage(new FailingIO(tinyImage()), 'none');
    expect(r.checkFailed).toBe('EIO');
    expect(r.messages).toEqual(['ERROR: I/O error in check_refcounts_l2']);
    expect(checkFailureMessage(r)).toBe('Check failed: Input/output error');
  });

  it('an unparsable header rejects like an open error', async () => {
    const bytes = tinyImage();
    bytes[0] = 0;
    await expect(checkImage(new MemoryImageIO(bytes), 'none')).rejects.toThrow('Image is not in qcow2 format');
  });
});
