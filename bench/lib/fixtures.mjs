/**
 * Benchmark input images, created once per run with QEMU's own tools (so both sides read identical files).
 * A fixture is a name (`$NAME` in workload arguments) and a function that builds the file.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';

function must(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr || r.error}`);
}

const MiB = 1024 * 1024;

export { must };

export const FIXTURES = {
  /** 256 MiB raw, every byte written (no holes). */
  DATA256: {
    file: 'data256.raw',
    describe: '256 MiB raw image, fully written (pattern 0x5a)',
    build(path) {
      must('qemu-img', ['create', '-q', '-f', 'raw', path, '256M']);
      must('qemu-io', ['-f', 'raw', '-c', 'write -q -P 0x5a 0 256M', path]);
    },
  },
  /** 1 GiB raw: 2 MiB of data, 2 MiB hole, repeated (512 MiB data, 512 MiB holes). */
  HALF1G: {
    file: 'half1g.raw',
    describe: '1 GiB raw image: 2 MiB data extents alternating with 2 MiB holes (half data, half holes)',
    build(path) {
      must('qemu-img', ['create', '-q', '-f', 'raw', path, '1G']);
      // The first 4 KiB hole block that qemu-img create allocates is overwritten by the first extent.
      writeHalf('raw', path);
    },
  },
};

/** 1 GiB of 2 MiB data extents alternating with 2 MiB holes, as qemu-io commands (HALF1G and QHALF1G). */
function writeHalf(fmt, path) {
  const cmds = [];
  for (let off = 0; off < 1024 * MiB; off += 4 * MiB) cmds.push('-c', `write -q -P ${(off / (4 * MiB)) % 250 + 1} ${off} 2M`);
  for (let i = 0; i < cmds.length; i += 128) must('qemu-io', ['-f', fmt, ...cmds.slice(i, i + 128), path]);
}

Object.assign(FIXTURES, {
  /** 1 GiB qcow2 (64 KiB clusters), every cluster written (allocated, contiguous in the file). */
  Q1G: {
    file: 'q1g.qcow2',
    describe: '1 GiB qcow2 image (64 KiB clusters), fully written (pattern 0x5a), clusters in guest order',
    build(path) {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', path, '1G']);
      must('qemu-io', ['-f', 'qcow2', '-c', 'write -q -P 0x5a 0 1G', path]);
    },
  },
  /** 1 GiB qcow2: 2 MiB of data, 2 MiB unallocated, repeated (512 MiB data, 512 MiB unallocated). */
  QHALF1G: {
    file: 'qhalf1g.qcow2',
    describe: '1 GiB qcow2 image (64 KiB clusters): 2 MiB data extents alternating with 2 MiB unallocated (half data, half unallocated)',
    build(path) {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', path, '1G']);
      writeHalf('qcow2', path);
    },
  },
});

Object.assign(FIXTURES, {
  /**
   * 100 GiB sparse qcow2: one 64 KiB cluster written every 256 MiB (400 clusters, 25 MiB of data), so that
   * every one of its 200 L2 tables exists and random reads over the whole disk walk all of them.
   */
  QSPARSE100G: {
    file: 'qsparse100g.qcow2',
    describe: '100 GiB sparse qcow2 image (64 KiB clusters): one 64 KiB cluster of data every 256 MiB (every L2 table allocated)',
    build(path) {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', path, '100G']);
      const cmds = [];
      for (let off = 0; off < 100 * 1024 * MiB; off += 256 * MiB) cmds.push('-c', `write -q -P 0x6b ${off} 64k`);
      for (let i = 0; i < cmds.length; i += 256) must('qemu-io', ['-f', 'qcow2', ...cmds.slice(i, i + 256), path]);
    },
  },
  /**
   * A damaged 8 MiB qcow2 (64-bit refcounts): l1_size patched from 1 to 65535, so the L1 table runs on over the
   * data clusters behind it and every 8 bytes of data (0x11.., 0x44..) become an L2 table pointer, far past EOF.
   * Found by the corruption fuzz: our check took 7x qemu-img's time on it.
   */
  QGARBAGEL1: {
    file: 'qgarbagel1.qcow2',
    describe: '8 MiB qcow2 image with l1_size inflated to 65535 (the L1 table overlaps 6 data clusters)',
    build(path) {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536,refcount_bits=64', path, '8M']);
      must('qemu-io', ['-f', 'qcow2', '-c', 'write -q -P 0x11 0 64k', '-c', 'write -q -P 0x44 5M 300k', path]);
      const fd = openSync(path, 'r+');
      try {
        writeSync(fd, Buffer.from([0, 0, 0xff, 0xff]), 0, 4, 36);
      } finally {
        closeSync(fd);
      }
    },
  },
  /**
   * A damaged 1 GiB qcow2: the L2 table of its one written cluster overwritten with 8192 copies of a preallocated
   * zero entry at the unaligned offset 0x10200. `check -r all` rewrites the entries one by one, each with a write
   * and a flush, as QEMU does. Found by the check-repair fuzz: our repair took 2.2x qemu-img's time on it.
   */
  QGARBAGEL2: {
    file: 'qgarbagel2.qcow2',
    describe: '1 GiB qcow2 image whose one L2 table holds 8192 preallocated zero entries at an unaligned offset',
    build(path) {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', path, '1G']);
      must('qemu-io', ['-f', 'qcow2', '-c', 'write -q -P 1 0 64k', path]);
      const fd = openSync(path, 'r+');
      try {
        const l1 = Buffer.alloc(8);
        readSync(fd, l1, 0, 8, 40);
        const l1Entry = Buffer.alloc(8);
        readSync(fd, l1Entry, 0, 8, Number(l1.readBigUInt64BE(0)));
        const l2Offset = Number(l1Entry.readBigUInt64BE(0) & 0x00fffffffffffe00n);
        const table = Buffer.alloc(65536);
        for (let i = 0; i < 8192; i++) table.writeBigUInt64BE(0x10201n, i * 8);
        writeSync(fd, table, 0, table.length, l2Offset);
      } finally {
        closeSync(fd);
      }
    },
  },
  /** 1 GiB empty qcow2: the same request loop with (almost) nothing to cache, for the fixed memory overhead. */
  QEMPTY1G: {
    file: 'qempty1g.qcow2',
    describe: '1 GiB empty qcow2 image (64 KiB clusters, nothing allocated)',
    build(path) {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', path, '1G']);
    },
  },
});

export function buildFixtures(names, dir, log) {
  const paths = {};
  for (const name of names) {
    const f = FIXTURES[name];
    if (!f) throw new Error(`unknown fixture ${name}`);
    const path = join(dir, f.file);
    const t0 = Date.now();
    f.build(path);
    log(`  fixture ${name}: ${f.describe} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    paths[name] = path;
  }
  return paths;
}
