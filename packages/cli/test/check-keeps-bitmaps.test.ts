/**
 * `check -r` on an image with persistent bitmaps: a repair writes no guest data, so the bitmaps stay valid and
 * their clusters in use. blockgraph used to open the image like a program without bitmap support (clearing the
 * bitmaps' autoclear bit), then freed the bitmap clusters as leaks: found by a check-repair fuzz against
 * qemu-img. QEMU rewrites the bitmaps when it closes the image, so only the reports are compared, and what QEMU
 * finds in our image afterwards.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, must, qcow2Requirement, run, twin } from './helpers.js';

const need = qcow2Requirement();

const images = cachedSetup((d) => {
  const img = join(d, 'bm.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', img, '8M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x11 0 64k', img);
  must('qemu-img', 'bitmap', '--add', img, 'b0');
  must('qemu-img', 'bitmap', '--add', '--disable', img, 'b1');
  // The same image with a leaked cluster beside the bitmaps: the repair has something to do.
  // An appended cluster with refcount 1 (16-bit refcounts; one refcount block, the table's first entry).
  const bytes = readFileSync(img);
  const cluster = Math.ceil(bytes.length / 4096);
  const leaked = Buffer.concat([bytes, Buffer.alloc(cluster * 4096 - bytes.length), Buffer.alloc(4096, 0x77)]);
  const refblock = Number(leaked.readBigUInt64BE(Number(leaked.readBigUInt64BE(48))));
  leaked.writeUInt16BE(1, refblock + cluster * 2);
  writeFileSync(join(d, 'bm-leak.qcow2'), leaked);
  // The bitmaps' autoclear bit cleared, as a program without bitmap support leaves it.
  const stale = readFileSync(img);
  stale.writeBigUInt64BE(0n, 88);
  writeFileSync(join(d, 'bm-stale.qcow2'), stale);
});

describe('bitmaps left inconsistent by a program without bitmap support: every open warns like QEMU', () => {
  for (const args of [
    ['info'],
    ['map', '--output=json'],
    ['check'],
    ['check', '-r', 'leaks'],
    ['convert', '-O', 'raw'],
  ]) {
    it(args.join(' '), async (ctx) => {
      need(ctx);
      const out = args[0] === 'convert' ? ['out.raw'] : [];
      const t = await twin(images, (d) => [...args, join(d, 'bm-stale.qcow2'), ...out.map((o) => join(d, o))]);
      try {
        expect({ status: t.b.status, stdout: t.b.stdout }).toEqual({ status: t.q.status, stdout: t.q.stdout });
        expect(t.b.stderr).toBe(t.q.stderr.replaceAll('qemu-img: ', 'blockgraph: '));
        // warn_report(), then error_printf() without a final newline.
        expect(t.b.stderr).toMatch(
          /^blockgraph: warning: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent\nSome clusters may be leaked, run 'qemu-img check -r' on the image file to fix\./,
        );
      } finally {
        t.cleanup();
      }
    });
  }
});

describe('check -r keeps persistent bitmaps', () => {
  for (const [image, fix] of [
    ['bm.qcow2', 'leaks'],
    ['bm.qcow2', 'all'],
    ['bm-leak.qcow2', 'leaks'],
    ['bm-leak.qcow2', 'all'],
  ] as const) {
    it(`${image}, -r ${fix}`, async (ctx) => {
      need(ctx);
      const t = await twin(images, (d) => ['check', '-r', fix, join(d, image)]);
      try {
        expect({ status: t.b.status, stdout: t.b.stdout }).toEqual({ status: t.q.status, stdout: t.q.stdout });
        expect(t.b.stderr).toBe(t.q.stderr.replaceAll('qemu-img: ', 'blockgraph: '));
        // QEMU finds the bitmaps in our repaired image, consistent, and nothing else to repair.
        const info = run('qemu-img', ['info', '--output=json', join(t.bdir, image)]);
        const bitmaps = (JSON.parse(info.stdout) as { 'format-specific': { data: { bitmaps: { name: string; flags: string[] }[] } } })['format-specific'].data.bitmaps;
        expect(bitmaps.map((b) => [b.name, b.flags])).toEqual([
          ['b0', ['auto']],
          ['b1', []],
        ]);
        const check = run('qemu-img', ['check', join(t.bdir, image)]);
        expect(check.status, check.stdout + check.stderr).toBe(0);
      } finally {
        t.cleanup();
      }
    });
  }
});
