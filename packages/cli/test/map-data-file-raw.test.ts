/**
 * Block status of an image whose external data file is raw (data_file_raw=on, all clusters preallocated): QEMU 7.2
 * answers from the qcow2 layer, every allocated cluster is data, and does not look at holes in the data file; its
 * metadata-preallocation detection counts the clusters of the qcow2 file only. `map` runs with QEMU 7.2 and with
 * blockgraph on twin images: same status and output.
 */
import { describe, expect, it } from 'vitest';
import { bgSpawn, expectSameOutput, mustIn, qcow2Requirement, run, tempDir } from './helpers.js';

const need = qcow2Requirement();

/** Built in place for each side: a copy would fill the data file's holes. */
function images(d: string): void {
  const must = (cmd: string, ...args: string[]) => mustIn(d, cmd, ...args);
  // 64 KiB written in the middle: the rest of the sparse data file is a hole.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=8192,data_file=raw.data,data_file_raw=on', 'raw.qcow2', '16M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0xb5 6270976 64k', 'raw.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=plain.data', 'plain.qcow2', '16M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0xb5 6270976 64k', 'plain.qcow2');
}

const CASES: [string, string[]][] = [
  ['raw.qcow2', []],
  ['raw.qcow2', ['--output=json']],
  ['raw.qcow2', ['--output=json', '--start-offset=2007040', '--max-length=9465280']],
  ['plain.qcow2', ['--output=json']],
];

describe('map of an image with a raw external data file', () => {
  for (const [image, extra] of CASES) {
    it(`map ${extra.join(' ')} ${image}`, (ctx) => {
      need(ctx);
      // Both tools run in the image's directory: QEMU 7.2 resolves a relative data file name against the working
      // directory (blockgraph against the image's, as for backing files).
      const qd = tempDir('q');
      const bd = tempDir('b');
      try {
        images(qd.dir);
        images(bd.dir);
        const q = run('qemu-img', ['map', ...extra, image], { cwd: qd.dir });
        const b = bgSpawn(['map', ...extra, image], { cwd: bd.dir });
        expectSameOutput({ b, q });
        expect(q.status).toBe(0);
      } finally {
        qd.cleanup();
        bd.cleanup();
      }
    });
  }
});
