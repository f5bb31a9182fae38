/**
 * `blockgraph commit` against `qemu-img commit` (QEMU 7.2): an active commit job copies what the overlay (and,
 * with -b, the images between) holds into the base, then the overlay is emptied unless -d or -b. Each case runs
 * both tools on their own copies of chains made by qemu-img: exit code, output and messages must be equal, and
 * every image file must come out byte-identical to QEMU's (the base's new clusters, its growth, the emptied
 * overlay's rebuilt metadata).
 *
 * qemu-img's own result is not always the same: its mirror coroutines can finish in another order on a loaded
 * machine and allocate the base's clusters in that order (snap.qcow2 gave two different bases in 5 runs on an
 * idle machine). When a file differs from the first QEMU run, QEMU runs again on fresh copies, up to 8 times:
 * ours must be one of the files QEMU makes.
 */
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, must, normaliseStderr, qcow2Requirement, run, tempDir, twin } from './helpers.js';

const need = qcow2Requirement();

const create = (file: string, size: string | null, ...opts: string[]) =>
  must('qemu-img', 'create', '-q', '-f', file.endsWith('.raw') ? 'raw' : 'qcow2', ...opts, file, ...(size ? [size] : []));
const io = (file: string, fmt: string, ...cmds: string[]) => must('qemu-io', '-f', fmt, ...cmds.flatMap((c) => ['-c', c]), file);

const chains = cachedSetup((d) => {
  const at = (n: string) => join(d, n);
  // base (1M) <- top (2M): the base grows.
  create(at('base.qcow2'), '1M');
  io(at('base.qcow2'), 'qcow2', 'write -P 0x11 0 512k');
  create(at('top.qcow2'), '2M', '-b', 'base.qcow2', '-F', 'qcow2');
  io(at('top.qcow2'), 'qcow2', 'write -P 0x22 64k 64k', 'write -z 256k 64k', 'write -P 0x33 1536k 4k', 'discard 320k 64k');
  // base3 <- mid3 <- top3, 4k clusters in the middle, extended L2 on top.
  create(at('base3.qcow2'), '4M');
  io(at('base3.qcow2'), 'qcow2', 'write -P 0x41 0 4M');
  create(at('mid3.qcow2'), null, '-o', 'cluster_size=4k', '-b', 'base3.qcow2', '-F', 'qcow2');
  io(at('mid3.qcow2'), 'qcow2', 'write -P 0x42 4k 8k', 'write -z 1M 64k', 'write -P 0x43 3M 100k');
  create(at('top3.qcow2'), null, '-o', 'extended_l2=on', '-b', 'mid3.qcow2', '-F', 'qcow2');
  io(at('top3.qcow2'), 'qcow2', 'write -P 0x44 6k 2k', 'write -P 0x45 2M 200k', 'write -z 3M 32k');
  // A raw base under a v2 overlay (emptied by discarding every cluster, QEMU's fallback).
  create(at('rbase.raw'), '1M');
  io(at('rbase.raw'), 'raw', 'write -P 0x51 0 1M');
  create(at('v2.qcow2'), null, '-o', 'compat=0.10', '-b', 'rbase.raw', '-F', 'raw');
  io(at('v2.qcow2'), 'qcow2', 'write -P 0x52 100k 100k', 'write -z 512k 64k');
  // An overlay with an internal snapshot (emptied by discarding too), and compressed clusters.
  create(at('sbase.qcow2'), '1M');
  create(at('snap.qcow2'), null, '-b', 'sbase.qcow2', '-F', 'qcow2');
  io(at('snap.qcow2'), 'qcow2', 'write -P 0x61 0 128k');
  must('qemu-img', 'snapshot', '-c', 's', at('snap.qcow2'));
  io(at('snap.qcow2'), 'qcow2', 'write -P 0x62 64k 128k');
  create(at('cbase.qcow2'), '1M');
  io(at('cbase.qcow2'), 'qcow2', 'write -P 0x71 0 1M');
  create(at('comp.qcow2'), null, '-b', 'cbase.qcow2', '-F', 'qcow2');
  io(at('comp.qcow2'), 'qcow2', 'write -c -P 0x72 0 64k', 'write -c -P 0x73 256k 128k');
  // A smaller overlay over a larger base; and an image without a backing file.
  create(at('big.qcow2'), '2M');
  io(at('big.qcow2'), 'qcow2', 'write -P 0x81 1M 1M');
  create(at('small.qcow2'), '1M', '-b', 'big.qcow2', '-F', 'qcow2');
  io(at('small.qcow2'), 'qcow2', 'write -P 0x82 0 64k');
  create(at('alone.qcow2'), '1M');
  // Emptying allocates L2 tables where the overlay has none, as QEMU's discard does: an empty v2 overlay, and one
  // with a snapshot and 2 KiB clusters (many L1 entries).
  create(at('v2empty.qcow2'), null, '-o', 'compat=0.10', '-b', 'base.qcow2', '-F', 'qcow2');
  create(at('snapsmall.qcow2'), null, '-o', 'cluster_size=2048', '-b', 'base.qcow2', '-F', 'qcow2');
  io(at('snapsmall.qcow2'), 'qcow2', 'write -P 0xa1 300k 4k');
  must('qemu-img', 'snapshot', '-c', 's', at('snapsmall.qcow2'));
});

/** An overlay in a subdirectory, its backing file named relative to it (made per case: the template is flat). */
function subOverlay(d: string): void {
  mkdirSync(join(d, 'sub'));
  create(join(d, 'sub', 'over.qcow2'), null, '-b', '../base.qcow2', '-F', 'qcow2');
  io(join(d, 'sub', 'over.qcow2'), 'qcow2', 'write -P 0x91 0 64k');
}

const CASES: string[][] = [
  ['top.qcow2'],
  ['-d', 'top.qcow2'],
  ['-q', 'top.qcow2'],
  ['-p', 'top.qcow2'],
  ['-t', 'none', '-r', '1G', 'top.qcow2'],
  ['-f', 'qcow2', 'top3.qcow2'],
  ['-b', 'base3.qcow2', 'top3.qcow2'],
  ['-b', 'mid3.qcow2', 'top3.qcow2'],
  ['-b', 'top3.qcow2', 'top3.qcow2'],
  ['-b', 'nosuch.qcow2', 'top3.qcow2'],
  ['v2.qcow2'],
  ['v2empty.qcow2'],
  ['snapsmall.qcow2'],
  ['snap.qcow2'],
  ['comp.qcow2'],
  ['small.qcow2'],
  ['alone.qcow2'],
  ['-f', 'raw', 'top.qcow2'],
  ['sub/over.qcow2'],
  ['-b', '../base.qcow2', 'sub/over.qcow2'],
  ['-b', 'base.qcow2', 'sub/over.qcow2'],
  ['--image-opts', 'driver=qcow2,file.filename=top.qcow2'],
  [],
  ['top.qcow2', 'base.qcow2'],
  ['-t', 'bogus', 'top.qcow2'],
  ['-r', 'x', 'top.qcow2'],
  ['nosuch.qcow2'],
];

/**
 * qemu-img prints the progress on every poll of the job (how often is timing): keep the first and the last value
 * of each run of progress lines.
 */
function progressShape(out: string): string {
  return out.replace(/(?: {4}\(\d+\.\d\d\/100%\)\r)+/g, (run) => {
    const parts = run.split('\r').filter(Boolean);
    return `${parts[0]}\r${parts[parts.length - 1]}\r`;
  });
}

function files(dir: string, sub = ''): string[] {
  return readdirSync(join(dir, sub), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(dir, join(sub, e.name)) : [join(sub, e.name)],
  );
}

describe('blockgraph commit against qemu-img commit', () => {
  for (const args of CASES) {
    it(args.join(' ') || '(no arguments)', async (ctx) => {
      need(ctx);
      const setup = (dir: string) => {
        chains(dir);
        subOverlay(dir);
      };
      const abs = (dir: string) =>
        args.map((a, i) =>
          /\.(qcow2|raw)$/.test(a) && !a.includes('=') && args[i - 1] !== '-b' ? join(dir, a) : a.replace(/(file\.filename=)(.*)/, `$1${dir}/$2`),
        );
      const t = await twin(setup, (dir) => ['commit', ...abs(dir)]);
      try {
        expect({ status: t.b.status, stdout: progressShape(t.b.stdout) }).toEqual({ status: t.q.status, stdout: progressShape(t.q.stdout) });
        expect(t.b.stderr).toBe(normaliseStderr(t.q.stderr));
        for (const f of files(t.qdir)) {
          const ours = readFileSync(join(t.bdir, f));
          let same = ours.equals(readFileSync(join(t.qdir, f)));
          for (let i = 0; !same && i < 8; i++) {
            const again = tempDir('q-again');
            try {
              setup(again.dir);
              run('qemu-img', ['commit', ...abs(again.dir)]);
              same = ours.equals(readFileSync(join(again.dir, f)));
            } finally {
              again.cleanup();
            }
          }
          expect(same, `${f}: byte-identical to one of QEMU's results`).toBe(true);
        }
      } finally {
        t.cleanup();
      }
    });
  }
});
