import { afterAll, describe, expect, it } from 'vitest';
import { Workdir, hasQemu } from '../format/qemu.js';
import { cmpFiles, expectParity } from './helpers.js';

/**
 * Images of many kinds made by qemu-img/qemu-io: our check must report exactly what `qemu-img check` reports
 * (JSON and human output, stderr lines, exit code).
 */

interface ImageCase {
  name: string;
  options?: string[];
  size?: string;
  io?: string[];
  /** Extra preparation (snapshots, bitmaps, ...) after the writes. */
  prepare?: (w: Workdir, file: string) => void;
  /** More writes after `prepare`. */
  after?: string[];
}

const STD_WRITES = ['write -P 0xab 0 1M', 'write -P 0xcd 4M 64k', 'write -z 8M 128k'];

const cases: ImageCase[] = [
  { name: 'empty default image' },
  { name: 'defaults (reference std.qcow2)', io: STD_WRITES },
  { name: 'v2 (compat=0.10)', options: ['compat=0.10'], io: ['write -P 0xab 0 1M', 'write -z 8M 128k', 'write -P 0x11 16M 64k', 'write -z 16M 64k'] },
  { name: '512-byte clusters', options: ['cluster_size=512'], io: ['write -P 1 0 100k', 'write -P 2 1M 4k', 'write -z 2M 8k'] },
  { name: '4 KiB clusters', options: ['cluster_size=4096'], io: ['write -P 1 0 1M', 'write -P 2 33M 12k', 'write -z 40M 64k'] },
  { name: '2 MiB clusters', options: ['cluster_size=2M'], io: ['write -P 1 0 3M', 'write -P 2 20M 4k'] },
  ...[1, 2, 4, 8, 16, 32, 64].map((bits) => ({
    name: `refcount_bits=${bits}`,
    options: [`refcount_bits=${bits}`],
    io: STD_WRITES,
  })),
  {
    name: 'extended L2 entries',
    options: ['extended_l2=on'],
    io: ['write -P 1 0 4k', 'write -P 2 70k 10k', 'write -z 1M 8k', 'write -P 3 2M 64k'],
  },
  {
    name: 'extended L2 with 32 KiB clusters and zero writes',
    options: ['extended_l2=on', 'cluster_size=32k'],
    io: ['write -P 1 0 100k', 'write -z 8k 4k', 'write -z -u 32k 32k', 'discard 64k 32k'],
  },
  {
    name: 'compressed clusters (zlib)',
    io: ['write -c -P 1 0 64k', 'write -c -P 2 64k 64k', 'write -c -P 3 192k 64k', 'write -P 4 1M 64k'],
  },
  {
    name: 'compressed clusters (zstd)',
    options: ['compression_type=zstd'],
    io: ['write -c -P 1 0 64k', 'write -c -P 2 64k 64k', 'write -P 4 1M 64k', 'write -c -P 5 2M 64k'],
  },
  {
    name: 'compressed clusters written at EOF (file not sector aligned)',
    io: ['write -c -P 0x11 0 64k', 'write -c -P 0x22 64k 64k'],
  },
  {
    name: 'internal snapshots, then writes',
    io: ['write -P 1 0 256k', 'write -P 2 8M 64k'],
    prepare: (w, f) => {
      w.qemuImg('snapshot', '-c', 'snap1', f);
    },
    after: ['write -P 3 64k 64k', 'write -P 4 16M 64k'],
  },
  {
    name: 'two snapshots and a deleted one',
    io: ['write -P 1 0 128k'],
    prepare: (w, f) => {
      w.qemuImg('snapshot', '-c', 'a', f);
      w.qemuIo(f, 'write -P 2 0 64k');
      w.qemuImg('snapshot', '-c', 'b', f);
      w.qemuIo(f, 'write -P 3 64k 64k');
      w.qemuImg('snapshot', '-c', 'c', f);
      w.qemuImg('snapshot', '-d', 'b', f);
    },
    after: ['write -P 4 1M 64k'],
  },
  {
    name: 'persistent bitmap',
    io: ['write -P 1 0 64k'],
    prepare: (w, f) => {
      w.qemuImg('bitmap', '--add', f, 'bitmap0');
      w.qemuImg('bitmap', '--add', '-g', '512k', f, 'bitmap1');
    },
    after: ['write -P 1 1M 64k'],
  },
  { name: 'preallocation=metadata', options: ['preallocation=metadata'], size: '64M', io: ['write -P 1 0 64k'] },
  { name: 'preallocation=falloc', options: ['preallocation=falloc'], size: '16M' },
  { name: 'preallocation=full', options: ['preallocation=full'], size: '16M', io: ['write -z 1M 64k'] },
  {
    name: 'large virtual size with scattered writes (several L2 tables)',
    size: '100G',
    io: ['write -P 1 0 64k', 'write -P 2 5G 64k', 'write -P 3 50G 128k', 'write -z 99G 64k'],
  },
];

const d = hasQemu ? describe : describe.skip;

d('checkImage on clean images: same report as qemu-img check', () => {
  const w = new Workdir();
  afterAll(() => w.cleanup());

  cases.forEach((c, i) => {
    it(c.name, async () => {
      const name = `clean${i}.qcow2`;
      const file = w.create(name, c.size ?? '64M', c.options ?? []);
      if (c.io?.length) w.qemuIo(name, ...c.io);
      c.prepare?.(w, name);
      if (c.after?.length) w.qemuIo(name, ...c.after);
      const { result } = await expectParity(file);
      expect(result.corruptions + result.leaks + result.checkErrors).toBe(0);
      // Repairing a clean image changes nothing (QEMU stores persistent bitmaps anew when it closes a
      // writable image, so that case only compares the report).
      const all = await expectParity(file, 'all');
      expect(all.result.corruptionsFixed + all.result.leaksFixed).toBe(0);
      if (!c.prepare?.toString().includes('bitmap')) expect(cmpFiles(all.ours, all.theirs)).toBe(true);
      expect(cmpFiles(all.ours, file)).toBe(true);
    });
  });

  it('overlay with a qcow2 backing file', async () => {
    w.create('base.qcow2', '64M');
    w.qemuIo('base.qcow2', 'write -P 0x11 0 2M');
    const file = w.create('overlay.qcow2', '64M', [], ['-b', 'base.qcow2', '-F', 'qcow2']);
    w.qemuIo('overlay.qcow2', 'write -P 1 64k 64k', 'write -P 2 1M 4k', 'write -z 1536k 64k');
    await expectParity(file);
  });

  it('external data file (data_file_raw=on)', async () => {
    const file = w.create('df.qcow2', '64M', ['data_file=df.raw', 'data_file_raw=on']);
    w.qemuIo('df.qcow2', 'write -P 1 0 64k');
    const { result } = await expectParity(file);
    expect(result.allocatedClusters).toBe(1024);
  });

  it('external data file (not raw)', async () => {
    const file = w.create('df2.qcow2', '64M', ['data_file=df2.raw']);
    w.qemuIo('df2.qcow2', 'write -P 1 0 64k', 'write -P 2 1M 64k', 'write -z 2M 64k');
    await expectParity(file);
  });

  it('converted with -c (packed compressed clusters, one incompressible)', async () => {
    const raw = new Uint8Array(4 * 1024 * 1024);
    for (let off = 0; off < raw.length; off += 4096) raw.set(new TextEncoder().encode(`block ${off}`), off);
    let x = 0x2545f491;
    for (let i = 32 * 65536; i < 33 * 65536; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      raw[i] = x & 0xff;
    }
    w.write('src.raw', raw);
    w.qemuImg('convert', '-c', '-O', 'qcow2', 'src.raw', 'comp.qcow2');
    w.qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', 'src.raw', 'compz.qcow2');
    const a = await expectParity(w.path('comp.qcow2'));
    expect(a.result.compressedClusters).toBeGreaterThan(0);
    await expectParity(w.path('compz.qcow2'));
  });
});
