/**
 * A 64-bit refcount entry of 2^53 or more (only a damaged image has one: fuzz-ops seeds 9165 and 9290) is used, not
 * free, and QEMU's uint64_t arithmetic applies to it exactly: allocating writes go on around it, a discard takes
 * one off it, check prints it, amend names it when it does not fit a narrower width. Replayed against QEMU 7.2's
 * tools on twin copies of one image, step by step; the images stay byte-identical.
 */
import { closeSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bg, filterQemuIo, must, normaliseStderr, qcow2Requirement, run, tempDir } from './helpers.js';

const need = qcow2Requirement();

function u64(fd: number, at: number): bigint {
  const b = Buffer.alloc(8);
  readSync(fd, b, 0, 8, at);
  return b.readBigUInt64BE();
}

const q = tempDir('rc64-q');
const b = tempDir('rc64-b');
beforeAll(() => {
  for (const d of [q, b]) {
    const img = d.path('img.qcow2');
    must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=64', img, '1M');
    must('qemu-io', '-f', 'qcow2', '-c', 'write -P 7 0 64k', img);
    // The data cluster is the sixth (0x50000); its refcount becomes 2^62 + 5.
    const fd = openSync(img, 'r+');
    const reftable = Number(u64(fd, 48));
    const refblock = Number(u64(fd, reftable));
    const v = Buffer.alloc(8);
    v.writeBigUInt64BE(2n ** 62n + 5n);
    writeSync(fd, v, 0, 8, refblock + 5 * 8);
    closeSync(fd);
  }
});
afterAll(() => {
  q.cleanup();
  b.cleanup();
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
      const at = (d: string) => args.map((a) => (a.endsWith('.qcow2') ? join(d, a) : a));
      const qr = run(tool, at(q.dir));
      const br = await bg(...(tool === 'qemu-io' ? ['io'] : []), ...at(b.dir));
      const norm = (s: string, d: string) => filterQemuIo(s.split(d).join('$DIR'));
      expect({ status: br.status, stdout: norm(br.stdout, b.dir) }).toEqual({ status: qr.status, stdout: norm(qr.stdout, q.dir) });
      expect(norm(br.stderr, b.dir)).toBe(normaliseStderr(norm(qr.stderr, q.dir), tool));
      expect(readFileSync(b.path('img.qcow2')).equals(readFileSync(q.path('img.qcow2')))).toBe(true);
    });
  }
});
