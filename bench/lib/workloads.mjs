/**
 * The benchmark workloads: each runs the same command line through QEMU's tool and through blockgraph.
 * Later issues add theirs here (qcow2, mirror, ...): one entry each.
 *
 * Fields:
 *   id        short name (--only selects by id)
 *   title     what it measures, for BENCHMARKS.md
 *   fixtures  images it needs (see fixtures.mjs); `$NAME` in the arguments is that image's path
 *   qemu      [program, ...args] for QEMU's side
 *   ours      [...args] for `blockgraph` (the same arguments where the tools agree)
 *   metric    'reported': the run time the tool prints ("Run completed in N seconds.", qemu-img bench);
 *             'wall': wall-clock time of the whole process
 *   before    optional: paths ($OUT) to delete before every run
 *   target    optional: the speed the issue asks for, as QEMU's time / ours (0.9 = "at least 0.9x QEMU's
 *             throughput"; "at most 1.2x QEMU's time" = 1/1.2)
 */
const BENCH_4K = ['-f', 'raw', '-t', 'writeback', '-c', '65536', '-d', '32', '-s', '4k'];
const BENCH_1M = ['-f', 'raw', '-t', 'writeback', '-c', '1024', '-d', '4', '-s', '1M'];

export const WORKLOADS = [
  {
    id: 'bench-4k-read-qd32',
    target: 0.5,
    title: 'qemu-img bench: 4 KiB reads, 32 in flight, sequential over 256 MiB (page cache warm)',
    fixtures: ['DATA256'],
    qemu: ['qemu-img', 'bench', ...BENCH_4K, '$DATA256'],
    ours: ['bench', ...BENCH_4K, '$DATA256'],
    metric: 'reported',
  },
  {
    id: 'bench-4k-write-qd32',
    title: 'qemu-img bench -w: 4 KiB writes, 32 in flight, sequential over 256 MiB (page cache)',
    fixtures: ['DATA256'],
    qemu: ['qemu-img', 'bench', '-w', ...BENCH_4K, '$DATA256'],
    ours: ['bench', '-w', ...BENCH_4K, '$DATA256'],
    metric: 'reported',
  },
  {
    id: 'bench-1m-read',
    target: 0.9,
    title: 'qemu-img bench: 1 MiB sequential reads, 4 in flight, 1024 requests (1 GiB, wrapping over the 256 MiB image; page cache warm)',
    fixtures: ['DATA256'],
    qemu: ['qemu-img', 'bench', ...BENCH_1M, '$DATA256'],
    ours: ['bench', ...BENCH_1M, '$DATA256'],
    metric: 'reported',
  },
  {
    id: 'bench-1m-write',
    target: 0.9,
    title: 'qemu-img bench -w: 1 MiB sequential writes, 4 in flight, 1024 requests (1 GiB, wrapping over the 256 MiB image; page cache)',
    fixtures: ['DATA256'],
    qemu: ['qemu-img', 'bench', '-w', ...BENCH_1M, '$DATA256'],
    ours: ['bench', '-w', ...BENCH_1M, '$DATA256'],
    metric: 'reported',
  },
  {
    id: 'convert-raw-1g-half',
    title: 'qemu-img convert raw → raw of a 1 GiB image, half data (2 MiB extents) and half holes',
    fixtures: ['HALF1G'],
    qemu: ['qemu-img', 'convert', '-f', 'raw', '-O', 'raw', '$HALF1G', '$OUT'],
    ours: ['convert', '-f', 'raw', '-O', 'raw', '$HALF1G', '$OUT'],
    metric: 'wall',
    before: ['$OUT'],
  },
  {
    id: 'mirror-raw-1g-half',
    title:
      'background mirror of a 1 GiB raw image (half data, half holes) to a new raw image: `blockgraph mirror` against qemu-storage-daemon blockdev-mirror over QMP (time from starting the job to completion)',
    fixtures: ['HALF1G'],
    qemu: ['node', 'bench/lib/qsd-mirror.mjs', '-f', 'raw', '$HALF1G', '$OUT'],
    ours: ['mirror', '-f', 'raw', '$HALF1G', '$OUT'],
    metric: 'reported',
    before: ['$OUT'],
  },
];
