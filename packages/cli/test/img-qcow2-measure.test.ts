/**
 * `blockgraph measure -O qcow2` against `qemu-img measure` (QEMU 7.2): the same numbers, human and JSON output,
 * the same errors and exit codes, for new images (--size) and for existing raw and qcow2 sources.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bg, cachedSetup, must, normaliseStderr, qcow2Requirement, run, tempDir } from './helpers.js';

const need = qcow2Requirement();

const io = (fmt: string, file: string, ...cmds: string[]) => must('qemu-io', '-f', fmt, ...cmds.flatMap((c) => ['-c', c]), file);

const sources = cachedSetup((d) => {
  const img = (name: string, size: string, ...opts: string[]) => must('qemu-img', 'create', '-q', '-f', 'qcow2', ...opts, join(d, name), size);
  img('std.qcow2', '64M');
  io('qcow2', join(d, 'std.qcow2'), 'write -P 0xab 0 1M', 'write -P 0xcd 4M 64k', 'write -z 8M 128k', 'write -P 1 63M 100k');
  img('v2.qcow2', '100M', '-o', 'compat=0.10,cluster_size=4k');
  io('qcow2', join(d, 'v2.qcow2'), 'write -P 0xab 1000 1M', 'write -z 8M 128k');
  img('el2.qcow2', '16M', '-o', 'extended_l2=on');
  io('qcow2', join(d, 'el2.qcow2'), 'write -P 1 0 4k', 'write -P 2 70k 10k', 'write -z 1M 8k');
  img('empty.qcow2', '1G');
  img('base.qcow2', '8M');
  io('qcow2', join(d, 'base.qcow2'), 'write -P 0x11 0 2M');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(d, 'overlay.qcow2'));
  io('qcow2', join(d, 'overlay.qcow2'), 'write -P 0x22 3M 64k', 'write -z 0 64k');
  must('qemu-img', 'create', '-q', '-f', 'raw', join(d, 'a.raw'), '10000000');
  io('raw', join(d, 'a.raw'), 'write -P 0xab 0 1M', 'write -P 0xcd 5M 3k', 'write -P 0 7M 64k');
  img('bitmaps.qcow2', '32M');
  must('qemu-img', 'bitmap', '--add', join(d, 'bitmaps.qcow2'), 'b0');
  must('qemu-img', 'bitmap', '--add', '-g', '512', join(d, 'bitmaps.qcow2'), 'a-longer-bitmap-name');
  io('qcow2', join(d, 'bitmaps.qcow2'), 'write -P 3 0 1M');
  // A v2 image whose first L2 entry has the zero flag v2 does not know: a corruption when block status reads it.
  img('corrupt-v2.qcow2', '16M', '-o', 'compat=0.10');
  io('qcow2', join(d, 'corrupt-v2.qcow2'), 'write -P 5 0 64k');
  const fd = openSync(join(d, 'corrupt-v2.qcow2'), 'r+');
  try {
    const u64 = (at: number) => {
      const b = Buffer.alloc(8);
      readSync(fd, b, 0, 8, at);
      return b.readBigUInt64BE(0);
    };
    const l2 = Number(u64(Number(u64(40))) & 0x00fffffffffffe00n);
    writeSync(fd, Buffer.from([Number(u64(l2) & 0xffn) | 1]), 0, 1, l2 + 7);
  } finally {
    closeSync(fd);
  }
});

const CASES: string[][] = [
  ['-O', 'qcow2', '--size', '1G'],
  ['-O', 'qcow2', '--size', '0'],
  ['-O', 'qcow2', '--size', '1000'],
  ['-O', 'qcow2', '--size', '5T'],
  ['--output=json', '-O', 'qcow2', '--size', '64M'],
  ['-O', 'qcow2', '-o', 'cluster_size=512', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'cluster_size=4k', '--size', '100M'],
  ['-O', 'qcow2', '-o', 'cluster_size=2M', '--size', '100G'],
  ['-O', 'qcow2', '-o', 'extended_l2=on', '--size', '10G'],
  ['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=16k', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'refcount_bits=1', '--size', '10G'],
  ['-O', 'qcow2', '-o', 'refcount_bits=64', '--size', '10G'],
  ['-O', 'qcow2', '-o', 'compat=0.10', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'preallocation=metadata', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'preallocation=falloc', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'preallocation=full,cluster_size=128k', '--size', '3G'],
  ['-O', 'qcow2', '-o', 'backing_file=x.qcow2', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'lazy_refcounts=on,compression_type=zstd', '--size', '1G'],
  // errors
  ['-O', 'qcow2', '-o', 'cluster_size=3000', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'cluster_size=4M', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=4k', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'refcount_bits=3', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'refcount_bits=128', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'compat=0.10,refcount_bits=8', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'compat=2', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'preallocation=bogus', '--size', '1G'],
  ['-O', 'qcow2', '-o', 'cluster_size=512', '--size', '64T'],
  ['-O', 'qcow2', '-o', 'bogus=1', '--size', '1G'],
  // existing images
  ['-O', 'qcow2', 'std.qcow2'],
  ['--output=json', '-O', 'qcow2', 'std.qcow2'],
  ['-O', 'qcow2', '-o', 'cluster_size=4k', 'std.qcow2'],
  ['-O', 'qcow2', '-o', 'cluster_size=2M', 'std.qcow2'],
  ['-O', 'qcow2', '-o', 'extended_l2=on', 'std.qcow2'],
  ['-O', 'qcow2', '-o', 'preallocation=full', 'std.qcow2'],
  ['-O', 'qcow2', '-o', 'preallocation=metadata', 'std.qcow2'],
  ['-O', 'qcow2', '-o', 'backing_file=std.qcow2', 'std.qcow2'],
  ['-O', 'qcow2', '-o', 'compat=0.10', 'std.qcow2'],
  ['-O', 'qcow2', 'v2.qcow2'],
  ['-O', 'qcow2', '-o', 'cluster_size=512', 'v2.qcow2'],
  ['-O', 'qcow2', 'el2.qcow2'],
  ['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=32k', 'el2.qcow2'],
  ['-O', 'qcow2', 'empty.qcow2'],
  ['-O', 'qcow2', 'overlay.qcow2'],
  ['--output=json', '-O', 'qcow2', 'overlay.qcow2'],
  ['-O', 'qcow2', 'bitmaps.qcow2'],
  ['--output=json', '-O', 'qcow2', '-o', 'cluster_size=4k', 'bitmaps.qcow2'],
  ['-O', 'qcow2', '-o', 'compat=0.10', 'bitmaps.qcow2'],
  ['-O', 'qcow2', '-f', 'raw', 'a.raw'],
  ['--output=json', '-O', 'qcow2', '-o', 'cluster_size=4k', '-f', 'raw', 'a.raw'],
  ['-O', 'qcow2', '-o', 'cluster_size=1M', '-f', 'raw', 'a.raw'],
  ['-O', 'raw', 'std.qcow2'],
  ['-O', 'qcow2', '--image-opts', 'driver=qcow2,file.filename=std.qcow2'],
  // The corruption event, then "Unable to get block status: Input/output error" (the errno's text).
  ['-O', 'qcow2', 'corrupt-v2.qcow2'],
];

describe('blockgraph measure -O qcow2 against qemu-img measure', () => {
  for (const args of CASES) {
    it(args.join(' '), async (ctx) => {
      need(ctx);
      const d = tempDir('measure');
      try {
        sources(d.dir);
        const abs = args.map((a) => (/\.(qcow2|raw)$/.test(a) && !a.includes('=') ? join(d.dir, a) : a.replace(/(file\.filename=)(.*)/, `$1${d.dir}/$2`)));
        const q = run('qemu-img', ['measure', ...abs]);
        const b = await bg('measure', ...abs);
        expect({ status: b.status, stdout: b.stdout }).toEqual({ status: q.status, stdout: q.stdout });
        expect(b.stderr).toBe(normaliseStderr(q.stderr));
      } finally {
        d.cleanup();
      }
    });
  }
});
