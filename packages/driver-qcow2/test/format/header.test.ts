import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  QEMU_FEATURE_TABLE,
  applyHeaderPatch,
  headerGeometry,
  incompatibleFeaturesPatch,
  l1TablePatch,
  parseHeader,
  peekClusterSize,
  refcountTablePatch,
  serializeHeader,
  snapshotTablePatch,
  unknownAutoclearFeatures,
  type Qcow2Header,
} from '../../src/format/index.js';
import { Workdir, dataView, hasQemu } from './qemu.js';
import { minimalHeader } from './fixtures.js';

function cluster0(wd: Workdir, name: string): Uint8Array {
  const file = wd.read(name);
  return file.subarray(0, peekClusterSize(file));
}

describe.skipIf(!hasQemu)('header: qemu-img 7.2 images', () => {
  let wd: Workdir;
  beforeAll(() => {
    wd = new Workdir();
    wd.create('base.qcow2', '64M');
    wd.qemuImg('create', '-q', '-f', 'raw', 'base.raw', '64M');
  });
  afterAll(() => wd.cleanup());

  // Every option that changes cluster 0; each image is parsed and re-serialized.
  const matrix: Array<[name: string, options: string[], extra?: string[], after?: (wd: Workdir, f: string) => void]> = [
    ['default', []],
    ['compat010', ['compat=0.10']],
    ['compat010-512', ['compat=0.10', 'cluster_size=512']],
    ['c512', ['cluster_size=512']],
    ['c4k', ['cluster_size=4k']],
    ['c8k', ['cluster_size=8k']],
    ['c64k', ['cluster_size=64k']],
    ['c2M', ['cluster_size=2M']],
    ['rc1', ['refcount_bits=1']],
    ['rc2', ['refcount_bits=2']],
    ['rc4', ['refcount_bits=4']],
    ['rc8', ['refcount_bits=8']],
    ['rc32', ['refcount_bits=32']],
    ['rc64', ['refcount_bits=64']],
    ['el2', ['extended_l2=on']],
    ['el2-16k', ['extended_l2=on', 'cluster_size=16k']],
    ['zstd', ['compression_type=zstd']],
    ['lazy', ['lazy_refcounts=on']],
    ['all-v3', ['extended_l2=on', 'compression_type=zstd', 'lazy_refcounts=on', 'refcount_bits=64', 'cluster_size=2M']],
    ['overlay', [], ['-b', 'base.qcow2', '-F', 'qcow2']],
    ['overlay-raw', [], ['-b', 'base.raw', '-F', 'raw']],
    ['overlay-v2', ['compat=0.10'], ['-b', 'base.qcow2', '-F', 'qcow2']],
    ['overlay-512', ['cluster_size=512'], ['-b', 'base.qcow2', '-F', 'qcow2']],
    ['overlay-4k', ['cluster_size=4k'], ['-b', 'base.qcow2', '-F', 'qcow2']],
    ['df', ['data_file=df.raw']],
    ['df-raw', ['data_file=df2.raw', 'data_file_raw=on']],
    ['bm', [], [], (w, f) => w.qemuImg('bitmap', '--add', f, 'bitmap0')],
    ['bm2', ['cluster_size=4k'], [], (w, f) => {
      w.qemuImg('bitmap', '--add', '-g', '512', f, 'first');
      w.qemuImg('bitmap', '--add', '--disable', f, 'a-second-bitmap');
    }],
    ['bm-overlay', [], ['-b', 'base.qcow2', '-F', 'qcow2'], (w, f) => w.qemuImg('bitmap', '--add', f, 'b')],
    ['snap', [], [], (w, f) => w.qemuImg('snapshot', '-c', 'snap1', f)],
  ];

  it.each(matrix)('%s: parse + serialize reproduces cluster 0 byte for byte', (name, options, extra = [], after) => {
    const file = `${name}.qcow2`;
    wd.create(file, '64M', options, extra);
    after?.(wd, file);
    const original = cluster0(wd, file);
    const header = parseHeader(original, { readWrite: true });
    const again = serializeHeader(header);
    expect(again.length).toBe(original.length);
    expect(Buffer.from(again).equals(Buffer.from(original))).toBe(true);
  });

  it('default image: the measured layout (reference §4.1)', () => {
    wd.create('std.qcow2', '64M');
    const h = parseHeader(cluster0(wd, 'std.qcow2'));
    expect(h).toMatchObject({
      version: 3,
      clusterBits: 16,
      size: 64 * 1024 * 1024,
      cryptMethod: 0,
      l1Size: 1,
      l1TableOffset: 0x30000,
      refcountTableOffset: 0x10000,
      refcountTableClusters: 1,
      nbSnapshots: 0,
      snapshotsOffset: 0,
      incompatibleFeatures: 0n,
      compatibleFeatures: 0n,
      autoclearFeatures: 0n,
      refcountOrder: 4,
      headerLength: 112,
      compressionType: 0,
      backingFile: null,
    });
    expect(h.extensions.featureTable).toEqual(QEMU_FEATURE_TABLE);
    expect(h.extensions.unknown).toEqual([]);
    const g = headerGeometry(h);
    expect(g).toMatchObject({ clusterSize: 65536, l2Entries: 8192, refcountBlockEntries: 32768, csizeShift: 54 });
  });

  it('option-specific fields', () => {
    const get = (f: string) => parseHeader(cluster0(wd, f));
    expect(get('compat010.qcow2')).toMatchObject({ version: 2, headerLength: 72, refcountOrder: 4 });
    expect(get('compat010.qcow2').extensions.featureTable).toBeNull();
    // No feature table at 4 KiB and below: the end marker sits right after the 112-byte header.
    expect(get('c4k.qcow2').extensions.featureTable).toBeNull();
    expect(get('c512.qcow2').extensions.featureTable).toBeNull();
    expect(get('c8k.qcow2').extensions.featureTable).toEqual(QEMU_FEATURE_TABLE);
    expect(get('c4k.qcow2')).toMatchObject({ l1Size: 32, refcountTableOffset: 0x1000, l1TableOffset: 0x3000 });
    expect(get('rc1.qcow2').refcountOrder).toBe(0);
    expect(get('rc64.qcow2').refcountOrder).toBe(6);
    expect(get('el2.qcow2').incompatibleFeatures).toBe(INCOMPAT_EXTL2);
    expect(headerGeometry(get('el2.qcow2'))).toMatchObject({ l2EntrySize: 16, l2Entries: 4096, subclusterSize: 2048 });
    expect(get('zstd.qcow2')).toMatchObject({ compressionType: 1, incompatibleFeatures: INCOMPAT_COMPRESSION });
    expect(get('lazy.qcow2').compatibleFeatures).toBe(COMPAT_LAZY_REFCOUNTS);

    const overlay = get('overlay.qcow2');
    expect(overlay).toMatchObject({ backingFile: 'base.qcow2', backingFileOffset: 0x210, backingFileSize: 10 });
    expect(overlay.extensions.backingFormat).toBe('qcow2');
    expect(get('overlay-raw.qcow2').extensions.backingFormat).toBe('raw');

    const df = get('df-raw.qcow2');
    expect(df.incompatibleFeatures).toBe(INCOMPAT_DATA_FILE);
    expect(df.autoclearFeatures).toBe(AUTOCLEAR_DATA_FILE_RAW);
    expect(df.extensions.dataFile).toBe('df2.raw');

    const bm = get('bm.qcow2');
    expect(bm.autoclearFeatures).toBe(AUTOCLEAR_BITMAPS);
    expect(bm.extensions.bitmaps).toMatchObject({ nbBitmaps: 1, directorySize: 32 });
    expect(bm.extensions.bitmaps!.directoryOffset % 65536).toBe(0);
    expect(get('bm2.qcow2').extensions.bitmaps!.nbBitmaps).toBe(2);

    const snap = get('snap.qcow2');
    expect(snap.nbSnapshots).toBe(1);
    expect(snap.snapshotsOffset).toBeGreaterThan(0);
  });

  /** Build cluster 0 with our serializer from a modified header, write it, let QEMU rewrite it. */
  function qemuRewrite(name: string, mutate: (h: Qcow2Header) => void, raw?: (c: Uint8Array) => void): {
    before: Uint8Array;
    after: Uint8Array;
  } {
    const file = `${name}.qcow2`;
    wd.create(file, '64M');
    const image = wd.read(file);
    const h = parseHeader(image.subarray(0, 65536));
    mutate(h);
    const c0 = serializeHeader(h);
    raw?.(c0);
    image.set(c0, 0);
    wd.write(file, image);
    // A read-write open with unknown autoclear bits set makes QEMU rewrite the whole header.
    wd.qemuIo(file, 'quit');
    return { before: c0, after: cluster0(wd, file) };
  }

  it('unknown header fields, unknown extensions and unknown autoclear bits: same rewrite as QEMU', () => {
    const { before, after } = qemuRewrite('unknown', (h) => {
      h.unknownHeaderFields = new TextEncoder().encode('FUTURE!!FIELDS..');
      h.autoclearFeatures |= 1n << 17n;
      h.extensions.unknown = [
        { type: 0x11111111, data: new TextEncoder().encode('hello') },
        { type: 0x22222222, data: new Uint8Array(16).fill(0xee) },
        { type: 0x33333333, data: new Uint8Array(0) },
      ];
    });
    const parsed = parseHeader(before, { readWrite: true });
    expect(parsed.headerLength).toBe(128);
    expect(new TextDecoder().decode(parsed.unknownHeaderFields)).toBe('FUTURE!!FIELDS..');
    // We wrote them in reverse (QEMU's rewrite order); discovery order is file order.
    expect(parsed.extensions.unknown.map((u) => u.type)).toEqual([0x33333333, 0x22222222, 0x11111111]);
    expect(unknownAutoclearFeatures(parsed)).toBe(1n << 17n);

    parsed.autoclearFeatures &= ~unknownAutoclearFeatures(parsed);
    const ours = serializeHeader(parsed);
    expect(Buffer.from(ours).equals(Buffer.from(after))).toBe(true);
    expect(parseHeader(after).extensions.unknown.map((u) => u.type)).toEqual([0x11111111, 0x22222222, 0x33333333]);
  });

  it('a v3 header of 104 bytes (no compression_type field) is rewritten with 112', () => {
    const { before, after } = qemuRewrite(
      'short',
      (h) => {
        h.autoclearFeatures |= 1n << 9n;
      },
      (c) => {
        // header_length 104, extensions moved to 104 (QEMU never writes this, older writers did).
        const dv = dataView(c);
        c.copyWithin(104, 112, 112 + 8 + 384 + 8);
        c.fill(0, 104 + 8 + 384 + 8, 112 + 8 + 384 + 8);
        dv.setUint32(100, 104);
      },
    );
    const parsed = parseHeader(before, { readWrite: true });
    expect(parsed.headerLength).toBe(104);
    expect(parsed.compressionType).toBe(0);
    expect(parsed.extensions.featureTable).toEqual(QEMU_FEATURE_TABLE);
    parsed.autoclearFeatures &= ~unknownAutoclearFeatures(parsed);
    expect(Buffer.from(serializeHeader(parsed)).equals(Buffer.from(after))).toBe(true);
  });

  it('a bitmaps extension without the autoclear bit is ignored and dropped like QEMU does', () => {
    wd.create('bmlost.qcow2', '64M');
    wd.qemuImg('bitmap', '--add', 'bmlost.qcow2', 'x');
    const image = wd.read('bmlost.qcow2');
    dataView(image).setBigUint64(88, 0n); // clear autoclear "bitmaps"
    wd.write('bmlost.qcow2', image);
    const parsed = parseHeader(image.subarray(0, 65536), { readWrite: true });
    expect(parsed.extensions.bitmaps).toBeNull();
    expect(parsed.extensions.bitmapsInconsistent).toBe(true);
    wd.qemuIo('bmlost.qcow2', 'quit');
    expect(Buffer.from(serializeHeader(parsed)).equals(Buffer.from(cluster0(wd, 'bmlost.qcow2')))).toBe(true);
  });

  it('dirty bit patch = what QEMU writes in lazy-refcounts mode', () => {
    wd.create('lazyw.qcow2', '64M', ['lazy_refcounts=on']);
    const clean = cluster0(wd, 'lazyw.qcow2').slice();
    // abort: leave the image as a crash would, dirty bit set.
    wd.qemuIoCrash('lazyw.qcow2', 'write -P 0x11 0 64k', 'abort');
    const dirty = cluster0(wd, 'lazyw.qcow2');
    const h = parseHeader(clean);
    const patch = incompatibleFeaturesPatch(h.incompatibleFeatures | INCOMPAT_DIRTY);
    expect(patch.offset).toBe(72);
    applyHeaderPatch(clean, patch);
    expect(Buffer.from(clean).equals(Buffer.from(dirty))).toBe(true);
    expect(parseHeader(dirty).incompatibleFeatures & INCOMPAT_DIRTY).toBe(INCOMPAT_DIRTY);
  });

  it('L1, refcount table and snapshot table patches equal a full rewrite of the changed header', () => {
    const c = cluster0(wd, 'overlay.qcow2').slice();
    const h = parseHeader(c);
    const patches = [
      l1TablePatch(70000, 0x1_0000_0000_0000),
      refcountTablePatch(0x7_0000_0000, 3),
      snapshotTablePatch(2, 0x123_4567_0000),
    ];
    expect(patches.map((p) => [p.offset, p.bytes.length])).toEqual([[36, 12], [48, 12], [60, 12]]);
    patches.forEach((p) => applyHeaderPatch(c, p));
    const expected = serializeHeader({
      ...h,
      l1Size: 70000,
      l1TableOffset: 0x1_0000_0000_0000,
      refcountTableOffset: 0x7_0000_0000,
      refcountTableClusters: 3,
      nbSnapshots: 2,
      snapshotsOffset: 0x123_4567_0000,
    });
    expect(Buffer.from(c).equals(Buffer.from(expected))).toBe(true);
  });
});

describe('header: serialization limits', () => {
  it('refuses to overflow the header cluster (ENOSPC) like qcow2_update_header', () => {
    const h = parseHeader(serializeHeader(minimalHeader(9)));
    h.backingFile = 'x'.repeat(400);
    expect(() => serializeHeader(h)).toThrowError(expect.objectContaining({ code: 'ENOSPC' }));
    h.backingFile = 'x'.repeat(392); // 512 - 112 - 8
    expect(serializeHeader(h).length).toBe(512);
  });

  it('writes the size rounded down to 512 bytes, as QEMU keeps it in sectors', () => {
    const h = minimalHeader(16);
    h.size = 1000;
    h.l1Size = 1;
    expect(parseHeader(serializeHeader(h)).size).toBe(512);
  });
});
