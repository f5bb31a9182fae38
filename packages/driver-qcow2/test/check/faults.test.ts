import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CheckFix } from '@blockgraph/block-core';
import { Workdir, hasQemu } from '../format/qemu.js';
import { cmpFiles, copy, expectParity, expectRepairedLike } from './helpers.js';
import { ImageEditor } from './image-editor.js';

/**
 * Fault injections on qemu-made images. For every fault and every repair mode, our check and qemu-img check
 * run on identical copies: same output, stderr lines and exit code; after a repair, qemu-img finds our
 * repaired image exactly as it finds its own, and where QEMU's repair is deterministic the files are equal.
 */

type Base = 'std' | 'comp' | 'extl2' | 'rc1' | 'rc64' | 'snap' | 'bm' | 'v2' | 'small' | 'extl2comp';

interface FaultCase {
  name: string;
  base: Base;
  inject: (e: ImageEditor) => void;
  /** Lines our check (mode 'none') must print, besides matching QEMU. */
  expectLines?: string[];
  /** Repairs whose result is not byte-identical to QEMU's (with the reason). */
  notIdentical?: Partial<Record<CheckFix, string>>;
  /** QEMU rewrites persistent bitmaps when it closes the writable image: only the findings compare. */
  bitmapsRewritten?: boolean;
}

const STD = ['write -P 0xab 0 1M', 'write -P 0xcd 4M 64k', 'write -z 8M 128k'];

const cases: FaultCase[] = [
  {
    name: 'reference 4.6: refcount of data cluster 6 := 2 and 7 := 0',
    base: 'std',
    inject: (e) => e.setRefcount(6, 2).setRefcount(7, 0),
    expectLines: [
      'Leaked cluster 6 refcount=2 reference=1',
      'ERROR cluster 7 refcount=0 reference=1',
      'ERROR OFLAG_COPIED data cluster: l2_entry=8000000000060000 refcount=2',
      'ERROR OFLAG_COPIED data cluster: l2_entry=8000000000070000 refcount=0',
    ],
  },
  {
    name: 'refcount too high: leak',
    base: 'std',
    inject: (e) => e.setRefcount(9, 3),
  },
  {
    name: 'extra trailing cluster with refcount 1',
    base: 'std',
    inject: (e) => {
      e.append();
      e.setRefcount(22, 1);
    },
    expectLines: ['Leaked cluster 22 refcount=1 reference=0'],
  },
  {
    name: 'refcount of the L2 table zero: rebuild',
    base: 'std',
    inject: (e) => e.setRefcount(4, 0),
  },
  {
    name: 'refcount of the header and the L1 table wrong',
    base: 'std',
    inject: (e) => e.setRefcount(0, 5).setRefcount(3, 0),
  },
  {
    name: 'duplicate L2 entry (two guest clusters share a host cluster)',
    base: 'std',
    inject: (e) => e.setL2Entry(1, e.l2Entry(0)),
  },
  {
    name: 'duplicate L2 entry without COPIED',
    base: 'std',
    inject: (e) => e.setL2Entry(1, e.l2Entry(0) & ~(1n << 63n)).setL2Entry(0, e.l2Entry(0) & ~(1n << 63n)),
  },
  {
    name: 'L2 entry with reserved bits',
    base: 'std',
    inject: (e) => e.setL2Entry(2, e.l2Entry(2) | 0x2n | (1n << 57n)),
    expectLines: ['ERROR found l2 entry with reserved bits set: 8200000000070002'],
  },
  {
    name: 'L1 entry with reserved bits',
    base: 'std',
    inject: (e) => e.setL1Entry(0, e.l1Entry(0) | (1n << 56n)),
  },
  {
    name: 'unaligned L2 table offset',
    base: 'std',
    inject: (e) => e.setL1Entry(0, e.l1Entry(0) + 0x200n),
  },
  {
    name: 'COPIED missing on an L2 entry and on the L1 entry',
    base: 'std',
    inject: (e) => e.setL2Entry(3, e.l2Entry(3) & ~(1n << 63n)).setL1Entry(0, e.l1Entry(0) & ~(1n << 63n)),
  },
  {
    name: 'COPIED set on a zero cluster with refcount 2',
    base: 'std',
    inject: (e) => e.setRefcount(e.hostCluster(64), 2),
  },
  {
    name: 'data reference past EOF',
    base: 'std',
    inject: (e) => e.setL2Entry(20, 0x8000000010000000n),
  },
  {
    name: 'L2 table past EOF',
    base: 'std',
    inject: (e) => e.setL1Entry(0, 0x8000000020000000n),
  },
  {
    name: 'unaligned data cluster',
    base: 'std',
    inject: (e) => e.setL2Entry(3, 0x8000000000080200n),
  },
  {
    name: 'unaligned preallocated zero cluster',
    base: 'std',
    inject: (e) => e.setL2Entry(128, 0x8000000000090201n),
  },
  {
    name: 'refcount table entry with reserved bits',
    base: 'std',
    inject: (e) => e.setU64(e.reftableOffset, e.u64(e.reftableOffset) | 1n),
  },
  {
    name: 'unaligned refcount block offset',
    base: 'std',
    inject: (e) => e.setU64(e.reftableOffset, e.u64(e.reftableOffset) + 0x1000n),
    notIdentical: { all: 'the repair fails after marking the image corrupt; QEMU also clears nothing' },
  },
  {
    name: 'refcount block outside the image',
    base: 'std',
    inject: (e) => e.setU64(e.reftableOffset + 8, 0x4000000n),
  },
  {
    name: 'refcount table entry with bit 63 (reads fail like QEMU\'s block layer)',
    base: 'std',
    inject: (e) => e.setU64(e.reftableOffset, e.u64(e.reftableOffset) | (1n << 63n)),
  },
  {
    name: 'snapshot table pointer aimed at the header (garbage entries)',
    base: 'std',
    inject: (e) => e.setU32(60, 3).setU64(64, 0n),
  },
  {
    name: 'refcount block referenced twice',
    base: 'std',
    inject: (e) => e.setL2Entry(30, 0x8000000000020000n),
  },
  {
    name: 'file truncated below referenced data',
    base: 'std',
    inject: (e) => {
      e.bytes = e.bytes.slice(0, 12 * 65536);
    },
  },
  {
    name: 'compressed entry with COPIED',
    base: 'comp',
    inject: (e) => e.setL2Entry(1, e.l2Entry(1) | (1n << 63n)),
  },
  {
    name: 'compressed cluster refcount too low',
    base: 'comp',
    inject: (e) => e.setRefcount(5, 1),
  },
  {
    name: 'extended L2: allocated and zero subcluster overlap',
    base: 'extl2',
    inject: (e) => e.setL2Bitmap(0, 0x0000000100000003n),
  },
  {
    name: 'extended L2: unallocated cluster with allocation bits',
    base: 'extl2',
    inject: (e) => e.setL2Bitmap(10, 0x3n),
  },
  {
    name: 'extended L2: compressed cluster with a bitmap',
    base: 'extl2comp',
    inject: (e) => e.setL2Bitmap(0, 0x1n),
  },
  {
    name: 'extended L2: unaligned preallocated cluster',
    base: 'extl2',
    inject: (e) => {
      e.setL2Entry(40, 0x8000000000030200n);
      e.setL2Bitmap(40, 0x0000ffff00000000n);
    },
  },
  {
    name: 'refcount_bits=1: reference overflow',
    base: 'rc1',
    inject: (e) => e.setL2Entry(1, e.l2Entry(0)),
  },
  {
    name: 'refcount_bits=64: leak and corruption',
    base: 'rc64',
    inject: (e) => e.setRefcount(5, 7).setRefcount(6, 0),
  },
  {
    // 0x123456789abcdef0 is past 2^53: printed exactly, and repaired as QEMU repairs it.
    name: 'refcount_bits=64: an unreferenced trailing cluster with a refcount beyond 2^53',
    base: 'rc64',
    inject: (e) => {
      const at = e.append();
      e.setRefcount(at / e.clusterSize, 0x123456789abcdef0n);
    },
    expectLines: ['Leaked cluster 22 refcount=1311768467463790320 reference=0'],
  },
  {
    name: 'v2 image: leak and shared cluster',
    base: 'v2',
    inject: (e) => e.setRefcount(5, 2).setL2Entry(2, e.l2Entry(1)),
  },
  {
    name: '512-byte clusters: refcount zero in the second refcount block range',
    base: 'small',
    inject: (e) => e.setRefcount(300, 0),
  },
  {
    name: 'snapshot: shared data cluster refcount too low',
    base: 'snap',
    inject: (e) => e.setRefcount(e.hostCluster(2), 1),
  },
  {
    name: 'snapshot: unaligned snapshot L1 table',
    base: 'snap',
    inject: (e) => {
      const table = Number(e.u64(64));
      e.setU64(table, e.u64(table) + 0x200n);
    },
  },
  {
    name: 'snapshot: incomplete v3 entry (8 bytes of extra data)',
    base: 'snap',
    inject: (e) => {
      const table = Number(e.u64(64));
      e.setU32(table + 36, 8);
    },
  },
  {
    name: 'snapshot: too much extra data',
    base: 'snap',
    inject: (e) => {
      const table = Number(e.u64(64));
      e.setU32(table + 36, 2000);
    },
  },
  {
    name: 'snapshot table offset unaligned',
    base: 'snap',
    inject: (e) => e.setU64(64, e.u64(64) + 8n),
  },
  {
    name: 'bitmaps extension without the autoclear bit',
    base: 'bm',
    inject: (e) => e.setU64(88, 0n),
  },
  {
    name: 'bitmap data cluster leaked',
    base: 'bm',
    inject: (e) => e.setRefcount(0, 2),
    bitmapsRewritten: true,
    notIdentical: {
      leaks: 'QEMU rewrites the bitmap directory and tables when it closes a writable image',
      all: 'QEMU rewrites the bitmap directory and tables when it closes a writable image',
    },
  },
];

const d = hasQemu ? describe : describe.skip;

d('checkImage on damaged images: same findings and repairs as qemu-img check', () => {
  const w = new Workdir();
  const bases = new Map<Base, string>();
  beforeAll(() => {
    const make = (base: Base, options: string[], ...io: string[]) => {
      const name = `${base}.qcow2`;
      w.create(name, '64M', options);
      if (io.length) w.qemuIo(name, ...io);
      bases.set(base, w.path(name));
      return name;
    };
    make('std', [], ...STD);
    make('comp', [], 'write -c -P 1 0 64k', 'write -c -P 2 64k 64k', 'write -c -P 3 128k 64k', 'write -P 4 1M 64k');
    make('extl2', ['extended_l2=on'], 'write -P 1 0 4k', 'write -P 2 70k 10k', 'write -z 1M 8k', 'write -P 3 2M 64k');
    make('extl2comp', ['extended_l2=on'], 'write -c -P 1 0 64k', 'write -P 3 2M 64k');
    make('rc1', ['refcount_bits=1'], ...STD);
    make('rc64', ['refcount_bits=64'], ...STD);
    make('v2', ['compat=0.10'], 'write -P 0xab 0 1M', 'write -z 8M 128k');
    make('small', ['cluster_size=512'], 'write -P 1 0 300k');
    const snap = make('snap', [], 'write -P 1 0 256k');
    w.qemuImg('snapshot', '-c', 'snap1', snap);
    w.qemuIo(snap, 'write -P 3 64k 64k', 'write -P 4 16M 64k');
    const bm = make('bm', [], 'write -P 1 0 64k');
    w.qemuImg('bitmap', '--add', bm, 'bitmap0');
    w.qemuIo(bm, 'write -P 1 1M 64k');
  });
  afterAll(() => w.cleanup());

  cases.forEach((c, i) => {
    describe(c.name, () => {
      let image = '';
      beforeAll(() => {
        image = copy(bases.get(c.base)!, w.path(`fault${i}.qcow2`));
        const e = new ImageEditor(image);
        c.inject(e);
        e.save();
      });

      it('check', async () => {
        const { result } = await expectParity(image, 'none');
        expect(result.corruptions + result.leaks + result.checkErrors + (result.checkFailed ? 1 : 0)).toBeGreaterThan(0);
        for (const line of c.expectLines ?? []) expect(result.messages).toContain(line);
      });

      for (const fix of ['leaks', 'all'] as const) {
        it(`-r ${fix}`, async () => {
          const { ours, theirs, result } = await expectParity(image, fix);
          expectRepairedLike(ours, theirs, !c.bitmapsRewritten);
          if (!result.checkFailed && !c.notIdentical?.[fix]) {
            expect(cmpFiles(ours, theirs), 'repaired files are identical').toBe(true);
          }
        });
      }
    });
  });
});
