/**
 * QEMU's qcow2 guesses "metadata preallocation" when clearly more clusters are in use than the file has allocated
 * (qcow2_detect_metadata_preallocation: in-use clusters >= max(allocated * 10/9, allocated + 2)); then block status
 * looks into the file, and a hole under a data cluster shows as zero in `map`. It counts clusters in use, not their
 * refcounts: a host cluster holding 32 compressed clusters counts once. `map` with QEMU 7.2 and with blockgraph on
 * twin images.
 */
import { describe, expect, it } from 'vitest';
import { bgSpawn, expectSameOutput, mustIn, qcow2Requirement, run, tempDir } from './helpers.js';

const need = qcow2Requirement();

/**
 * 2 MiB compressed into one host cluster (refcount 32), one data cluster of zeroes whose 64 KiB the file then loses
 * (a punched hole), and `dataClusters` more data clusters. Built in place for each side: a copy would change holes.
 */
function image(d: string, dataClusters: number): void {
  const must = (cmd: string, ...args: string[]) => mustIn(d, cmd, ...args);
  must('qemu-img', 'create', '-q', '-f', 'qcow2', 'c.qcow2', '8M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -c -P 0x11 0 2M', '-c', 'write -q -P 0 2M 64k', '-c', `write -q -P 0x22 3M ${dataClusters * 64}k`, 'c.qcow2');
  // The zero cluster sits at host offset 384 KiB (header, refcount table, refcount block, L1, L2, compressed data).
  must('fallocate', '-p', '-o', String(384 * 1024), '-l', String(64 * 1024), 'c.qcow2');
}

describe('map and the metadata-preallocation guess', () => {
  // 60 data clusters: in use 1 short of the threshold (the refcounts would sum well past it): no guess, all data.
  // 4 data clusters: in use past the threshold: the guess is made, the hole reads as zero.
  for (const dataClusters of [60, 4]) {
    it(`compressed clusters, a hole under a data cluster, ${dataClusters} more data clusters`, (ctx) => {
      need(ctx);
      const qd = tempDir('q');
      const bd = tempDir('b');
      try {
        image(qd.dir, dataClusters);
        image(bd.dir, dataClusters);
        const q = run('qemu-img', ['map', '--output=json', 'c.qcow2'], { cwd: qd.dir });
        const b = bgSpawn(['map', '--output=json', 'c.qcow2'], { cwd: bd.dir });
        expectSameOutput({ b, q });
        // Each case shows what it is about: the zero data cluster at 2 MiB reads as zero only when guessed.
        const zeroCluster = (JSON.parse(q.stdout) as { start: number; zero: boolean }[]).find((e) => e.start === 2 * 1024 * 1024);
        expect(zeroCluster?.zero).toBe(dataClusters === 4);
      } finally {
        qd.cleanup();
        bd.cleanup();
      }
    });
  }
});
