/**
 * `blockgraph dd` against `qemu-img dd` (QEMU 7.2): the same exit code and messages, and an output image
 * byte-identical to qemu-img's (raw and qcow2, which dd fills block by block without sparse detection). The input
 * images must not change.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, expectSameOutput, must, qcow2Requirement, twin } from './helpers.js';

const need = qcow2Requirement();

const inputs = cachedSetup((d) => {
  const at = (n: string) => join(d, n);
  must('qemu-img', 'create', '-q', '-f', 'qcow2', at('a.qcow2'), '1M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 100k', '-c', 'write -z 200k 64k', '-c', 'write -P 0x12 900k 3k', at('a.qcow2'));
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', at('top.qcow2'), '2M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x22 64k 64k', '-c', 'write -P 0x23 1500k 10k', at('top.qcow2'));
  // 1000 bytes: qemu-img counts whole sectors (1024).
  must('qemu-img', 'create', '-q', '-f', 'raw', at('r.raw'), '1000');
  must('qemu-io', '-f', 'raw', '-c', 'write -P 0x33 0 1000', at('r.raw'));
  must('qemu-img', 'create', '-q', '-f', 'raw', at('old.raw'), '4M');
});

const INPUTS = ['a.qcow2', 'top.qcow2', 'r.raw'];

/** Arguments of dd; the last `of=` names the output. */
const CASES: string[][] = [
  ['if=a.qcow2', 'of=o.raw'],
  ['-O', 'qcow2', 'if=a.qcow2', 'of=o.qcow2'],
  ['-O', 'qcow2', 'if=a.qcow2', 'of=o.qcow2', 'bs=64k', 'count=3', 'skip=1'],
  ['if=top.qcow2', 'of=o.raw', 'bs=1M'],
  ['-O', 'qcow2', 'if=top.qcow2', 'of=o.qcow2', 'bs=4k', 'skip=100', 'count=300'],
  ['if=r.raw', 'of=o.raw', 'bs=300'],
  ['if=r.raw', 'of=o.raw', 'bs=300', 'skip=3'],
  ['if=r.raw', 'of=o.raw', 'bs=300', 'skip=4'],
  ['if=r.raw', 'of=o.raw', 'bs=300', 'skip=3', 'count=1'],
  ['-f', 'raw', 'if=a.qcow2', 'of=o.raw', 'count=1'],
  ['--image-opts', 'if=driver=qcow2,file.filename=a.qcow2', 'of=o.raw', 'count=2'],
  ['-U', 'if=a.qcow2', 'of=o.raw', 'count=1', 'bs=4k'],
  ['if=a.qcow2', 'of=o.raw', 'bs=1.5k', 'count=1'],
  ['if=a.qcow2', 'of=o.raw', 'bs=1k', 'count=0x10'],
  ['if=a.qcow2', 'of=o.raw', 'count=2k'],
  ['if=a.qcow2', 'of=o.raw', 'count=0'],
  ['if=a.qcow2', 'of=o.raw', 'skip=2047'],
  ['if=a.qcow2', 'of=o.raw', 'skip=2048'],
  ['if=a.qcow2', 'of=o.raw', 'skip=1M'],
  ['if=a.qcow2', 'of=o.raw', 'bs=2G', 'count=1'],
  ['if=a.qcow2', 'of=o.raw', 'count=1E'],
  ['if=a.qcow2', 'of=o.raw', 'bs=64k', 'count=8E'],
  ['if=a.qcow2', 'of=o.raw', 'skip=1E'],
  ['if=a.qcow2', 'of=o.raw', 'bs=1M', 'skip=8E', 'count=1'],
  ['if=r.raw', 'if=a.qcow2', 'of=o.raw', 'bs=512', 'bs=64k'],
  ['if=a.qcow2', 'of=old.raw', 'count=1'],
  // Errors, in qemu-img's order: operands one by one, then the files.
  ['foo=1', 'bs=0'],
  ['bs=0', 'foo=1'],
  ['if=a.qcow2'],
  ['of=o.raw'],
  ['if=a.qcow2', 'of=o.raw', 'bs=3G'],
  ['if=a.qcow2', 'of=o.raw', 'bs'],
  ['if=a.qcow2', 'of=o.raw', '=1'],
  ['if=a.qcow2', 'of=o.raw', 'count=-1'],
  ['if=a.qcow2', 'of=o.raw', 'skip=x'],
  ['if=a.qcow2', 'of=o.raw', 'conv=notrunc'],
  ['-O', 'nope', 'if=a.qcow2', 'of=o.raw'],
  ['-O', 'nope', 'if=nosuch.qcow2', 'of=o.raw'],
  ['if=', 'of=o.raw'],
  ['if=a.qcow2', 'of='],
  ['-O', 'qcow2', 'if=a.qcow2', 'of=a.qcow2'],
  ['if=a.qcow2', 'of=nodir/o.raw'],
];

function absolute(dir: string, args: string[]): string[] {
  return args.map((a) => {
    const m = /^(if|of)=(.+)$/.exec(a);
    if (m && !m[2]!.includes('=')) return `${m[1]}=${join(dir, m[2]!)}`;
    return a.replace(/(file\.filename=)(.*)/, `$1${dir}/$2`);
  });
}

describe('blockgraph dd against qemu-img dd', () => {
  for (const args of CASES) {
    it(args.join(' '), async (ctx) => {
      need(ctx);
      const t = await twin(inputs, (dir) => ['dd', ...absolute(dir, args)]);
      try {
        expectSameOutput(t);
        const out = [...args].reverse().find((a) => a.startsWith('of='))?.slice(3);
        if (out && !out.includes('/') && out !== 'a.qcow2') {
          expect(existsSync(join(t.bdir, out)), out).toBe(existsSync(join(t.qdir, out)));
          if (existsSync(join(t.qdir, out))) expect(readFileSync(join(t.bdir, out)).equals(readFileSync(join(t.qdir, out))), out).toBe(true);
        }
        for (const f of INPUTS) expect(readFileSync(join(t.bdir, f)).equals(readFileSync(join(t.qdir, f))), f).toBe(true);
      } finally {
        t.cleanup();
      }
    });
  }
});
