/**
 * `convert --salvage` against qemu-img 7.2: unreadable sectors are converted as zeroes with a warning each (a failed
 * read is retried sector by sector), and a failed block status lookup is narrowed down a quarter at a time to the
 * failing sector, which is then read as data. The sources are damaged qcow2 images: a compressed cluster whose
 * deflate stream is garbage, and an L1 entry with an unaligned L2 table offset.
 */
import { closeSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cachedSetup, expectSameOutput, must, normaliseStderr, qcow2Requirement, readU64, twin, writeU64, type Twin } from './helpers.js';

const need = qcow2Requirement();

let t: Twin | undefined;
afterEach(() => {
  t?.cleanup();
  t = undefined;
});

const images = cachedSetup((d) => {
  // 64 KiB clusters: data, a compressed cluster, data.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', join(d, 'comp.qcow2'), '1M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 1 0 64k', '-c', 'write -c -P 2 64k 64k', '-c', 'write -P 3 128k 64k', join(d, 'comp.qcow2'));
  let fd = openSync(join(d, 'comp.qcow2'), 'r+');
  const l1 = Number(readU64(fd, 40));
  const l2 = Number(readU64(fd, l1) & 0x00fffffffffffe00n);
  // Compressed descriptor (cluster_bits 16: the host offset is the low 54 bits); overwrite its data.
  const host = Number(readU64(fd, l2 + 8) & ((1n << 54n) - 1n));
  writeSync(fd, Buffer.alloc(64, 0xff), 0, 64, host);
  closeSync(fd);

  // Four compressed clusters of 2 MiB, each a 2 MiB chunk for convert, all with garbage deflate streams. Half of
  // each is random so that it compresses to about 1 MiB: reads that large go to the thread pool, as all of
  // qemu-img's reads do, so every worker takes its chunk before the first failure is seen.
  const raw = Buffer.alloc(8 << 20);
  let seed = 12345;
  for (let i = 0; i < raw.length; i += 4) {
    if ((i >> 20) % 2 === 0) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      raw.writeUInt32LE(seed, i);
    }
  }
  writeFileSync(join(d, 'four.raw'), raw);
  must('qemu-img', 'convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=2M', join(d, 'four.raw'), join(d, 'four.qcow2'));
  fd = openSync(join(d, 'four.qcow2'), 'r+');
  const l2four = Number(readU64(fd, Number(readU64(fd, 40))) & 0x00fffffffffffe00n);
  for (let i = 0; i < 4; i++) {
    const entry = readU64(fd, l2four + i * 8);
    if (!(entry & (1n << 62n))) throw new Error(`cluster ${i} of four.qcow2 is not compressed`);
    // cluster_bits 21: the host offset is the low 70 - 21 = 49 bits.
    writeSync(fd, Buffer.alloc(64, 0xff), 0, 64, Number(entry & ((1n << 49n) - 1n)));
  }
  closeSync(fd);

  must('qemu-img', 'create', '-q', '-f', 'qcow2', join(d, 'l1.qcow2'), '64k');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 5 0 64k', join(d, 'l1.qcow2'));
  fd = openSync(join(d, 'l1.qcow2'), 'r+');
  const l1b = Number(readU64(fd, 40));
  writeU64(fd, l1b, readU64(fd, l1b) | 0x200n);
  closeSync(fd);
});

describe('convert --salvage against qemu-img convert --salvage', () => {
  const CASES: [string, string[]][] = [
    ['a garbage compressed cluster, to qcow2', ['--salvage', '-O', 'qcow2', 'comp.qcow2', 'o.img']],
    ['a garbage compressed cluster, to raw', ['--salvage', '-O', 'raw', 'comp.qcow2', 'o.img']],
    ['without --salvage the same read fails', ['-O', 'raw', 'comp.qcow2', 'o.img']],
    ['-q: no warnings', ['-q', '--salvage', '-O', 'raw', 'comp.qcow2', 'o.img']],
    ['an unaligned L2 table offset: block status fails sector by sector', ['--salvage', '-O', 'raw', 'l1.qcow2', 'o.img']],
    ['without --salvage the block status error ends the convert', ['-O', 'raw', 'l1.qcow2', 'o.img']],
  ];
  for (const [title, args] of CASES) {
    it(title, async (ctx) => {
      need(ctx);
      t = await twin(images, (d) => ['convert', ...args.map((a) => (a.includes('.') ? join(d, a) : a))]);
      expectSameOutput(t);
      if (t.q.status === 0) {
        expect(readFileSync(join(t.bdir, 'o.img')).equals(readFileSync(join(t.qdir, 'o.img')))).toBe(true);
      }
    });
  }

  it('without --salvage every chunk whose read fails says so, not only the first', async (ctx) => {
    need(ctx);
    t = await twin(images, (d) => ['convert', '-O', 'raw', join(d, 'four.qcow2'), join(d, 'o.img')]);
    expect(t.q.status).toBe(1);
    expect(t.b.status).toBe(1);
    const expected = [0, 2, 4, 6].map((mib) => `blockgraph: error while reading at byte ${mib << 20}: Input/output error`);
    const qemuLines = normaliseStderr(t.q.stderr).split('\n').filter(Boolean);
    expect([...qemuLines].sort()).toEqual(expected);
    // One line per chunk, in the order the reads failed, in either tool.
    expect(t.b.stderr.split('\n').filter(Boolean).sort()).toEqual(expected);
  });

  it('the unreadable cluster reads back as zeroes, the rest as written', async (ctx) => {
    need(ctx);
    t = await twin(images, (d) => ['convert', '--salvage', '-O', 'raw', join(d, 'comp.qcow2'), join(d, 'o.img')]);
    expect(t.b.status).toBe(0);
    expect(t.b.stderr.split('\n').filter((l) => l.includes('warning: error while reading offset'))).toHaveLength(128);
    const out = readFileSync(join(t.bdir, 'o.img'));
    expect(out.subarray(0, 65536).every((b) => b === 1)).toBe(true);
    expect(out.subarray(65536, 131072).every((b) => b === 0)).toBe(true);
    expect(out.subarray(131072, 196608).every((b) => b === 3)).toBe(true);
  });
});
