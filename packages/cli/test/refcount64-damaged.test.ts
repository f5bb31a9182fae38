/**
 * A 64-bit refcount entry of 2^53 or more (only a damaged image has one: fuzz-ops seeds 9165 and 9290) is used, not
 * free, and QEMU's uint64_t arithmetic applies to it exactly: allocating writes go on around it, a discard takes
 * one off it, check prints it, amend names it when it does not fit a narrower width. Replayed against QEMU 7.2's
 * tools on twin copies of one image, step by step; the images stay byte-identical.
 */
import { closeSync, openSync } from 'node:fs';
import { describe, it } from 'vitest';
import { must, qcow2Requirement, readU64, replayStep, twinDirs, writeU64 } from './helpers.js';

const need = qcow2Requirement();

const twins = twinDirs('rc64', (d) => {
  const img = d.path('img.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=64', img, '1M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 7 0 64k', img);
  // The data cluster is the sixth (0x50000); its refcount becomes 2^62 + 5.
  const fd = openSync(img, 'r+');
  const refblock = Number(readU64(fd, Number(readU64(fd, 48))));
  writeU64(fd, refblock + 5 * 8, 2n ** 62n + 5n);
  closeSync(fd);
});

describe('64-bit refcounts of 2^53 and more, against QEMU', () => {
  const STEPS: ['qemu-img' | 'qemu-io', string[]][] = [
    ['qemu-img', ['check', 'img.qcow2']],
    ['qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 128k 64k', 'img.qcow2']],
    ['qemu-io', ['-f', 'qcow2', '-c', 'write -P 2 0 4k', 'img.qcow2']],
    ['qemu-io', ['-f', 'qcow2', '-c', 'discard 0 64k', 'img.qcow2']],
    ['qemu-img', ['check', 'img.qcow2']],
    ['qemu-img', ['amend', '-o', 'refcount_bits=16', 'img.qcow2']],
    ['qemu-img', ['check', '-r', 'all', 'img.qcow2']],
  ];
  for (const [i, [tool, args]] of STEPS.entries()) {
    it(`step ${i + 1}: ${tool} ${args.join(' ')}`, async (ctx) => {
      need(ctx);
      await replayStep(twins, tool, args);
    });
  }
});
