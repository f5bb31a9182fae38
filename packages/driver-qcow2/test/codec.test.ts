/// <reference types="node" />
import { BlockError } from '@blockgraph/block-core';
import { spawnSync } from 'node:child_process';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codecFor, type CodecTable, type CompressionCodec } from '../src/codec.js';
import { neutralCodecs, zstdFrameAt } from '../src/codecs/index.js';
import {
  ClusterType,
  CompressionType,
  compressedHostOffset,
  compressedReadLength,
  l2ClusterType,
  writeCompressedDescriptor,
} from '../src/format/index.js';
import { nodeCodecs } from '../src/node/codecs.js';
import { l2EntryOf, openImage } from './format/map.js';
import { makeSourceData } from './format/source-data.js';
import { Workdir, dataView, hasQemu } from './format/qemu.js';

const CLUSTER = 65536;
/** The reference zstd CLI makes the multi-frame inputs; scripts/setup.sh installs it, so CI must have it. */
const hasZstdCli = spawnSync('zstd', ['--version']).status === 0;
if (!hasZstdCli && process.env.CI === 'true') throw new Error('the zstd command is required when CI=true (apt-get install zstd)');

function zstdCli(args: string[], input: Uint8Array): Uint8Array {
  const r = spawnSync('zstd', args, { input, maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`zstd ${args.join(' ')}: ${r.stderr}`);
  return new Uint8Array(r.stdout);
}

function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const tables: Array<[string, () => Promise<CodecTable>]> = [
  ['node', nodeCodecs],
  ['neutral', neutralCodecs],
];

const source = makeSourceData();
const clusterOf = (i: number) => source.subarray(i * CLUSTER, (i + 1) * CLUSTER);

describe.each(tables)('%s codecs', (_name, load) => {
  let codecs: CodecTable;
  let zlib: CompressionCodec;
  let zstd: CompressionCodec;
  beforeAll(async () => {
    codecs = await load();
    zlib = codecFor(codecs, CompressionType.ZLIB);
    zstd = codecFor(codecs, CompressionType.ZSTD);
  });

  it('zlib output is raw deflate that inflates with a 4 KiB window', () => {
    for (const i of [0, 5, 33]) {
      const out = zlib.compress(clusterOf(i), CLUSTER - 1)!;
      expect(out).not.toBeNull();
      expect(out.length).toBeLessThan(1000);
      expect(Buffer.from(inflateRawSync(out, { windowBits: 12 })).equals(Buffer.from(clusterOf(i)))).toBe(true);
    }
    // The window really is 4 KiB: a random block repeated every 2 KiB compresses, one repeated every 8 KiB
    // does not (a 32 KiB window would shrink it to an eighth, and QEMU could not read the result).
    const repeating = (period: number) => {
      const data = new Uint8Array(CLUSTER);
      const block = randomBytes(period, 99);
      for (let off = 0; off < CLUSTER; off += period) data.set(block, off);
      return data;
    };
    const near = zlib.compress(repeating(2048), CLUSTER - 1)!;
    expect(near.length).toBeLessThan(4096);
    expect(Buffer.from(inflateRawSync(near, { windowBits: 12 })).equals(Buffer.from(repeating(2048)))).toBe(true);
    expect(zlib.compress(repeating(8192), CLUSTER - 1)).toBeNull();
    expect(deflateRawSync(repeating(8192), { windowBits: 15 }).length).toBeLessThan(10000);
  });

  it('zstd output is a plain zstd frame the reference decoder reads', () => {
    const out = zstd.compress(clusterOf(1), CLUSTER - 1)!;
    expect([...out.subarray(0, 4)]).toEqual([0x28, 0xb5, 0x2f, 0xfd]);
    const back = new Uint8Array(CLUSTER);
    zstd.decompress(out, back);
    expect(Buffer.from(back).equals(Buffer.from(clusterOf(1)))).toBe(true);
    if (hasZstdCli) {
      expect(Buffer.from(zstdCli(['-d', '-c', '-q'], out)).equals(Buffer.from(clusterOf(1)))).toBe(true);
    }
  });

  it('incompressible data does not fit in cluster_size - 1: null', () => {
    expect(zlib.compress(clusterOf(32), CLUSTER - 1)).toBeNull();
    expect(zstd.compress(clusterOf(32), CLUSTER - 1)).toBeNull();
    expect(zlib.compress(clusterOf(0), 10)).toBeNull();
  });

  it('round trips every cluster size', () => {
    for (let bits = 9; bits <= 21; bits += 3) {
      const data = new Uint8Array(2 ** bits);
      data.set(source.subarray(0, Math.min(data.length, source.length)));
      for (const codec of [zlib, zstd]) {
        const out = codec.compress(data, data.length - 1)!;
        const back = new Uint8Array(data.length);
        codec.decompress(out, back);
        expect(Buffer.from(back).equals(Buffer.from(data))).toBe(true);
      }
    }
  });

  it('trailing bytes after the stream are ignored; short, corrupt or empty input is EIO', () => {
    for (const codec of [zlib, zstd]) {
      const out = codec.compress(clusterOf(2), CLUSTER - 1)!;
      const window = new Uint8Array(out.length + 300);
      window.set(out);
      window.set(randomBytes(300, 5), out.length);
      const dst = new Uint8Array(CLUSTER);
      codec.decompress(window, dst);
      expect(Buffer.from(dst).equals(Buffer.from(clusterOf(2)))).toBe(true);
      for (const bad of [out.subarray(0, out.length >> 1), randomBytes(600, 11), new Uint8Array(0)]) {
        expect(() => codec.decompress(bad, new Uint8Array(CLUSTER))).toThrowError(
          expect.objectContaining({ code: 'EIO', name: 'BlockError' }),
        );
      }
    }
  });

  it('damaged compressed data: the cluster or EIO, never another error', () => {
    let x = 17;
    const random = () => ((x = (x * 1103515245 + 12345) % 2147483648) / 2147483648);
    for (const codec of [zlib, zstd]) {
      const good = codec.compress(clusterOf(7), CLUSTER - 1)!;
      for (let i = 0; i < 300; i++) {
        const bad = good.slice(0, random() < 0.2 ? Math.floor(random() * good.length) : good.length);
        for (let k = 0; k < 2; k++) bad[Math.floor(random() * bad.length)] = Math.floor(random() * 256);
        try {
          codec.decompress(bad, new Uint8Array(CLUSTER));
        } catch (e) {
          expect(e).toBeInstanceOf(BlockError);
          expect((e as BlockError).code).toBe('EIO');
        }
      }
    }
  });

  it('a stream holding more than one cluster: zlib keeps the first cluster (as QEMU), zstd fails (as QEMU)', () => {
    const two = source.subarray(0, 2 * CLUSTER);
    const z = deflateRawSync(two, { windowBits: 12 });
    const dst = new Uint8Array(CLUSTER);
    zlib.decompress(z, dst);
    expect(Buffer.from(dst).equals(Buffer.from(clusterOf(0)))).toBe(true);
    const zs = zstd.compress(two, 2 * CLUSTER)!;
    expect(() => zstd.decompress(zs, new Uint8Array(CLUSTER))).toThrowError(BlockError);
  });

  it.skipIf(!hasZstdCli)('zstd: several frames, skippable frames and frames without a content size', () => {
    const a = zstdCli(['-c', '-q', '--no-check'], clusterOf(3).subarray(0, 30000));
    const b = zstdCli(['-c', '-q'], clusterOf(4).subarray(30000)); // stdin pipe: no content size, with checksum
    expect(zstdFrameAt(b, 0).contentSize).toBe(-1);
    const skippable = Uint8Array.from([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9]);
    const expected = new Uint8Array(CLUSTER);
    expected.set(clusterOf(3).subarray(0, 30000));
    expected.set(clusterOf(4).subarray(30000), 30000);
    for (const parts of [[a, b], [skippable, a, skippable, b, randomBytes(50, 3)]]) {
      const window = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) {
        window.set(p, at);
        at += p.length;
      }
      const dst = new Uint8Array(CLUSTER);
      zstd.decompress(window, dst);
      expect(Buffer.from(dst).equals(Buffer.from(expected))).toBe(true);
    }
  });
});

describe('zstd frame walker', () => {
  it.skipIf(!hasZstdCli)('measures frames exactly, with and without checksum', () => {
    for (const args of [['-c', '-q'], ['-c', '-q', '--no-check'], ['-c', '-q', '-19']]) {
      const frame = zstdCli(args, source.subarray(0, 200000));
      const padded = new Uint8Array(frame.length + 7);
      padded.set(frame);
      expect(zstdFrameAt(padded, 0).length).toBe(frame.length);
      expect(() => zstdFrameAt(frame.subarray(0, frame.length - 1), 0)).toThrowError(BlockError);
    }
  });

  it('refuses non-frames', () => {
    expect(() => zstdFrameAt(new Uint8Array([1, 2, 3, 4, 5]), 0)).toThrowError(expect.objectContaining({ code: 'EIO' }));
    expect(() => zstdFrameAt(new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0x08]), 0)).toThrowError(BlockError);
  });
});

describe.skipIf(!hasQemu)('codecs against QEMU 7.2 compressed clusters', () => {
  let wd: Workdir;
  beforeAll(() => {
    wd = new Workdir();
    wd.write('src.raw', source);
    wd.qemuImg('convert', '-c', '-O', 'qcow2', 'src.raw', 'comp.qcow2');
    wd.qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', 'src.raw', 'compz.qcow2');
  });
  afterAll(() => wd.cleanup());

  describe.each(tables)('%s codecs', (_name, load) => {
    it('decompress every QEMU zlib and zstd cluster to the source data', async () => {
      const codecs = await load();
      for (const name of ['comp.qcow2', 'compz.qcow2']) {
        const file = wd.read(name);
        const img = openImage(file);
        const codec = codecFor(codecs, img.header.compressionType);
        let compressed = 0;
        for (let c = 0; c < 64; c++) {
          const e = l2EntryOf(img, c);
          if (l2ClusterType(e.hi, e.lo, img.mode) !== ClusterType.COMPRESSED) continue;
          const off = compressedHostOffset(e.hi, e.lo, img.geometry);
          // The read window runs into the next cluster's bytes (or past EOF, where the slice is just short).
          const window = file.subarray(off, off + compressedReadLength(e.hi, e.lo, img.geometry));
          const dst = new Uint8Array(CLUSTER);
          codec.decompress(window, dst);
          expect(Buffer.from(dst).equals(Buffer.from(clusterOf(c))), `${name} cluster ${c}`).toBe(true);
          compressed++;
        }
        expect(compressed).toBe(63);
      }
    });

    it('QEMU reads clusters we compressed (zlib and zstd images)', async () => {
      const codecs = await load();
      for (const [name, opts] of [['ours-zlib.qcow2', []], ['ours-zstd.qcow2', ['compression_type=zstd']]] as const) {
        wd.create(name, '4M', [...opts]);
        wd.qemuIo(name, 'write -P 0x77 0 64k'); // L2 table at 0x40000, data at 0x50000
        const file = wd.read(name);
        const img = openImage(file);
        const codec = codecFor(codecs, img.header.compressionType);
        const l2 = dataView(file.subarray(0x40000, 0x50000));
        const payloads: Uint8Array[] = [];
        let hostOffset = file.length;
        for (let c = 1; c < 8; c++) {
          const out = codec.compress(clusterOf(c), CLUSTER - 1)!;
          writeCompressedDescriptor(l2, c * 8, hostOffset, out.length, img.geometry);
          payloads.push(out);
          hostOffset += out.length; // byte-adjacent, as QEMU packs them
        }
        const image = new Uint8Array(hostOffset);
        image.set(file);
        let at = file.length;
        for (const p of payloads) {
          image.set(p, at);
          at += p.length;
        }
        wd.write(name, image);
        // Byte-compare what QEMU reads back for clusters 1..7 against the source.
        const r = spawnSync('qemu-img', ['dd', '-f', 'qcow2', '-O', 'raw', `if=${name}`, 'of=back.raw', 'bs=64k', 'count=8'], {
          cwd: wd.dir,
          encoding: 'utf8',
        });
        expect(r.status, r.stderr).toBe(0);
        const back = wd.read('back.raw');
        expect(Buffer.from(back.subarray(CLUSTER, 8 * CLUSTER)).equals(Buffer.from(source.subarray(CLUSTER, 8 * CLUSTER)))).toBe(true);
      }
    });
  });
});
