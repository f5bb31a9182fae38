/**
 * qcow2_signal_corruption() prints "qcow2: Image is corrupt: …" (read-only) or "qcow2: Marking image as corrupt:
 * …" (read-write) itself, in every tool, before the operation's own error. Each case runs the same command on a
 * damaged image with QEMU 7.2 and blockgraph and compares status, stdout, stderr and the image bytes afterwards.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, filterQemuIo, must, normaliseStderr, qcow2Requirement, twin } from './helpers.js';

const need = qcow2Requirement();

/** 4 KiB clusters, 8 KiB of data; L1 at 0x3000, L2 at 0x4000; L2 entry 1 made an unaligned normal cluster. */
const images = cachedSetup((d) => {
  const img = join(d, 'bad.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', img, '1M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x11 0 8k', img);
  const bytes = readFileSync(img);
  bytes.writeUInt32BE(0x80000000, 0x4008);
  bytes.writeUInt32BE(0x200, 0x400c);
  writeFileSync(img, bytes);
  // refcount_table_clusters 1 -> 3: the refcount table now overlaps the L1 table (a repair case, iotest-style).
  const over = join(d, 'overlap.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', over, '8M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x11 0 64k', over);
  const o = readFileSync(over);
  o.writeUInt32BE(3, 56);
  writeFileSync(over, o);
  // QEMU prints offsets and indexes with "%#x": an index 0 is "0". Entry 0 unaligned instead of entry 1.
  const bad0 = Buffer.from(bytes);
  bad0.writeUInt32BE(0x80000000, 0x4000);
  bad0.writeUInt32BE(0x200, 0x4004);
  writeFileSync(join(d, 'bad0.qcow2'), bad0);
  // L1 entry 0 with an unaligned L2 table offset beyond 2^53: QEMU checks the alignment first.
  const far = Buffer.from(bytes);
  far.writeBigUInt64BE(0x80ffffffffffffffn, 0x3000);
  writeFileSync(join(d, 'far-l2.qcow2'), far);
  // L2 entry 0 beyond 2^53: a data cluster also unaligned (a corruption, alignment first), and a compressed
  // cluster (past the end of the file: an I/O error, no corruption event).
  const farData = Buffer.from(bytes);
  farData.writeBigUInt64BE(0x80fffffffffffe00n, 0x4000);
  writeFileSync(join(d, 'far-data.qcow2'), farData);
  const farCompressed = Buffer.from(bytes);
  farCompressed.writeBigUInt64BE(0x43ffffff00000000n, 0x4000);
  writeFileSync(join(d, 'far-compressed.qcow2'), farCompressed);
});

const CASES: [string, 'qemu-io' | 'qemu-img', (dir: string) => string[], string?][] = [
  ['io -r: read over the bad entry', 'qemu-io', (d) => ['-f', 'qcow2', '-r', '-c', 'read 0 8k', join(d, 'bad.qcow2')]],
  ['io: a read-write read marks the image corrupt', 'qemu-io', (d) => ['-f', 'qcow2', '-c', 'read 4k 4k', '-c', 'read 0 4k', join(d, 'bad.qcow2')]],
  ['convert -O raw', 'qemu-img', (d) => ['convert', '-f', 'qcow2', '-O', 'raw', join(d, 'bad.qcow2'), join(d, 'out.raw')]],
  // A repair opens the image for the check: no corruption event at open, the check fixes the overlap.
  ['check -r all repairs a refcount table overlapping the L1 table', 'qemu-img', (d) => ['check', '-r', 'all', join(d, 'overlap.qcow2')], 'overlap.qcow2'],
  ['io -r: an unaligned entry at L2 index 0', 'qemu-io', (d) => ['-f', 'qcow2', '-r', '-c', 'read 0 4k', join(d, 'bad0.qcow2')], 'bad0.qcow2'],
  ['io -r: an unaligned L2 table offset beyond 2^53', 'qemu-io', (d) => ['-f', 'qcow2', '-r', '-c', 'read 0 4k', join(d, 'far-l2.qcow2')], 'far-l2.qcow2'],
  ['io -r: an unaligned data cluster beyond 2^53', 'qemu-io', (d) => ['-f', 'qcow2', '-r', '-c', 'read 0 4k', join(d, 'far-data.qcow2')], 'far-data.qcow2'],
  ['io -r: compressed data beyond 2^53', 'qemu-io', (d) => ['-f', 'qcow2', '-r', '-c', 'read 0 4k', join(d, 'far-compressed.qcow2')], 'far-compressed.qcow2'],
];

/** The corruption line each image's case must print (the image bytes are compared as well). */
const EXPECTED: Record<string, RegExp> = {
  'bad.qcow2': /^qcow2: (Image is corrupt|Marking image as corrupt): Cluster allocation offset 0x200 unaligned/,
  'bad0.qcow2': /^qcow2: Image is corrupt: Cluster allocation offset 0x200 unaligned \(L2 offset: 0x4000, L2 index: 0\);/,
  'far-l2.qcow2': /^qcow2: Image is corrupt: L2 table offset 0xfffffffffffe00 unaligned \(L1 index: 0\);/,
  'far-data.qcow2': /^qcow2: Image is corrupt: Cluster allocation offset 0xfffffffffffe00 unaligned \(L2 offset: 0x4000, L2 index: 0\);/,
  'far-compressed.qcow2': /^$/,
};

describe('corruption events print QEMU\'s line in every command; a repair is not stopped by one', () => {
  for (const [name, tool, args, image = 'bad.qcow2'] of CASES) {
    it(name, async (ctx) => {
      need(ctx);
      const t = await twin(images, args, tool);
      try {
        const out = (s: string) => (tool === 'qemu-io' ? filterQemuIo(s) : s);
        expect({ status: t.b.status, stdout: out(t.b.stdout) }).toEqual({ status: t.q.status, stdout: out(t.q.stdout) });
        // check's report lines follow its 'qemu-img:' line, which normaliseStderr would take for continuation lines.
        expect(t.b.stderr).toBe(image === 'overlap.qcow2' ? t.q.stderr.replaceAll('qemu-img: ', 'blockgraph: ') : normaliseStderr(t.q.stderr, tool));
        if (image === 'overlap.qcow2') expect(t.b.stdout).toContain('10 corruptions');
        else expect(t.b.stderr).toMatch(EXPECTED[image]!);
        expect(readFileSync(join(t.bdir, image)).equals(readFileSync(join(t.qdir, image)))).toBe(true);
      } finally {
        t.cleanup();
      }
    });
  }
});
