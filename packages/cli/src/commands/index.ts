/**
 * The subcommands. Each lives in its own module, loaded only when it runs (the CLI starts fast); the table
 * holds what `--help` needs without loading anything. A new subcommand (mirror, storage-daemon, ...) is one
 * module exporting `run` plus one entry here.
 */
import type { Ctx } from '../lib/context.js';

export interface CommandModule {
  run(ctx: Ctx, args: string[]): Promise<number>;
}

export interface CommandEntry {
  name: string;
  /** One line, qemu-img style. */
  synopsis: string;
  summary: string;
  /** Longer help for `blockgraph <command> --help`. */
  details?: string;
  load(): Promise<CommandModule>;
}

export const COMMANDS: readonly CommandEntry[] = [
  {
    name: 'amend',
    synopsis: 'amend [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename',
    summary: 'change format-specific options of an existing image',
    details: "  -o help lists the options the format can change.",
    load: () => import('./amend.js'),
  },
  {
    name: 'bench',
    synopsis:
      'bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename',
    summary: 'run a simple sequential I/O benchmark on an image',
    details: [
      '  -c count         number of requests (default 75000)',
      '  -d depth         requests in flight (default 64)',
      '  -s buffer_size   bytes per request (default 4k)',
      '  -S step_size     distance between request offsets (default: buffer_size)',
      '  -o offset        first offset (default 0)',
      '  -w               write instead of read (pattern --pattern, default 0xa5)',
      '  --flush-interval=N  flush after every N writes; --no-drain: do not wait for requests before flushing',
      '  -t cache         cache mode (default writeback)',
    ].join('\n'),
    load: () => import('./bench.js'),
  },
  {
    name: 'check',
    synopsis: 'check [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename',
    summary: 'check an image for consistency (and repair it with -r)',
    details: [
      '  exit codes: 0 no errors, 1 check not completed (an error occurred), 2 corruptions found,',
      '              3 only leaked clusters found, 63 the format does not support checks',
    ].join('\n'),
    load: () => import('./check.js'),
  },
  {
    name: 'commit',
    synopsis: 'commit [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename',
    summary: "commit an overlay's data into its backing file",
    details: [
      '  -b base   commit into this image of the backing chain instead of the backing file (implies -d)',
      '  -d        keep the overlay as it is (by default it is emptied afterwards)',
      '  -r rate   bytes per second',
    ].join('\n'),
    load: () => import('./commit.js'),
  },
  {
    name: 'compare',
    synopsis: 'compare [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2',
    summary: 'compare the guest-visible contents of two images',
    details: '  exit codes: 0 identical, 1 different, 2 error opening an image, 3 allocation query failed, 4 read error\n  -s strict: images of different size or allocation are different',
    load: () => import('./compare.js'),
  },
  {
    name: 'convert',
    synopsis:
      'convert [--image-opts] [--target-image-opts] [--target-is-zero] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] [-m num_coroutines] [-W] filename [filename2 [...]] output_filename',
    summary: 'copy (and concatenate) images into a new image of any format',
    details: [
      '  -S sparse_size   runs of zeroes at least this long are left unallocated (default 4k, 0 = fully allocate)',
      '  -m num           requests in flight (default 8, 1..16); -W allows out-of-order writes',
      '  -c               compress the target (formats that support it, e.g. qcow2)',
      '  -n               use an existing target (not created)',
    ].join('\n'),
    load: () => import('./convert.js'),
  },
  {
    name: 'create',
    synopsis: 'create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]',
    summary: 'create a new image',
    details: "  size takes k, M, G, T, P or E suffixes; -o help lists the format's options",
    load: () => import('./create.js'),
  },
  {
    name: 'dd',
    synopsis: 'dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output',
    summary: 'copy an image (or a part of it) into a new image, dd style',
    details: '  bs (default 512), count and skip take k, M, G, T, P or E suffixes; the output is created with format -O (default raw)',
    load: () => import('./dd.js'),
  },
  {
    name: 'info',
    synopsis: 'info [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename',
    summary: 'show information about an image',
    load: () => import('./info.js'),
  },
  {
    name: 'io',
    synopsis: 'io [-f fmt] [-r] [-U] [-C] [-n] [-t cache] [-d discard] [--image-opts] [-c command]... filename',
    summary: "run qemu-io commands on an image (read, write, map, alloc, ...; 'io -c help' lists them)",
    load: () => import('./io.js'),
  },
  {
    name: 'map',
    synopsis: 'map [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename',
    summary: 'show the allocation map of an image',
    load: () => import('./map.js'),
  },
  {
    name: 'measure',
    synopsis: 'measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--image-opts] [-f fmt] filename]',
    summary: 'compute the file size a new image needs',
    load: () => import('./measure.js'),
  },
  {
    name: 'mirror',
    synopsis:
      'mirror [--image-opts] [-f fmt] [-O output_fmt] [--sync full|top|none] [--copy-mode background|write-blocking|read-write-blocking] [--speed N] [--granularity N] [--buf-size N] [-n] [-p] [-q] source target',
    summary: 'copy an image into a new (or, with -n, existing) target through the mirror job',
    details: [
      '  --sync full|top|none     what to copy (default full; top: only the top image, the target gets its backing file)',
      '  --copy-mode MODE         background (default), write-blocking or read-write-blocking',
      '  --speed N                bytes per second (0 = unlimited); --granularity, --buf-size as blockdev-mirror',
      '  -n                       the target exists already (not created)',
      '  -p                       show progress',
    ].join('\n'),
    load: () => import('./mirror.js'),
  },
  {
    name: 'rebase',
    synopsis: 'rebase [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename',
    summary: 'change the backing file of an image',
    load: () => import('./rebase.js'),
  },
  {
    name: 'resize',
    synopsis: 'resize [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size',
    summary: 'grow or shrink an image',
    load: () => import('./resize.js'),
  },
  {
    name: 'snapshot',
    synopsis: 'snapshot [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename',
    summary: 'list, create, apply or delete internal snapshots',
    load: () => import('./snapshot.js'),
  },
];

export function findCommand(name: string): CommandEntry | undefined {
  return COMMANDS.find((c) => c.name === name);
}
