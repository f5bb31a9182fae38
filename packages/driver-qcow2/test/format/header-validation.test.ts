import { BlockError } from '@blockgraph/block-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseHeader, serializeHeader, type HeaderOpenOptions } from '../../src/format/index.js';
import { Workdir, dataView, hasQemu, qemuOpenMessage } from './qemu.js';

/**
 * Damaged headers: every refusal carries QEMU 7.2's message and errno, checked against qemu-img itself; random
 * damage never crashes the parser.
 */

type Mutation = (b: Uint8Array, v: DataView) => void;

/** Replace everything after the 112-byte header with these extension records. */
function extensions(...records: Array<[type: number, payload: Uint8Array]>): Mutation {
  return (b, v) => {
    b.fill(0, 112, 65536);
    let off = 112;
    for (const [type, payload] of records) {
      v.setUint32(off, type);
      v.setUint32(off + 4, payload.length);
      b.set(payload, off + 8);
      off += 8 + Math.ceil(payload.length / 8) * 8;
    }
  };
}

function featureTable(...entries: Array<[type: number, bit: number, name: string]>): Uint8Array {
  const p = new Uint8Array(48 * entries.length);
  entries.forEach(([t, bit, name], i) => {
    p[i * 48] = t;
    p[i * 48 + 1] = bit;
    p.set(new TextEncoder().encode(name), i * 48 + 2);
  });
  return p;
}

function bitmapsExt(nb: number, reserved: number, size: bigint, offset: bigint): Uint8Array {
  const p = new Uint8Array(24);
  const v = dataView(p);
  v.setUint32(0, nb);
  v.setUint32(4, reserved);
  v.setBigUint64(8, size);
  v.setBigUint64(16, offset);
  return p;
}

function both(...ms: Mutation[]): Mutation {
  return (b, v) => ms.forEach((m) => m(b, v));
}

const setAutoclear = (x: bigint): Mutation => (_b, v) => v.setBigUint64(88, x);
const setIncompat = (x: bigint): Mutation => (_b, v) => v.setBigUint64(72, x);
const bytes = (s: string) => new TextEncoder().encode(s);

interface Case {
  name: string;
  mutate: Mutation;
  /** QEMU 7.2's message, or null when QEMU opens the image. */
  message: string | null;
  code?: string;
  /** Which QEMU open to compare with: `qemu-img info` (metadata only) by default. */
  oracle?: 'info' | 'io-ro' | 'io-rw';
}

const cases: Case[] = [
  { name: 'magic', mutate: (_b, v) => v.setUint32(0, 0x12345678), message: 'Image is not in qcow2 format', code: 'EINVAL' },
  { name: 'version 4', mutate: (_b, v) => v.setUint32(4, 4), message: 'Unsupported qcow2 version 4', code: 'ENOTSUP' },
  { name: 'version 1', mutate: (_b, v) => v.setUint32(4, 1), message: 'Unsupported qcow2 version 1', code: 'ENOTSUP' },
  { name: 'cluster_bits 22', mutate: (_b, v) => v.setUint32(20, 22), message: 'Unsupported cluster size: 2^22', code: 'EINVAL' },
  { name: 'cluster_bits 8', mutate: (_b, v) => v.setUint32(20, 8), message: 'Unsupported cluster size: 2^8' },
  { name: 'header_length 100', mutate: (_b, v) => v.setUint32(100, 100), message: 'qcow2 header too short', code: 'EINVAL' },
  { name: 'header_length > cluster', mutate: (_b, v) => v.setUint32(100, 0x20000), message: 'qcow2 header exceeds cluster size' },
  { name: 'backing offset > cluster', mutate: (_b, v) => v.setBigUint64(8, 0x20000n), message: 'Invalid backing file offset' },
  { name: 'compression type 2', mutate: (b) => { b[104] = 2; }, message: 'qcow2: unknown compression type: 2', code: 'ENOTSUP' },
  {
    name: 'zstd without bit 3',
    mutate: (b) => { b[104] = 1; },
    message: 'qcow2: Compression type incompatible feature bit must be set',
    code: 'EINVAL',
  },
  { name: 'zlib with bit 3', mutate: setIncompat(8n), message: 'qcow2: Compression type incompatible feature bit must not be set' },
  {
    name: 'unknown incompatible bit 32',
    mutate: setIncompat(1n << 32n),
    message: 'Unsupported qcow2 feature(s): Unknown incompatible feature: 100000000',
    code: 'ENOTSUP',
  },
  { name: 'unknown incompatible bit 5', mutate: setIncompat(1n << 5n), message: 'Unsupported qcow2 feature(s): Unknown incompatible feature: 20' },
  {
    name: 'feature names from the image',
    mutate: both(
      extensions([0x6803f857, featureTable([0, 5, 'fancy feature'], [0, 40, 'far feature'], [1, 6, 'compat thing'])]),
      setIncompat((1n << 5n) | (1n << 40n) | (1n << 33n)),
    ),
    message: 'Unsupported qcow2 feature(s): fancy feature, far feature, Unknown incompatible feature: 200000000',
  },
  {
    name: 'feature names: first match wins, each bit once',
    mutate: both(
      extensions([0x6803f857, featureTable([0, 5, 'first name'], [0, 5, 'second name'], [0, 69, 'wraps to 5'])]),
      setIncompat(1n << 5n),
    ),
    message: 'Unsupported qcow2 feature(s): first name',
  },
  {
    name: 'feature table after a broken extension is not seen',
    mutate: both(
      (_b, v) => { v.setUint32(0x74, 0x10000); }, // our feature table's length now runs off the cluster
      setIncompat(1n << 6n),
    ),
    message: 'Unsupported qcow2 feature(s): Unknown incompatible feature: 40',
  },
  {
    name: 'extended L2 with 4 KiB clusters',
    mutate: both((_b, v) => v.setUint32(20, 12), setIncompat(16n)),
    message: 'Unsupported subcluster size: 128',
  },
  { name: 'refcount_order 7', mutate: (_b, v) => v.setUint32(96, 7), message: 'Reference count entry width too large; may not exceed 64 bits' },
  { name: 'no refcount table', mutate: (_b, v) => v.setUint32(56, 0), message: 'Image does not contain a reference count table' },
  { name: 'refcount table too large', mutate: (_b, v) => v.setUint32(56, 200), message: 'Reference count table too large', code: 'EFBIG' },
  { name: 'refcount table unaligned', mutate: (_b, v) => v.setBigUint64(48, 0x10200n), message: 'Reference count table offset invalid' },
  { name: 'refcount table at 2^63', mutate: (_b, v) => v.setBigUint64(48, 0x7fffffffffff0000n), message: 'Reference count table offset invalid' },
  { name: 'too many snapshots', mutate: (_b, v) => v.setUint32(60, 65537), message: 'Snapshot table too large' },
  {
    name: 'snapshot table unaligned',
    mutate: (_b, v) => { v.setUint32(60, 1); v.setBigUint64(64, 0x200n); },
    message: 'Snapshot table offset invalid',
  },
  { name: 'L1 too large', mutate: (_b, v) => v.setUint32(36, 0x400001), message: 'Active L1 table too large', code: 'EFBIG' },
  { name: 'L1 unaligned', mutate: (_b, v) => v.setBigUint64(40, 0x30200n), message: 'Active L1 table offset invalid', code: 'EINVAL' },
  { name: 'L1 too small', mutate: (_b, v) => v.setUint32(36, 0), message: 'L1 table is too small', code: 'EINVAL' },
  { name: 'image too big', mutate: (_b, v) => v.setBigUint64(24, 0x7fffffffffff0000n), message: 'Image is too big', code: 'EFBIG' },
  { name: 'crypt method 3', mutate: (_b, v) => v.setUint32(32, 3), message: 'Unsupported encryption method 3' },
  { name: 'extension too large', mutate: (_b, v) => v.setUint32(0x74, 0x10000), message: 'Header extension too large' },
  {
    name: 'extension crosses the backing file name',
    mutate: both(extensions([0x12345678, new Uint8Array(40)]), (_b, v) => { v.setBigUint64(8, 0x80n); v.setUint32(16, 4); }),
    message: 'Header extension too large',
  },
  {
    name: 'backing format of 16 bytes',
    mutate: extensions([0xe2792aca, bytes('abcdefghijklmnop')]),
    message: 'ERROR: ext_backing_format: len=16 too large (>=16)',
  },
  { name: 'backing format of 15 bytes', mutate: extensions([0xe2792aca, bytes('abcdefghijklmno')]), message: null },
  {
    name: 'bitmaps: bad length',
    mutate: both(extensions([0x23852875, new Uint8Array(16)]), setAutoclear(1n)),
    message: 'bitmaps_ext: Invalid extension length',
  },
  {
    name: 'bitmaps: reserved field',
    mutate: both(extensions([0x23852875, bitmapsExt(1, 1, 32n, 0x90000n)]), setAutoclear(1n)),
    message: 'bitmaps_ext: Reserved field is not zero',
  },
  {
    name: 'bitmaps: zero bitmaps',
    mutate: both(extensions([0x23852875, bitmapsExt(0, 0, 32n, 0x90000n)]), setAutoclear(1n)),
    message: 'found bitmaps extension with zero bitmaps',
  },
  {
    name: 'bitmaps: too many',
    mutate: both(extensions([0x23852875, bitmapsExt(65536, 0, 32n, 0x90000n)]), setAutoclear(1n)),
    message: 'bitmaps_ext: Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535',
  },
  {
    name: 'bitmaps: unaligned directory',
    mutate: both(extensions([0x23852875, bitmapsExt(1, 0, 32n, 0x90200n)]), setAutoclear(1n)),
    message: 'bitmaps_ext: invalid bitmap directory offset',
  },
  {
    name: 'bitmaps: directory too large',
    mutate: both(extensions([0x23852875, bitmapsExt(1, 0, 1024n * 65535n + 1n, 0x90000n)]), setAutoclear(1n)),
    message: 'bitmaps_ext: bitmap directory size (67107841) exceeds the maximum supported size (67107840)',
  },
  { name: 'bitmaps without autoclear bit: ignored', mutate: extensions([0x23852875, bitmapsExt(1, 0, 32n, 0x90000n)]), message: null },
  {
    name: 'FDE pointer without LUKS',
    mutate: extensions([0x0537be77, new Uint8Array(16)]),
    message: 'CRYPTO header extension only expected with LUKS encryption method',
  },
  {
    name: 'FDE pointer of 8 bytes',
    mutate: both(extensions([0x0537be77, new Uint8Array(8)]), (_b, v) => v.setUint32(32, 2)),
    message: 'CRYPTO header extension size 8, but expected size 16',
  },
  {
    name: 'FDE pointer unaligned',
    mutate: both(
      extensions([0x0537be77, Uint8Array.from([0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x10, 0])]),
      (_b, v) => v.setUint32(32, 2),
    ),
    message: "Encryption header offset '512' is not a multiple of cluster size '65536'",
  },
  {
    name: 'backing file name longer than 1023',
    mutate: both(extensions(), (b, v) => { v.setBigUint64(8, 0x1000n); v.setUint32(16, 1024); b.fill(0x61, 0x1000, 0x1400); }),
    message: 'Backing file name too long',
  },
  {
    name: 'backing file name past the cluster',
    mutate: both(extensions(), (_b, v) => { v.setBigUint64(8, 0xff00n); v.setUint32(16, 0x101); }),
    message: 'Backing file name too long',
  },
  {
    name: 'no end marker until the end of the cluster',
    mutate: both(extensions(), (_b, v) => { for (let o = 112; o + 8 <= 65536; o += 8) v.setUint32(o, 0x77777777); }),
    message: null,
  },
  { name: 'unknown autoclear bits are fine', mutate: setAutoclear(1n << 10n), message: null },
  { name: 'corrupt bit, read-only', mutate: setIncompat(2n), message: null, oracle: 'io-ro' },
  {
    name: 'corrupt bit, read-write',
    mutate: setIncompat(2n),
    message: 'qcow2: Image is corrupt; cannot be opened read/write',
    code: 'EACCES',
    oracle: 'io-rw',
  },
  {
    name: 'data-file-raw without a data file',
    mutate: setAutoclear(2n),
    message: 'data-file-raw requires a data file',
    oracle: 'io-ro',
  },
  { name: 'LUKS without FDE pointer', mutate: (_b, v) => v.setUint32(32, 2), message: 'Missing CRYPTO header for crypt method 2', oracle: 'io-ro' },
];

function optionsFor(oracle: Case['oracle']): HeaderOpenOptions {
  if (oracle === 'io-rw') return { readWrite: true };
  if (oracle === 'io-ro') return {};
  return { noIO: true };
}

function parseOutcome(c0: Uint8Array, options: HeaderOpenOptions): { message: string | null; code?: string } {
  try {
    parseHeader(c0, options);
    return { message: null };
  } catch (e) {
    if (!(e instanceof BlockError)) throw e;
    return { message: e.message, code: e.code };
  }
}

describe('header validation: QEMU messages', () => {
  let wd: Workdir;
  let base: Uint8Array;
  beforeAll(() => {
    wd = new Workdir();
    if (hasQemu) {
      wd.create('base.qcow2', '64M');
      base = wd.read('base.qcow2');
    }
  });
  afterAll(() => wd.cleanup());

  it.skipIf(!hasQemu).each(cases)('$name', ({ name, mutate, message, code, oracle }) => {
    const image = base.slice();
    mutate(image, dataView(image));
    const outcome = parseOutcome(image.subarray(0, 65536), optionsFor(oracle));
    expect(outcome.message).toBe(message);
    if (code) expect(outcome.code).toBe(code);

    const file = name.replace(/\W+/g, '_') + '.qcow2';
    wd.write(file, image);
    const q = oracle === undefined || oracle === 'info' ? wd.infoError(file) : wd.ioOpenError(file, oracle === 'io-rw');
    if (message === null) expect(q.status).toBe(0);
    else expect(qemuOpenMessage(q.stderr)).toBe(message);
  });
});

/** xorshift32: reproducible randomness. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}

const FIELD_OFFSETS = [4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68, 72, 76, 80, 84, 88, 92, 96, 100, 104];
const INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 12, 16, 21, 22, 63, 64, 104, 112, 0x200, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff];

function mutateRandomly(image: Uint8Array, random: () => number, headerOnly: boolean): void {
  const v = dataView(image);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(random() * xs.length)]!;
  const n = 1 + Math.floor(random() * 3);
  for (let i = 0; i < n; i++) {
    const kind = random();
    if (kind < 0.5) {
      const value = random() < 0.6 ? pick(INTERESTING) : Math.floor(random() * 4294967296);
      v.setUint32(pick(FIELD_OFFSETS), value);
    } else if (kind < 0.75 || headerOnly) {
      image[Math.floor(random() * 112)] = Math.floor(random() * 256);
    } else {
      image[112 + Math.floor(random() * 0x300)] = Math.floor(random() * 256);
    }
  }
}

describe('header validation: random damage', () => {
  let wd: Workdir;
  let base: Uint8Array;
  beforeAll(() => {
    wd = new Workdir();
    if (hasQemu) {
      wd.qemuImg('create', '-q', '-f', 'qcow2', 'b.qcow2', '64M');
      wd.qemuImg('create', '-q', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', '-o', 'lazy_refcounts=on', 'o.qcow2', '64M');
      base = wd.read('o.qcow2');
    } else {
      base = new Uint8Array(0);
    }
  });
  afterAll(() => wd.cleanup());

  it.skipIf(!hasQemu)('600 mutations: every parse succeeds or throws a BlockError, never anything else', () => {
    const random = rng(0xc0ffee);
    let accepted = 0;
    for (let i = 0; i < 600; i++) {
      const image = base.slice(0, 65536);
      mutateRandomly(image, random, false);
      const cut = random() < 0.1 ? Math.floor(random() * 200) : image.length;
      for (const options of [{}, { readWrite: true }, { check: true }, { noIO: true }]) {
        try {
          const h = parseHeader(image.subarray(0, cut), options);
          accepted++;
          try {
            parseHeader(serializeHeader(h), { ...options, noIO: true });
          } catch (e) {
            expect(e).toBeInstanceOf(BlockError);
          }
        } catch (e) {
          expect(e).toBeInstanceOf(BlockError);
        }
      }
    }
    expect(accepted).toBeGreaterThan(50);
  });

  it.skipIf(!hasQemu)('80 header mutations: accepted/refused and the message agree with qemu-img info', () => {
    const random = rng(1234);
    let compared = 0;
    for (let i = 0; i < 80; i++) {
      const image = base.slice();
      mutateRandomly(image, random, true);
      const v = dataView(image);
      // Fields whose consequences lie outside cluster 0 (snapshot table contents) or crash qemu-img info
      // (crypt method 2 without an FDE pointer, a QEMU bug) are not header validation.
      v.setUint32(60, 0);
      v.setBigUint64(64, 0n);
      if (v.getUint32(32) === 2) v.setUint32(32, 0);
      const ours = parseOutcome(image.subarray(0, 65536), { noIO: true });
      if (ours.message?.includes('2^53')) continue; // our documented limit: QEMU would take such offsets
      const file = `m${i}.qcow2`;
      wd.write(file, image);
      const q = wd.infoError(file);
      if (ours.message === null) {
        // QEMU may still fail later, reading structures outside the header; then it must not be a header error.
        if (q.status !== 0) expect(qemuOpenMessage(q.stderr)).not.toMatch(/qcow2 header|Unsupported|too large|invalid|too small|too big|too short|Image is not/);
      } else {
        expect(qemuOpenMessage(q.stderr)).toBe(ours.message);
      }
      compared++;
    }
    expect(compared).toBeGreaterThan(60);
  });
});
