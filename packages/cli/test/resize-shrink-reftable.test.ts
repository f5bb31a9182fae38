/**
 * Shrinking a qcow2 image frees the refcount blocks that end up counting nothing (qcow2_shrink_reftable): the
 * refcount table is rewritten without them and the file is truncated behind the last cluster still in use.
 * `resize --shrink` runs with QEMU 7.2 on one copy and with blockgraph on its twin: same output, byte-identical
 * images.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectSameOutput, must, qcow2Requirement, qemuImg, twin } from './helpers.js';

const need = qcow2Requirement();

/**
 * 512-byte clusters with 64-bit refcounts: one refcount block covers 64 clusters (32 KiB), so data spread over
 * 8 MiB needs dozens of them, and shrinking to 1 MiB leaves most of them empty.
 */
function image(opts: string) {
  return (d: string): void => {
    must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', opts, join(d, 'img.qcow2'), '8M');
    const cmds = [];
    for (let off = 0; off < 8 << 20; off += 256 << 10) cmds.push('-c', `write -q -P ${(off >> 18) + 1} ${off} 8k`);
    must('qemu-io', '-f', 'qcow2', ...cmds, join(d, 'img.qcow2'));
  };
}

describe('resize --shrink frees the refcount blocks left empty, as qemu-img does', () => {
  const cases: [string, string][] = [
    ['cluster_size=512,refcount_bits=64', '1M'],
    ['cluster_size=512,refcount_bits=64', '7M'],
    ['cluster_size=1024,refcount_bits=16', '512k'],
  ];
  for (const [opts, size] of cases) {
    it(`-o ${opts}, 8M -> ${size}`, async (ctx) => {
      need(ctx);
      const t = await twin(image(opts), (d) => ['resize', '--shrink', '-f', 'qcow2', join(d, 'img.qcow2'), size]);
      try {
        expectSameOutput(t);
        expect(t.q.status).toBe(0);
        const q = join(t.qdir, 'img.qcow2');
        const b = join(t.bdir, 'img.qcow2');
        expect(qemuImg('check', b).stdout).toMatch(/No errors were found on the image\./);
        expect(statSync(b).size).toBe(statSync(q).size);
        expect(readFileSync(b).equals(readFileSync(q)), 'byte-identical').toBe(true);
      } finally {
        t.cleanup();
      }
    });
  }
});
