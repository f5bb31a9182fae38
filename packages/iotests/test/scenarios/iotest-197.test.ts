/**
 * Port of qemu-iotests 197 "Test case for copy-on-read into qcow2" (tests/qemu-iotests/197, 197.out; the
 * subcluster part as added upstream in 2023 with "block/io: align requests to subcluster_size").
 *
 * QEMU's `qemu-io -C` opens the image with copy-on-read; here that is a `copy-on-read` filter node above the
 * overlay (what `-drive copy-on-read=on` builds), used through a backend with qemu-io's permissions. Each qemu-io
 * invocation of the script is one Graph opened and closed again. QEMU's tools create the images and judge the
 * result, as in the script. Ported, with the same assertions:
 * - === Copy-on-read ===: a 4 GiB base with `write -P 55 3G 1k`, a qcow2 wrapper with `write -z -u 1M 64k`;
 *   a blkdebug node (QEMU's config text: inject-error on `cor_write` at sector 2048) between the COR filter and the
 *   wrapper: reading 1M+128k copies only the unallocated second cluster (rewriting the zero cluster at 1M would
 *   fail); a zero-length read; a read under 2 GiB whose cluster rounding copies more than 2 GiB of zeroes; a read
 *   picking up the data cluster at 3G; COR refused on a read-only overlay; then `rebase -u -b ""`, `qemu-io -c
 *   map` equal to 197.out, `qemu-img check` clean, `qemu-img compare` base vs wrapper identical, and (explicitly)
 *   the copied zeroes stored as zero clusters.
 * - === Partial final cluster ===: a 1 KiB compat=1.1 image; COR of 0..1k; map `1 KiB allocated`; check clean.
 * - === Copy-on-read with subclusters ===: extended_l2 wrapper with two subclusters written; COR of 30K+4K
 *   allocates exactly subclusters 14..17 (`qemu-img map` and `qemu-io -c map` as in upstream 197.out). QEMU 7.2 itself aborts here
 *   (`bdrv_co_do_copy_on_readv: Assertion 'skip_bytes < pnum' failed`, the bug the upstream test was added for):
 *   the test runs QEMU's qemu-io on a copy and compares with its map when it succeeds (QEMU ≥ 8.2), else with the
 *   golden output.
 * - The same script through `blockgraph io -C` next to `qemu-io -C` on twin images: identical output (timings
 *   filtered, program name swapped), identical maps and images; with a 6 GiB image and data at 5 GiB, so offsets
 *   pass 2^32, and a read straddling 4 GiB.
 * Deviations: the base is qcow2 (197 runs with any format; `./check -qcow2`), because reading 2 GiB of a sparse
 * raw file costs seconds here. The >2 GiB read uses PREFETCH (copy without a 2 GiB caller buffer, as block-stream
 * reads): allocating and faulting in a 2 GiB buffer costs QEMU's qemu-io ~15 s on this host too (197 skips when
 * it cannot allocate it); its data is checked by the final compare. The blkdebug step is API-only (blockgraph io
 * has no blkdebug config files).
 */
import { copyFileSync } from 'node:fs';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { BlockStatus, isAllocated, isBlockError, PERM_ALL, ReqFlag, type BlockBackend, type Graph } from '@blockgraph/block-core';
import { parseBlkdebugConfig } from '../../src/index.js';
import { describeWithTools, KiB, MiB, scratch, type Scratch } from './helpers.js';
import {
  allAllocated,
  blockgraphIo,
  checkClean,
  firstNot,
  GiB,
  imgMapFiltered,
  ioMap,
  mapJsonNoOffsets,
  newCorGraph,
  qemuImg,
  qemuIo,
  qemuIoAsBlockgraph,
  runCorStep,
} from './cor-helpers.js';

/** The blkdebug.conf 197 writes. */
const BLKDBG_CONF = '[inject-error]\nevent = "cor_write"\nsector = "2048"\n';

/** 197.out: `qemu-io -c map` of the wrapper after the copy-on-read section. */
const MAP_197 = [
  '2 GiB (0x80010000) bytes     allocated at offset 0 bytes (0x0)',
  '1023.938 MiB (0x3fff0000) bytes not allocated at offset 2 GiB (0x80010000)',
  '64 KiB (0x10000) bytes     allocated at offset 3 GiB (0xc0000000)',
  '1023.938 MiB (0x3fff0000) bytes not allocated at offset 3 GiB (0xc0010000)',
  '',
].join('\n');

/**
 * 197.out (upstream): the maps before and after the subcluster COR. The test as added in 2023 printed
 * `qemu-img map | _filter_qemu_img_map`; upstream later switched to `qemu-io -c map` (same information, no file
 * names). Both are checked.
 */
const SUBCLUSTER_IO_MAP_BEFORE = [
  '28 KiB (0x7000) bytes not allocated at offset 0 bytes (0x0)',
  '2 KiB (0x800) bytes     allocated at offset 28 KiB (0x7000)',
  '4 KiB (0x1000) bytes not allocated at offset 30 KiB (0x7800)',
  '2 KiB (0x800) bytes     allocated at offset 34 KiB (0x8800)',
  '28 KiB (0x7000) bytes not allocated at offset 36 KiB (0x9000)',
  '',
].join('\n');
const SUBCLUSTER_IO_MAP_AFTER = [
  '28 KiB (0x7000) bytes not allocated at offset 0 bytes (0x0)',
  '8 KiB (0x2000) bytes     allocated at offset 28 KiB (0x7000)',
  '28 KiB (0x7000) bytes not allocated at offset 36 KiB (0x9000)',
  '',
].join('\n');
const SUBCLUSTER_MAP_BEFORE = [
  'Offset          Length          File',
  '0               0x7000          TEST_DIR/t.IMGFMT',
  '0x7000          0x800           TEST_DIR/t.wrap.IMGFMT',
  '0x7800          0x1000          TEST_DIR/t.IMGFMT',
  '0x8800          0x800           TEST_DIR/t.wrap.IMGFMT',
  '0x9000          0x7000          TEST_DIR/t.IMGFMT',
].join('\n');
const SUBCLUSTER_MAP_AFTER = [
  'Offset          Length          File',
  '0               0x7000          TEST_DIR/t.IMGFMT',
  '0x7000          0x2000          TEST_DIR/t.wrap.IMGFMT',
  '0x9000          0x7000          TEST_DIR/t.IMGFMT',
].join('\n');

describeWithTools('iotest 197: copy-on-read into qcow2', ['qemu-img', 'qemu-io'], () => {
  let s: Scratch;
  let base: string;
  let wrap: string;

  beforeEach(() => {
    s = scratch('197');
    base = s.path('t.qcow2');
    wrap = s.path('t.wrap.qcow2');
  });

  afterEach(() => {
    s.cleanup();
  });

  /** `_make_test_img 4G` + `write -P 55 3G 1k`; the wrapper with `write -z -u 1M 64k`. */
  function prepCopyOnRead(size: string, dataAt: number): void {
    qemuImg('create', '-f', 'qcow2', base, size);
    qemuIo('-f', 'qcow2', '-c', `write -P 55 ${dataAt} 1k`, base);
    qemuImg('create', '-f', 'qcow2', '-F', 'qcow2', '-b', base, wrap);
    qemuIo('-f', 'qcow2', '-c', 'write -z -u 1M 64k', wrap);
  }

  /** `qemu-io -f qcow2 -C <wrap>`: a COR filter above the wrapper, used as qemu-io's blk_new_open() uses it. */
  function withCor<T>(fn: (blk: BlockBackend, g: Graph) => Promise<T>, image: Record<string, unknown> = {}): Promise<T> {
    return runCorStep({ driver: 'qcow2', nodeName: 'wrap', file: { driver: 'file', filename: wrap }, ...image }, fn);
  }

  it('=== Copy-on-read === (a copy-on-read filter above the overlay)', async () => {
    prepCopyOnRead('4G', 3 * GiB);

    // A read of two clusters where one is already allocated does not re-write the allocated one:
    // qemu-io -c "open -C -o driver=blkdebug,config=$BLKDBG_CONF,image.driver=qcow2 $TEST_WRAP" -c "read -P 0 1M 128k"
    const { injectError } = parseBlkdebugConfig(BLKDBG_CONF);
    await runCorStep({ driver: 'blkdebug', nodeName: 'dbg', injectError, image: { driver: 'qcow2', file: { driver: 'file', filename: wrap } } }, async (blk, g) => {
      const got = await blk.read(1 * MiB, 128 * KiB);
      expect(firstNot(got, 0)).toBe(-1);
      const top = g.getNode('dbg').filteredChild()!.node;
      expect(await isAllocated(top, 1 * MiB, 128 * KiB)).toEqual({ allocated: true, pnum: 128 * KiB });
    });

    // A zero-length read is a no-op.
    await withCor(async (blk, g) => {
      expect((await blk.read(0, 0)).length).toBe(0);
      expect((await isAllocated(g.getNode('wrap'), 0, 64 * KiB)).allocated).toBe(false);
    });
    // Under 2 GiB, but aligned so that rounding to clusters copies more than 2 GiB of zeroes: read -P 0 1k 2G-512.
    await withCor(async (blk, g) => {
      await blk.preadv(1 * KiB, 2 * GiB - 512, null, ReqFlag.PREFETCH);
      expect(await allAllocated(g.getNode('wrap'), 0, 2 * GiB + 64 * KiB)).toBe(true);
      expect((await isAllocated(g.getNode('wrap'), 2 * GiB + 64 * KiB, 64 * KiB)).allocated).toBe(false);
      expect(firstNot(await blk.read(1 * KiB, 64 * KiB), 0)).toBe(-1);
      expect(firstNot(await blk.read(2 * GiB - 64 * KiB, 64 * KiB + 512), 0)).toBe(-1);
    });
    // The final read picks up the non-zero data in the same cluster: read -P 0 3G+1k 1k.
    await withCor(async (blk) => {
      expect(firstNot(await blk.read(3 * GiB + 1024, 1024), 0)).toBe(-1);
    });

    // Copy-on-read is incompatible with read-only (qemu-io -f qcow2 -C -r).
    const ro = newCorGraph();
    try {
      await ro.addNode({ driver: 'qcow2', nodeName: 'wrap', readOnly: true, file: { driver: 'file', filename: wrap } });
      const refused = await ro.addNode({ driver: 'copy-on-read', file: 'wrap' }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(isBlockError(refused, 'EPERM')).toBe(true);
      expect(String((refused as Error).message)).toMatch(/Read-only block node 'wrap' cannot support read-write users/);
    } finally {
      await ro.close();
    }

    // Break the backing chain; the images are identical and explicit zeroes were copied as zero clusters.
    qemuImg('rebase', '-u', '-b', '', '-f', 'qcow2', wrap);
    expect(ioMap(wrap)).toBe(MAP_197);
    checkClean(base);
    checkClean(wrap);
    expect(qemuImg('compare', '-f', 'qcow2', '-F', 'qcow2', base, wrap)).toBe('Images are identical.\n');
    expect(mapJsonNoOffsets(wrap)).toEqual([
      { start: 0, length: 2 * GiB + 64 * KiB, depth: 0, present: true, zero: true, data: false },
      { start: 2 * GiB + 64 * KiB, length: GiB - 64 * KiB, depth: 0, present: false, zero: true, data: false },
      { start: 3 * GiB, length: 64 * KiB, depth: 0, present: true, zero: false, data: true },
      { start: 3 * GiB + 64 * KiB, length: GiB - 64 * KiB, depth: 0, present: false, zero: true, data: false },
    ]);
  });

  it('the cor_write injection is live: copying over sector 2048 fails with EIO', async () => {
    // 197's proof only works if the rule fires when the allocated cluster *is* rewritten. Without the zero cluster
    // at 1M the same read must copy it, and the copy fails.
    qemuImg('create', '-f', 'qcow2', base, '4G');
    qemuImg('create', '-f', 'qcow2', '-F', 'qcow2', '-b', base, wrap);
    const { injectError } = parseBlkdebugConfig(BLKDBG_CONF);
    await runCorStep({ driver: 'blkdebug', nodeName: 'dbg', injectError, image: { driver: 'qcow2', file: { driver: 'file', filename: wrap } } }, async (blk) => {
      const err = await blk.read(1 * MiB, 128 * KiB).then(
        () => null,
        (e: unknown) => e,
      );
      expect(isBlockError(err, 'EIO')).toBe(true);
      // A copy that does not touch sector 2048 goes through.
      expect(firstNot(await blk.read(2 * MiB, 64 * KiB), 0)).toBe(-1);
    });
  });

  it('=== Partial final cluster ===', async () => {
    qemuImg('create', '-f', 'qcow2', '-o', 'compat=1.1', wrap, '1024');
    await withCor(async (blk) => {
      expect(firstNot(await blk.read(0, 1024), 0)).toBe(-1);
    });
    expect(ioMap(wrap)).toBe('1 KiB (0x400) bytes     allocated at offset 0 bytes (0x0)\n');
    checkClean(wrap);
    expect(mapJsonNoOffsets(wrap)).toEqual([{ start: 0, length: 1024, depth: 0, present: true, zero: true, data: false }]);
  });

  /** Base and extended_l2 wrapper of 64K, base filled with 0xaa, subclusters 14 and 17 written in the wrapper. */
  function prepSubclusters(): void {
    qemuImg('create', '-f', 'qcow2', base, '64K');
    qemuImg('create', '-f', 'qcow2', '-o', 'extended_l2=true', '-F', 'qcow2', '-b', base, wrap, '64K');
    qemuIo('-f', 'qcow2', '-c', 'write -P 0xaa 0 64k', base);
    qemuIo('-f', 'qcow2', '-c', 'write -P 0xbb 28K 2K', '-c', 'write -P 0xcc 34K 2K', wrap);
  }

  const NAMES = (): Record<string, string> => ({ [base]: 'TEST_DIR/t.IMGFMT', [wrap]: 'TEST_DIR/t.wrap.IMGFMT' });

  /** QEMU's own run of the subcluster COR on a copy of the wrapper: its map, or null where QEMU 7.2 aborts. */
  function qemuSubclusterRun(): string | null {
    const twin = s.path('t.qemu.qcow2');
    copyFileSync(wrap, twin);
    const r = qemuIoAsBlockgraph(['-f', 'qcow2', '-C', '-c', 'read -P 0xaa 30K 4K', twin]);
    if (r.status !== 0) {
      // QEMU 7.2 (the oracle here) hits the assertion the upstream test was written for.
      expect(r.stderr).toMatch(/skip_bytes < pnum/);
      return null;
    }
    return imgMapFiltered(twin, { [base]: 'TEST_DIR/t.IMGFMT', [twin]: 'TEST_DIR/t.wrap.IMGFMT' });
  }

  it('=== Copy-on-read with subclusters ===', async () => {
    prepSubclusters();
    // Only 2 subclusters are allocated in the top image at this point.
    expect(imgMapFiltered(wrap, NAMES())).toBe(SUBCLUSTER_MAP_BEFORE);
    expect(ioMap(wrap)).toBe(SUBCLUSTER_IO_MAP_BEFORE);
    const qemuMap = qemuSubclusterRun();
    await withCor(async (blk) => {
      expect(firstNot(await blk.read(30 * KiB, 4 * KiB), 0xaa)).toBe(-1);
    });
    // 4 subclusters allocated right in the middle; the rest of the cluster stays unallocated.
    const ours = imgMapFiltered(wrap, NAMES());
    expect(ours).toBe(SUBCLUSTER_MAP_AFTER);
    expect(ioMap(wrap)).toBe(SUBCLUSTER_IO_MAP_AFTER);
    if (qemuMap !== null) expect(ours).toBe(qemuMap);
    checkClean(wrap);
    checkClean(base);
    // Content: 0xaa from the base, the two written subclusters as written.
    await withCor(async (blk) => {
      const all = await blk.read(0, 64 * KiB);
      expect(firstNot(all, 0xaa, 0, 28 * KiB)).toBe(-1);
      expect(firstNot(all, 0xbb, 28 * KiB, 30 * KiB)).toBe(-1);
      expect(firstNot(all, 0xaa, 30 * KiB, 34 * KiB)).toBe(-1);
      expect(firstNot(all, 0xcc, 34 * KiB, 36 * KiB)).toBe(-1);
      expect(firstNot(all, 0xaa, 36 * KiB, 64 * KiB)).toBe(-1);
    });
  });

  // --- the script through `blockgraph io -C`, next to `qemu-io -C` -------------------------------------------------

  /** Run the same qemu-io command line on our twin and QEMU's twin; outputs must be identical. */
  async function sideBySide(ours: string, theirs: string, args: string[]): Promise<void> {
    const mine = await blockgraphIo([...args, ours]);
    const qemu = qemuIoAsBlockgraph([...args, theirs]);
    const norm = (t: string, path: string): string => t.split(path).join('TEST_WRAP');
    expect({ status: mine.status, stdout: norm(mine.stdout, ours), stderr: norm(mine.stderr, ours) }).toEqual({
      status: qemu.status,
      stdout: norm(qemu.stdout, theirs),
      stderr: norm(qemu.stderr, theirs),
    });
  }

  it('blockgraph io -C matches qemu-io -C: copy-on-read past 4 GiB, read-only refusal, maps and images', async () => {
    prepCopyOnRead('6G', 5 * GiB);
    const twin = s.path('t.qemu.qcow2');
    copyFileSync(wrap, twin);
    const script: string[][] = [
      ['-f', 'qcow2', '-C', '-c', 'read 0 0'],
      // Rounding to clusters copies more than the read asks for.
      ['-f', 'qcow2', '-C', '-c', `read -P 0 1k ${64 * MiB - 512}`],
      // Straddling 2^32.
      ['-f', 'qcow2', '-C', '-c', `read -P 0 ${4 * GiB - 1024} 2k`],
      // Picks up the data in the same cluster, past 2^32.
      ['-f', 'qcow2', '-C', '-c', `read -P 0 ${5 * GiB + 1024} 1k`],
      ['-f', 'qcow2', '-C', '-c', `read -P 55 ${5 * GiB} 1k`],
      // Copy-on-read is incompatible with read-only.
      ['-f', 'qcow2', '-C', '-r', '-c', 'read 0 512'],
    ];
    for (const args of script) await sideBySide(wrap, twin, args);

    for (const img of [wrap, twin]) qemuImg('rebase', '-u', '-b', '', '-f', 'qcow2', img);
    expect(ioMap(wrap)).toBe(ioMap(twin));
    expect(mapJsonNoOffsets(wrap)).toEqual(mapJsonNoOffsets(twin));
    checkClean(wrap);
    checkClean(twin);
    expect(qemuImg('compare', '-f', 'qcow2', '-F', 'qcow2', wrap, twin)).toBe('Images are identical.\n');
    // The allocated ranges are base content: comparing against the base only differs where nothing was copied
    // and the base has data (none here: everything the base holds was read).
    expect(qemuImg('compare', '-f', 'qcow2', '-F', 'qcow2', base, wrap)).toBe('Images are identical.\n');
    // Zeroes were copied as zero clusters, the data cluster at 5 GiB as data.
    const dataExtents = mapJsonNoOffsets(wrap).filter((e) => e.data === true);
    expect(dataExtents).toEqual([{ start: 5 * GiB, length: 64 * KiB, depth: 0, present: true, zero: false, data: true }]);
  });

  it('blockgraph io -C matches qemu-io -C: partial final cluster', async () => {
    qemuImg('create', '-f', 'qcow2', '-o', 'compat=1.1', wrap, '1024');
    const twin = s.path('t.qemu.qcow2');
    copyFileSync(wrap, twin);
    await sideBySide(wrap, twin, ['-f', 'qcow2', '-C', '-c', 'read 0 1024']);
    expect(ioMap(wrap)).toBe('1 KiB (0x400) bytes     allocated at offset 0 bytes (0x0)\n');
    expect(ioMap(twin)).toBe(ioMap(wrap));
    checkClean(wrap);
  });

  it('blockgraph io -C: copy-on-read with subclusters', async () => {
    prepSubclusters();
    const qemuMap = qemuSubclusterRun();
    const r = await blockgraphIo(['-f', 'qcow2', '-C', '-c', 'read -P 0xaa 30K 4K', wrap]);
    expect(r).toEqual({ status: 0, stdout: 'read 4096/4096 bytes at offset 30720\n4 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)\n', stderr: '' });
    const ours = imgMapFiltered(wrap, NAMES());
    expect(ours).toBe(SUBCLUSTER_MAP_AFTER);
    expect(ioMap(wrap)).toBe(SUBCLUSTER_IO_MAP_AFTER);
    if (qemuMap !== null) expect(ours).toBe(qemuMap);
    checkClean(wrap);
  });

  it('block status of the copied range (BlockStatus of the wrapper, not the chain)', async () => {
    // What `map` shows comes from the wrapper's own block status: ZERO for copied zeroes, DATA for copied data.
    prepCopyOnRead('4G', 3 * GiB);
    await withCor(async (blk, g) => {
      await blk.read(3 * GiB - 64 * KiB, 128 * KiB);
      const top = g.backend('wrap', { perm: 0, shared: PERM_ALL });
      try {
        const z = await top.blockStatus(3 * GiB - 64 * KiB, 64 * KiB);
        expect(z.ret & (BlockStatus.ALLOCATED | BlockStatus.ZERO)).toBe(BlockStatus.ALLOCATED | BlockStatus.ZERO);
        const d = await top.blockStatus(3 * GiB, 64 * KiB);
        expect(d.ret & (BlockStatus.ALLOCATED | BlockStatus.DATA)).toBe(BlockStatus.ALLOCATED | BlockStatus.DATA);
      } finally {
        top.remove();
      }
    });
  });
});
