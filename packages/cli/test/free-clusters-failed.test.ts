/**
 * A cluster free that fails is reported as QEMU reports it, with a bare "qcow2_free_clusters failed: <strerror>"
 * line on stderr, and the clusters leak. The case fuzz-ops found (seed 13334): an L2 entry damaged to point past
 * the last refcount block, freed by a shrinking amend. Dropping its reference needs a new refcount block; that is
 * allocated, and the free then ends with EAGAIN, which QEMU does not retry for a free. Replayed against QEMU 7.2
 * on twin copies of one image: same output, byte-identical images.
 */
import { closeSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bg, must, normaliseStderr, qcow2Requirement, run, tempDir } from './helpers.js';

const need = qcow2Requirement();

function u64(fd: number, at: number): bigint {
  const b = Buffer.alloc(8);
  readSync(fd, b, 0, 8, at);
  return b.readBigUInt64BE();
}

const q = tempDir('fcf-q');
const b = tempDir('fcf-b');
beforeAll(() => {
  for (const d of [q, b]) {
    const img = d.path('img.qcow2');
    // 8 KiB clusters: an L2 table maps 8 MiB and a refcount block covers 32 MiB of the file.
    must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=8192', img, '16M');
    must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 12M 8k', img);
    // The entry of guest offset 12 MiB (second L2 table, index 512) gains bit 30: 1 GiB further on, where no
    // refcount block is.
    const fd = openSync(img, 'r+');
    const l2 = Number(u64(fd, Number(u64(fd, 40)) + 8) & 0x00fffffffffffe00n);
    const entry = Buffer.alloc(8);
    entry.writeBigUInt64BE(u64(fd, l2 + 512 * 8) | (1n << 30n));
    writeSync(fd, entry, 0, 8, l2 + 512 * 8);
    closeSync(fd);
  }
});
afterAll(() => {
  q.cleanup();
  b.cleanup();
});

describe('a failed cluster free, against QEMU', () => {
  const STEPS: string[][] = [
    ['amend', '-f', 'qcow2', '-o', 'size=8M', 'img.qcow2'],
    ['check', 'img.qcow2'],
  ];
  for (const [i, args] of STEPS.entries()) {
    it(`step ${i + 1}: ${args.join(' ')}`, async (ctx) => {
      need(ctx);
      const at = (d: string) => args.map((a) => (a.endsWith('.qcow2') ? join(d, a) : a));
      const qr = run('qemu-img', at(q.dir));
      const br = await bg(...at(b.dir));
      expect({ status: br.status, stdout: br.stdout.split(b.dir).join('$DIR') }).toEqual({
        status: qr.status,
        stdout: qr.stdout.split(q.dir).join('$DIR'),
      });
      expect(br.stderr).toBe(normaliseStderr(qr.stderr));
      if (i === 0) expect(br.stderr).toBe('qcow2_free_clusters failed: Resource temporarily unavailable\n');
      if (i === 1) expect(br.stdout).toContain('1 leaked clusters were found on the image.');
      expect(readFileSync(b.path('img.qcow2')).equals(readFileSync(q.path('img.qcow2')))).toBe(true);
    });
  }
});
