/**
 * A cluster free that fails is reported as QEMU reports it, with a bare "qcow2_free_clusters failed: <strerror>"
 * line on stderr, and the clusters leak. The case fuzz-ops found (seed 13334): an L2 entry damaged to point past
 * the last refcount block, freed by a shrinking amend. Dropping its reference needs a new refcount block; that is
 * allocated, and the free then ends with EAGAIN, which QEMU does not retry for a free. Replayed against QEMU 7.2
 * on twin copies of one image: same output, byte-identical images.
 */
import { closeSync, openSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { must, qcow2Requirement, readU64, replayStep, twinDirs, writeU64 } from './helpers.js';

const need = qcow2Requirement();

const twins = twinDirs('fcf', (d) => {
  const img = d.path('img.qcow2');
  // 8 KiB clusters: an L2 table maps 8 MiB and a refcount block covers 32 MiB of the file.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=8192', img, '16M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 12M 8k', img);
  // The entry of guest offset 12 MiB (second L2 table, index 512) gains bit 30: 1 GiB further on, where no
  // refcount block is.
  const fd = openSync(img, 'r+');
  const entry = Number(readU64(fd, Number(readU64(fd, 40)) + 8) & 0x00fffffffffffe00n) + 512 * 8;
  writeU64(fd, entry, readU64(fd, entry) | (1n << 30n));
  closeSync(fd);
});

describe('a failed cluster free, against QEMU', () => {
  const STEPS: string[][] = [
    ['amend', '-f', 'qcow2', '-o', 'size=8M', 'img.qcow2'],
    ['check', 'img.qcow2'],
  ];
  for (const [i, args] of STEPS.entries()) {
    it(`step ${i + 1}: ${args.join(' ')}`, async (ctx) => {
      need(ctx);
      const { br } = await replayStep(twins, 'qemu-img', args);
      if (i === 0) expect(br.stderr).toBe('qcow2_free_clusters failed: Resource temporarily unavailable\n');
      if (i === 1) expect(br.stdout).toContain('1 leaked clusters were found on the image.');
    });
  }
});
