/**
 * `blockgraph rebase` on qcow2 overlays against `qemu-img rebase` (QEMU 7.2): safe mode (copy what differs
 * between the old and the new backing chain, then change the name) and -u (the name only), run on twin copies
 * of the same chain. Outputs and exit codes must be equal and the overlays byte-identical (the header names
 * the new backing file; the copied clusters sit where QEMU puts them), clean, and read the same data.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cachedSetup, expectSameOutput, must, qcow2Requirement, qemuImg, twin, type Twin } from './helpers.js';

const need = qcow2Requirement();

let t: Twin | undefined;
afterEach(() => {
  t?.cleanup();
  t = undefined;
});

const io = (fmt: string, file: string, ...cmds: string[]) => must('qemu-io', '-f', fmt, ...cmds.flatMap((c) => ['-c', c]), file);

/**
 * base <- mid <- top, other (unrelated, different data), small (4M), raw.img; v2 and extended-L2 overlays;
 * base <- mid-short (8M) <- top-long (20M).
 */
const chain = cachedSetup((d) => {
  const p = (n: string) => join(d, n);
  const create = (name: string, size: string | null, ...opts: string[]) =>
    must('qemu-img', 'create', '-q', '-f', 'qcow2', ...opts, p(name), ...(size ? [size] : []));
  create('base.qcow2', '16M');
  io('qcow2', p('base.qcow2'), 'write -P 0x11 0 4M', 'write -P 0x12 8M 1M');
  create('mid.qcow2', null, '-b', 'base.qcow2', '-F', 'qcow2');
  io('qcow2', p('mid.qcow2'), 'write -P 0x21 1M 1M', 'write -z 8M 64k');
  create('top.qcow2', null, '-b', 'mid.qcow2', '-F', 'qcow2');
  io('qcow2', p('top.qcow2'), 'write -P 0x31 0 64k', 'write -P 0x32 1536k 4k', 'write -z 3M 64k');
  create('other.qcow2', '16M');
  io('qcow2', p('other.qcow2'), 'write -P 0x11 0 2M', 'write -P 0x41 2M 2M', 'write -P 0x12 8M 512k');
  create('small.qcow2', '4M');
  io('qcow2', p('small.qcow2'), 'write -P 0x11 0 4M');
  must('qemu-img', 'create', '-q', '-f', 'raw', p('raw.img'), '16M');
  io('raw', p('raw.img'), 'write -P 0x11 0 16M');
  create('top-v2.qcow2', null, '-b', 'mid.qcow2', '-F', 'qcow2', '-o', 'compat=0.10');
  io('qcow2', p('top-v2.qcow2'), 'write -P 0x33 0 64k');
  create('top-el2.qcow2', null, '-b', 'mid.qcow2', '-F', 'qcow2', '-o', 'extended_l2=on');
  io('qcow2', p('top-el2.qcow2'), 'write -P 0x34 4k 4k', 'write -z 2M 8k');
  create('top-small.qcow2', null, '-b', 'small.qcow2', '-F', 'qcow2');
  // An overlay longer than its backing file, which is shorter than the base below it: past 8M the old chain reads
  // zeroes where base.qcow2 has data (8M-9M), so a rebase onto base.qcow2 must write zeroes there.
  create('mid-short.qcow2', '8M', '-b', 'base.qcow2', '-F', 'qcow2');
  io('qcow2', p('mid-short.qcow2'), 'write -P 0x22 1M 64k');
  create('top-long.qcow2', '20M', '-b', 'mid-short.qcow2', '-F', 'qcow2');
  io('qcow2', p('top-long.qcow2'), 'write -P 0x36 17M 64k');
});

function expectSameOverlay(tw: Twin, name: string): void {
  const q = join(tw.qdir, name);
  const b = join(tw.bdir, name);
  expect(readFileSync(b).equals(readFileSync(q)), `${name} byte-identical`).toBe(true);
  // Checked without its backing chain (which -u may have pointed at nothing).
  const check = qemuImg('check', `json:${JSON.stringify({ driver: 'qcow2', backing: null, file: { driver: 'file', filename: b } })}`);
  expect(check.stdout + check.stderr).toMatch(/No errors were found on the image\./);
  // Same guest data through the (new) backing chain; the chains are twins, so compare against QEMU's.
  if (qemuImg('info', '--backing-chain', q).status === 0) {
    const raw = (f: string) => {
      must('qemu-img', 'convert', '-U', '-O', 'raw', f, `${f}.raw`);
      return readFileSync(`${f}.raw`);
    };
    expect(raw(b).equals(raw(q)), `${name} guest data`).toBe(true);
  }
}

describe('blockgraph rebase on qcow2 against qemu-img rebase', () => {
  const CASES: [string, string[]][] = [
    ['top.qcow2', ['-b', 'base.qcow2', '-F', 'qcow2']],
    ['top.qcow2', ['-b', 'other.qcow2', '-F', 'qcow2']],
    ['top.qcow2', ['-b', '', ]],
    ['top.qcow2', ['-b', 'small.qcow2', '-F', 'qcow2']],
    ['top.qcow2', ['-b', 'raw.img', '-F', 'raw']],
    ['top.qcow2', ['-u', '-b', 'other.qcow2', '-F', 'qcow2']],
    ['top.qcow2', ['-u', '-b', '']],
    ['top.qcow2', ['-u', '-b', 'does-not-exist.qcow2', '-F', 'qcow2']],
    ['top.qcow2', ['-p', '-b', 'base.qcow2', '-F', 'qcow2']],
    ['top.qcow2', ['-q', '-b', 'other.qcow2', '-F', 'qcow2']],
    ['top-small.qcow2', ['-b', 'base.qcow2', '-F', 'qcow2']],
    ['top-small.qcow2', ['-b', '']],
    ['top-v2.qcow2', ['-b', 'other.qcow2', '-F', 'qcow2']],
    ['top-el2.qcow2', ['-b', 'other.qcow2', '-F', 'qcow2']],
    ['mid.qcow2', ['-b', 'other.qcow2', '-F', 'qcow2']],
    // Onto an image further down its own chain, past the end of the old backing file (this looped forever).
    ['top-long.qcow2', ['-b', 'base.qcow2', '-F', 'qcow2']],
    // errors
    ['top.qcow2', ['-b', 'does-not-exist.qcow2', '-F', 'qcow2']],
    ['top.qcow2', ['-b', 'base.qcow2', '-F', 'bogus']],
    ['top.qcow2', ['-b', 'raw.img', '-F', 'qcow2']],
    ['top.qcow2', []],
    ['top.qcow2', ['-u', '-b', 'x'.repeat(1100), '-F', 'qcow2']],
    // A new backing file without its format: refused, the header keeps the old one.
    ['top.qcow2', ['-u', '-b', 'raw.img']],
    ['top.qcow2', ['-b', 'other.qcow2']],
  ];
  for (const [image, args] of CASES) {
    it(`rebase ${args.map((a) => (a.length > 40 ? `${a.slice(0, 8)}…` : a)).join(' ')} ${image}`, async (ctx) => {
      need(ctx);
      t = await twin(chain, (d) => ['rebase', ...args, join(d, image)]);
      expectSameOutput(t);
      expectSameOverlay(t, image);
    });
  }
});
