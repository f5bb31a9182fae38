/**
 * Benchmark input images, created once per run with QEMU's own tools (so both sides read identical files).
 * A fixture is a name (`$NAME` in workload arguments) and a function that builds the file.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

function must(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr || r.error}`);
}

const MiB = 1024 * 1024;

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
      const cmds = [];
      for (let off = 0; off < 1024 * MiB; off += 4 * MiB) cmds.push('-c', `write -q -P ${(off / (4 * MiB)) % 250 + 1} ${off} 2M`);
      // The first 4 KiB hole block that qemu-img create allocates is overwritten by the first extent.
      for (let i = 0; i < cmds.length; i += 128) must('qemu-io', ['-f', 'raw', ...cmds.slice(i, i + 128), path]);
    },
  },
};

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
