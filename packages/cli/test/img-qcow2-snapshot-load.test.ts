/**
 * `convert -l` and `measure -l` (bdrv_snapshot_load_tmp: read an internal snapshot instead of the active image)
 * against qemu-img 7.2. Each case runs both tools on their own copies of the same images made by qemu-img: exit
 * code, stdout and stderr must be equal, and a converted image must hold the same data (raw outputs byte-equal,
 * qcow2 outputs equal to QEMU's by `qemu-img compare` and `qemu-img map`). The source images must not change.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, expectSameOutput, must, qcow2Requirement, run, twin } from './helpers.js';

const need = qcow2Requirement();

const io = (file: string, ...cmds: string[]) => must('qemu-io', '-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file);

const images = cachedSetup((d) => {
  const at = (n: string) => join(d, n);
  // Snapshot s1 at 4M; the image grows to 8M before s2; the active image differs from both.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', at('a.qcow2'), '4M');
  io(at('a.qcow2'), 'write -P 0x11 0 1M', 'write -z 2M 64k');
  must('qemu-img', 'snapshot', '-c', 's1', at('a.qcow2'));
  io(at('a.qcow2'), 'write -P 0x22 512k 1M');
  must('qemu-img', 'resize', '-q', at('a.qcow2'), '8M');
  io(at('a.qcow2'), 'write -P 0x33 6M 1M', 'discard 0 64k');
  must('qemu-img', 'snapshot', '-c', 's2', at('a.qcow2'));
  io(at('a.qcow2'), 'write -P 0x44 0 64k');
  // A snapshot named like the other's id: a bare "-l 2" takes the id first.
  must('qemu-img', 'snapshot', '-c', '1', at('a.qcow2'));
  // Extended L2 entries (subclusters), 4k clusters, an overlay whose snapshot reads through to its backing file.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', at('el2.qcow2'), '2M');
  io(at('el2.qcow2'), 'write -P 1 0 4k', 'write -P 2 70k 10k', 'write -z 1M 8k');
  must('qemu-img', 'snapshot', '-c', 'e', at('el2.qcow2'));
  io(at('el2.qcow2'), 'write -P 3 0 128k');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', at('base.qcow2'), '2M');
  io(at('base.qcow2'), 'write -P 0xb0 0 2M');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'base.qcow2', '-F', 'qcow2', at('overlay.qcow2'));
  io(at('overlay.qcow2'), 'write -P 0xb1 64k 8k');
  must('qemu-img', 'snapshot', '-c', 'o', at('overlay.qcow2'));
  io(at('overlay.qcow2'), 'write -z 0 1M');
  // Compressed clusters in a snapshot.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', at('plain.qcow2'), '2M');
  io(at('plain.qcow2'), 'write -P 0x42 0 1M');
  must('qemu-img', 'convert', '-c', '-O', 'qcow2', at('plain.qcow2'), at('comp.qcow2'));
  must('qemu-img', 'snapshot', '-c', 'c', at('comp.qcow2'));
  io(at('comp.qcow2'), 'write -P 0x43 0 2M');
  must('qemu-img', 'create', '-q', '-f', 'raw', at('r.raw'), '1M');
  // 512-byte clusters: one L1 entry maps 32 KiB, so the snapshot's L1 table is shorter than the grown image's.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', at('small.qcow2'), '64k');
  io(at('small.qcow2'), 'write -P 5 0 64k');
  must('qemu-img', 'snapshot', '-c', 'short', at('small.qcow2'));
  must('qemu-img', 'resize', '-q', at('small.qcow2'), '256k');
  io(at('small.qcow2'), 'write -P 6 32k 200k');
  // The first snapshot's L1 table offset unaligned (EINVAL: a bare name is then looked up by name), and the
  // second's L1 size too large (EFBIG).
  const bad = readFileSync(at('a.qcow2'));
  let entry = Number(bad.readBigUInt64BE(64));
  bad.writeBigUInt64BE(bad.readBigUInt64BE(entry) + 8n, entry);
  entry += Math.ceil((40 + bad.readUInt32BE(entry + 36) + bad.readUInt16BE(entry + 12) + bad.readUInt16BE(entry + 14)) / 8) * 8;
  bad.writeUInt32BE(0x4000000, entry + 8);
  writeFileSync(at('bad.qcow2'), bad);
});

/** Arguments of `convert` / `measure`; file names are relative to the case's directory. */
const CONVERT: string[][] = [
  ['-l', 's1', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', '1', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', '2', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', '3', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.id=2', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.name=1', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.id=1,snapshot.name=s1', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.id=2,snapshot.id=1', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.id=1', '-l', 's2', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 's2', '-O', 'qcow2', 'a.qcow2', 'o.qcow2'],
  ['-l', 's2', '-c', '-O', 'qcow2', 'a.qcow2', 'o.qcow2'],
  ['-l', 'e', '-O', 'qcow2', '-o', 'extended_l2=on', 'el2.qcow2', 'o.qcow2'],
  ['-l', 'e', '-O', 'raw', 'el2.qcow2', 'o.raw'],
  ['-l', 'o', '-O', 'raw', 'overlay.qcow2', 'o.raw'],
  ['-l', 'o', '-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2', 'overlay.qcow2', 'o.qcow2'],
  ['-l', 'c', '-O', 'raw', 'comp.qcow2', 'o.raw'],
  ['-l', 'short', '-O', 'raw', 'small.qcow2', 'o.raw'],
  ['-l', 'short', '-O', 'qcow2', 'small.qcow2', 'o.qcow2'],
  ['-l', 'snapshot.id=1', '-O', 'raw', 'a.qcow2', 'r.raw', 'o.raw'],
  ['--image-opts', '-l', 's1', '-O', 'raw', 'driver=qcow2,file.filename=a.qcow2', 'o.raw'],
  // Errors: nothing is written, not even the output file.
  ['-l', 'nosuch', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.id=1,snapshot.name=s2', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.name=', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.foo=1', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.id', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.id=1,nosnapshot.name', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 's1', '-O', 'raw', 'a.qcow2', 'a.qcow2', 'o.raw'],
  ['-l', 's1', '-O', 'raw', 'r.raw', 'o.raw'],
  ['-l', 's1', '-f', 'raw', '-O', 'raw', 'a.qcow2', 'o.raw'],
  ['-l', 'snapshot.id=1', '-O', 'raw', 'bad.qcow2', 'o.raw'],
  ['-l', '1', '-O', 'raw', 'bad.qcow2', 'o.raw'],
  ['-l', 's1', '-O', 'raw', 'bad.qcow2', 'o.raw'],
  ['-l', 's2', '-O', 'raw', 'bad.qcow2', 'o.raw'],
];

const MEASURE: string[][] = [
  ['-O', 'qcow2', '-l', 's1', 'a.qcow2'],
  ['-O', 'qcow2', '-l', 'snapshot.id=2', 'a.qcow2'],
  ['--output=json', '-O', 'qcow2', '-l', 'e', 'el2.qcow2'],
  ['-O', 'qcow2', '-l', 'short', 'small.qcow2'],
  ['-O', 'raw', '-l', 's1', 'a.qcow2'],
  ['-O', 'qcow2', '-l', 'nosuch', 'a.qcow2'],
  ['-O', 'qcow2', '-l', 'snapshot.x=1', 'a.qcow2'],
  ['-O', 'qcow2', '-l', 's1', 'r.raw'],
  ['-O', 'qcow2', '--size', '1G', '-l', 's1'],
  ['-O', 'qcow2', '--size', '1G', '-f', 'qcow2'],
  ['-O', 'qcow2', '--size', '1G', '-l', 's1', 'a.qcow2'],
  ['-O', 'qcow2', 'a.qcow2', 'el2.qcow2'],
];

function absolute(dir: string, args: string[]): string[] {
  return args.map((a) => (/^[a-z0-9]+\.(qcow2|raw)$/.test(a) ? join(dir, a) : a.replace(/(file\.filename=)(.*)/, `$1${dir}/$2`)));
}

const SOURCES = ['a.qcow2', 'el2.qcow2', 'overlay.qcow2', 'comp.qcow2', 'bad.qcow2', 'small.qcow2'];

/** Both tools on their own copies of the images; outputs with the directory as $DIR. */
const bothTools = (command: string, args: string[]) => twin(images, (dir) => [command, ...absolute(dir, args)]);

describe('blockgraph convert -l (internal snapshot as the source) against qemu-img', () => {
  for (const args of CONVERT) {
    it(args.join(' '), async (ctx) => {
      need(ctx);
      const t = await bothTools('convert', args);
      try {
        expect({ status: t.b.status, stdout: t.b.stdout }).toEqual({ status: t.q.status, stdout: t.q.stdout });
        // The deprecation warning's second line has no program prefix: compare line by line, not normalised.
        expect(t.b.stderr).toBe(t.q.stderr.replaceAll('qemu-img: ', 'blockgraph: '));
        const out = args[args.length - 1]!;
        expect(existsSync(join(t.bdir, out))).toBe(existsSync(join(t.qdir, out)));
        if (t.q.status === 0 && out.endsWith('.raw')) {
          expect(readFileSync(join(t.bdir, out)).equals(readFileSync(join(t.qdir, out)))).toBe(true);
        } else if (t.q.status === 0) {
          const cmp = run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', join(t.bdir, out), join(t.qdir, out)]);
          expect(cmp.stdout).toBe('Images are identical.\n');
          const map = (dir: string) => run('qemu-img', ['map', '--output=json', '-f', 'qcow2', join(dir, out)]).stdout;
          expect(map(t.bdir)).toBe(map(t.qdir));
          expect(run('qemu-img', ['check', '-q', join(t.bdir, out)]).status).toBe(0);
        }
        for (const src of SOURCES) {
          expect(readFileSync(join(t.bdir, src)).equals(readFileSync(join(t.qdir, src))), src).toBe(true);
        }
      } finally {
        t.cleanup();
      }
    });
  }
});

describe('blockgraph measure -l against qemu-img', () => {
  for (const args of MEASURE) {
    it(args.join(' '), async (ctx) => {
      need(ctx);
      const t = await bothTools('measure', args);
      try {
        expectSameOutput(t);
      } finally {
        t.cleanup();
      }
    });
  }
});
