/**
 * `blockgraph io -s` / `open -s` (BDRV_O_SNAPSHOT: the image read-only below a temporary qcow2 overlay that is
 * thrown away at close) against qemu-io 7.2. Both tools run the same commands on their own copies of the same
 * images, with TMPDIR pointing at a directory of their own: the outputs and exit codes must be equal, the images
 * must not change, and no temporary file may be left behind.
 */
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, filterQemuIo, must, qcow2Requirement, twin, type RunResult } from './helpers.js';

const need = qcow2Requirement();

const images = cachedSetup((d) => {
  const at = (n: string) => join(d, n);
  must('qemu-img', 'create', '-q', '-f', 'qcow2', at('a.qcow2'), '1M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 128k', '-c', 'write -z 512k 64k', at('a.qcow2'));
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', at('top.qcow2'));
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x22 64k 64k', at('top.qcow2'));
  must('qemu-img', 'create', '-q', '-f', 'raw', at('r.raw'), '1000');
  must('qemu-io', '-f', 'raw', '-c', 'write -P 0x33 0 512', at('r.raw'));
});

const FILES = ['a.qcow2', 'top.qcow2', 'r.raw'];

/** qemu-io arguments; a `$DIR/` prefix is replaced by the case's directory. */
const CASES: { name: string; args: string[]; tmpdir?: string }[] = [
  {
    name: 'writes land in the overlay; reads, map and info see them',
    args: ['-s', '-c', 'write -P 0x55 4k 8k', '-c', 'read -P 0x55 4k 8k', '-c', 'read -P 0x11 0 4k', '-c', 'read -P 0x11 12k 116k', '-c', 'map', '-c', 'info', '$DIR/a.qcow2'],
  },
  {
    name: 'zero writes, discard and write past the old data',
    args: ['-s', '-f', 'qcow2', '-c', 'write -z 0 64k', '-c', 'discard 64k 64k', '-c', 'write -P 0x66 900k 100k', '-c', 'read -P 0 0 128k', '-c', 'read -P 0x66 900k 100k', '-c', 'map', '$DIR/a.qcow2'],
  },
  {
    name: 'an overlay with a backing file reads through the whole chain',
    args: ['-s', '-c', 'read -P 0x11 0 64k', '-c', 'read -P 0x22 64k 64k', '-c', 'write -P 0x77 60k 8k', '-c', 'read -P 0x77 60k 8k', '-c', 'read -P 0x22 68k 60k', '$DIR/top.qcow2'],
  },
  { name: 'cache mode none: the overlay ignores it (cache=unsafe)', args: ['-s', '-t', 'none', '-c', 'write -P 0x55 0 4k', '-c', 'read -P 0x55 0 4k', '$DIR/a.qcow2'] },
  {
    name: 'a raw image, probed (no warning: the image itself is opened read-only)',
    args: ['-s', '-c', 'write -P 0x44 0 512', '-c', 'read -P 0x44 0 512', '-c', 'read -P 0 512 488', '-c', 'length', '$DIR/r.raw'],
  },
  { name: 'a raw image, -f raw', args: ['-s', '-f', 'raw', '-c', 'write -P 0x44 512 512', '-c', 'read -P 0x33 0 512', '$DIR/r.raw'] },
  { name: '-s -r: the overlay is read-only too', args: ['-s', '-r', '-c', 'write -P 1 0 512', '-c', 'read -P 0x11 0 512', '$DIR/a.qcow2'] },
  { name: '-s -C: copy-on-read fills the overlay', args: ['-s', '-C', '-c', 'read -P 0x11 0 64k', '-c', 'map', '$DIR/a.qcow2'] },
  {
    name: 'open -s, then the image itself after close',
    args: ['-c', 'open -s $DIR/a.qcow2', '-c', 'write -P 0x99 0 4k', '-c', 'read -P 0x99 0 4k', '-c', 'close', '-c', 'open $DIR/a.qcow2', '-c', 'read -P 0x11 0 4k'],
  },
  { name: '--image-opts', args: ['-s', '--image-opts', '-c', 'write -P 0x12 0 4k', '-c', 'read -P 0x12 0 4k', 'driver=qcow2,file.filename=$DIR/a.qcow2'] },
  { name: 'a missing image', args: ['-s', '-c', 'read 0 512', '$DIR/nosuch.qcow2'] },
  {
    name: 'no temporary directory: the open fails and leaves the image free for the next open',
    args: ['-c', 'open -s $DIR/a.qcow2', '-c', 'open $DIR/a.qcow2', '-c', 'write -P 0x31 0 4k', '-c', 'read -P 0x31 0 4k'],
    tmpdir: 'missing',
  },
];

describe('blockgraph io -s (temporary snapshot overlay) against qemu-io', () => {
  for (const c of CASES) {
    it(c.name, async (ctx) => {
      need(ctx);
      const setup = (dir: string) => {
        images(dir);
        mkdirSync(join(dir, 'tmp'));
      };
      const t = await twin(setup, (dir) => c.args.map((a) => a.split('$DIR').join(dir)), 'qemu-io', {
        env: (dir) => ({ TMPDIR: join(dir, c.tmpdir ?? 'tmp') }),
      });
      try {
        const norm = (r: RunResult) => ({
          status: r.status,
          stdout: filterQemuIo(r.stdout),
          stderr: r.stderr.replaceAll('qemu-io: ', 'blockgraph: ').replace(/vl\.[A-Za-z0-9]{6}/g, 'vl.XXXXXX'),
        });
        expect(norm(t.b)).toEqual(norm(t.q));
        for (const f of FILES) expect(readFileSync(join(t.bdir, f)).equals(readFileSync(join(t.qdir, f))), f).toBe(true);
        expect(readdirSync(join(t.qdir, 'tmp'))).toEqual([]);
        expect(readdirSync(join(t.bdir, 'tmp'))).toEqual([]);
      } finally {
        t.cleanup();
      }
    });
  }
});
