/**
 * `convert -C` (copy offloading) against `qemu-img convert -C` (QEMU 7.2): data chunks go through the graph's
 * copy-range path (copy_file_range at the bottom), so zero-filled data is copied as data where a plain convert
 * would leave it sparse; a chunk that cannot be offloaded (a compressed cluster, a source shorter than its
 * sectors) is copied through the buffer instead, and offloading stays off from then on. The output images must be
 * byte-identical to qemu-img's.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cachedSetup, expectSameOutput, must, qcow2Requirement, qemuImg, twin, type Twin } from './helpers.js';

const need = qcow2Requirement();

let t: Twin | undefined;
afterEach(() => {
  t?.cleanup();
  t = undefined;
});

const images = cachedSetup((d) => {
  const p = (n: string) => join(d, n);
  must('qemu-img', 'create', '-q', '-f', 'raw', p('base.raw'), '8M');
  must('qemu-io', '-f', 'raw', '-c', 'write -P 0x11 0 3M', p('base.raw'));
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', p('mid.qcow2'), '8M');
  // Data, a zero cluster, and a data cluster full of zeroes (DATA in block status: -C copies it as data).
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x22 1M 1M', '-c', 'write -z 2M 512k', '-c', 'write -P 0 5M 64k', p('mid.qcow2'));
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'mid.qcow2', '-F', 'qcow2', p('top.qcow2'), '10M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x33 100k 30k', '-c', 'write -P 0x44 9M 100k', '-c', 'discard 1M 64k', p('top.qcow2'));
  must('qemu-img', 'create', '-q', '-f', 'raw', p('plain.raw'), '6M');
  must('qemu-io', '-f', 'raw', '-c', 'write -P 0x55 0 1M', '-c', 'write -P 0 2M 1M', '-c', 'write -P 0x66 4M 100000', p('plain.raw'));
  // Not a whole number of sectors: the last sector's copy runs past the end of the file (ENOSPC) and falls back.
  must('truncate', '-s', '6000000', p('odd.raw'));
  must('qemu-io', '-f', 'raw', '-c', 'write -P 0x77 0 6000000', p('odd.raw'));
  // A compressed cluster after all the others: the last chunk falls back to a buffered copy.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', p('comp.qcow2'), '4M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 1 0 1M', '-c', 'write -P 0 1M 64k', '-c', 'write -c -P 3 3M 64k', p('comp.qcow2'));
});

describe('convert -C against qemu-img convert -C', () => {
  // `$D/` is the test directory (each tool has its own copy); the paths written into images (data file) are
  // compared with it swapped back.
  const CASES: [string, string[], string][] = [
    ['qcow2 chain to qcow2', ['-O', 'qcow2', '$D/top.qcow2'], 'o.qcow2'],
    ['qcow2 chain to raw', ['-O', 'raw', '$D/top.qcow2'], 'o.raw'],
    ['raw to qcow2', ['-O', 'qcow2', '$D/plain.raw'], 'o.qcow2'],
    ['raw to raw', ['-O', 'raw', '$D/plain.raw'], 'o.raw'],
    ['-B: only the top is copied', ['-O', 'qcow2', '-B', 'mid.qcow2', '-F', 'qcow2', '$D/top.qcow2'], 'o.qcow2'],
    ['512-byte clusters', ['-O', 'qcow2', '-o', 'cluster_size=512', '$D/top.qcow2'], 'o.qcow2'],
    ['extended L2 entries', ['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=128k', '$D/top.qcow2'], 'o.qcow2'],
    ['an external data file', ['-O', 'qcow2', '-o', 'data_file=$D/o.data', '$D/top.qcow2'], 'o.qcow2'],
    ['two sources', ['-O', 'qcow2', '$D/plain.raw', '$D/top.qcow2'], 'o.qcow2'],
    ['-W, one coroutine', ['-O', 'qcow2', '-W', '-m', '1', '$D/top.qcow2'], 'o.qcow2'],
    ['a source of 6000000 bytes', ['-O', 'qcow2', '$D/odd.raw'], 'o.qcow2'],
    ['a compressed cluster last', ['-O', 'qcow2', '$D/comp.qcow2'], 'o.qcow2'],
  ];
  for (const [title, args, out] of CASES) {
    it(title, async (ctx) => {
      need(ctx);
      t = await twin(images, (d) => ['convert', '-C', ...args.map((a) => a.split('$D').join(d)), join(d, out)]);
      expectSameOutput(t);
      expect(t.b.status).toBe(0);
      // Both directories have names of the same length, so swapping them keeps every offset in the file.
      const q = readFileSync(join(t.qdir, out)).toString('latin1').split(t.qdir).join(t.bdir);
      const b = readFileSync(join(t.bdir, out)).toString('latin1');
      expect(b === q).toBe(true);
      const maps = [t.qdir, t.bdir].map((d) => qemuImg('map', '--output=json', join(d, out)).stdout.split(d).join('$DIR'));
      expect(maps[1]).toBe(maps[0]);
    });
  }

  it('really offloads: a data cluster of zeroes is copied as data, where a plain convert leaves it out', async (ctx) => {
    need(ctx);
    t = await twin(images, (d) => ['convert', '-C', '-O', 'qcow2', join(d, 'top.qcow2'), join(d, 'o.qcow2')]);
    expect(t.b.status).toBe(0);
    must('qemu-img', 'convert', '-O', 'qcow2', join(t.bdir, 'top.qcow2'), join(t.bdir, 'plain.qcow2'));
    const map = (f: string) => JSON.parse(qemuImg('map', '--output=json', join(t!.bdir, f)).stdout) as { start: number; data: boolean }[];
    const dataAt = (m: { start: number; length?: number; data: boolean }[], off: number) =>
      m.some((e) => e.data && e.start <= off && off < e.start + (e.length ?? 0));
    expect(dataAt(map('o.qcow2'), 5 * 1024 * 1024)).toBe(true);
    expect(dataAt(map('plain.qcow2'), 5 * 1024 * 1024)).toBe(false);
  });

  for (const [flag, extra] of [
    ['-c', ['-c']],
    ['-S', ['-S', '4k']],
    ['--salvage', ['--salvage']],
  ] as const) {
    it(`refuses -C with ${flag} as qemu-img does`, async (ctx) => {
      need(ctx);
      t = await twin(images, (d) => ['convert', '-C', ...extra, '-O', 'qcow2', join(d, 'top.qcow2'), join(d, 'o.qcow2')]);
      expectSameOutput(t);
      expect(t.b.status).toBe(1);
    });
  }
});
