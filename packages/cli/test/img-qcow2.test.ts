/**
 * qemu-img and qemu-io on qcow2 images (the measured reference images of qcow2.md §4): blockgraph with the
 * qcow2 driver against QEMU 7.2. Runs when @blockgraph/driver-qcow2 is installed; operations the driver does
 * not offer yet (snapshots, amend, changing the backing file, measure) must fail with one clear line, and are
 * compared with QEMU as soon as the driver has them.
 */
import { closeSync, copyFileSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { driverAvailable, expectSameOutput, filterQemuIo, IN_CI, missingTools, must, normaliseStderr, qemuImg, twin, type Twin } from './helpers.js';

let t: Twin | undefined;
afterEach(() => {
  t?.cleanup();
  t = undefined;
});

const w = (dir: string, file: string, ...cmds: string[]) => must('qemu-io', '-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), join(dir, file));

/** The reference images are built once and copied for every comparison. */
let template: string | undefined;
function refImages(d: string): void {
  if (!template) {
    template = mkdtempSync(join(tmpdir(), 'blockgraph-cli-qcow2-ref-'));
    buildRefImages(template);
  }
  for (const f of readdirSync(template)) copyFileSync(join(template, f), join(d, f));
}

afterAll(() => {
  if (template) rmSync(template, { recursive: true, force: true });
});

/** qcow2.md §4.1–4.5. */
function buildRefImages(d: string): void {
  const img = (name: string, ...opts: string[]) => must('qemu-img', 'create', '-q', '-f', 'qcow2', ...opts, join(d, name), '64M');
  img('std.qcow2');
  w(d, 'std.qcow2', 'write -P 0xab 0 1M', 'write -P 0xcd 4M 64k', 'write -z 8M 128k');
  img('v2.qcow2', '-o', 'compat=0.10');
  w(d, 'v2.qcow2', 'write -P 0xab 0 1M', 'write -z 8M 128k', 'write -P 0x11 16M 64k', 'write -z 16M 64k');
  img('el2.qcow2', '-o', 'extended_l2=on');
  w(d, 'el2.qcow2', 'write 0 4k', 'write 70k 10k', 'write -z 1M 8k', 'write 2M 64k');
  img('base.qcow2');
  w(d, 'base.qcow2', 'write -P 0x11 0 2M');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(d, 'overlay.qcow2'));
  w(d, 'overlay.qcow2', 'write -P 0x22 64k 64k', 'write -P 0x33 1M 4k', 'write -z 1536k 64k');
  // 4 MiB of labelled 4 KiB blocks, guest cluster 32 random: compressed images.
  const lab = new Uint8Array(4 << 20);
  for (let i = 0; i < lab.length; i += 4096) lab.set(new TextEncoder().encode(`block ${String(i).padStart(9, '0')} `), i);
  let x = 12345;
  for (let i = 2 << 20; i < (2 << 20) + 65536; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    lab[i] = x >>> 24;
  }
  const fd = openSync(join(d, 'lab.raw'), 'w');
  writeSync(fd, lab);
  closeSync(fd);
  must('qemu-img', 'convert', '-c', '-O', 'qcow2', join(d, 'lab.raw'), join(d, 'comp.qcow2'));
  must('qemu-img', 'convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', join(d, 'lab.raw'), join(d, 'compz.qcow2'));
  must('qemu-img', 'create', '-q', '-f', 'raw', join(d, 'a.raw'), '64M');
  must('qemu-io', '-f', 'raw', '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0xcd 4M 64k', join(d, 'a.raw'));
}

function patchU16(file: string, offset: number, value: number): void {
  const fd = openSync(file, 'r+');
  const b = new Uint8Array([value >> 8, value & 0xff]);
  writeSync(fd, b, 0, 2, offset);
  closeSync(fd);
}

/** §4.6 injected faults: a leaked trailing cluster; refcounts of data clusters 6 := 2 and 7 := 0. */
function faultyImages(d: string): void {
  refImages(d);
  must('cp', join(d, 'std.qcow2'), join(d, 'leak.qcow2'));
  const leak = join(d, 'leak.qcow2');
  const size = statSync(leak).size;
  const fd = openSync(leak, 'r+');
  writeSync(fd, new Uint8Array(65536), 0, 65536, size);
  closeSync(fd);
  patchU16(leak, 0x20000 + 2 * (size / 65536), 1);
  must('cp', join(d, 'std.qcow2'), join(d, 'corrupt.qcow2'));
  patchU16(join(d, 'corrupt.qcow2'), 0x20000 + 2 * 6, 2);
  patchU16(join(d, 'corrupt.qcow2'), 0x20000 + 2 * 7, 0);
}

function expectSameFile(tw: Twin, name: string, opts: { bytes?: boolean | 'eof-unaligned'; fmt?: string } = {}): void {
  const q = join(tw.qdir, name);
  const b = join(tw.bdir, name);
  expect(existsSync(b)).toBe(existsSync(q));
  if (!existsSync(q)) return;
  if (opts.bytes === 'eof-unaligned') {
    // Byte-identical except that QEMU rounds the file end up to 512 after the last compressed cluster (the
    // zero-length "align EOF" compressed write, which block-core and the qcow2 driver do not act on yet).
    const qb = readFileSync(q);
    const bb = readFileSync(b);
    expect(Math.ceil(bb.length / 512) * 512).toBe(qb.length);
    expect(bb.equals(qb.subarray(0, bb.length)), `${name} identical up to the end of the data`).toBe(true);
    expect(qb.subarray(bb.length).every((x) => x === 0)).toBe(true);
    expect(qemuImg('check', b).status).toBe(0);
  } else if (opts.bytes !== false) {
    expect(readFileSync(b).equals(readFileSync(q)), `${name} byte-identical`).toBe(true);
  } else {
    const fmt = opts.fmt ?? 'qcow2';
    expect(qemuImg('compare', '-f', fmt, '-F', fmt, q, b).stdout).toBe('Images are identical.\n');
    expect(qemuImg('map', '--output=json', '-f', fmt, b).stdout).toBe(qemuImg('map', '--output=json', '-f', fmt, q).stdout);
    expect(qemuImg('check', b).status).toBe(0);
  }
}

let available = false;
const missing = missingTools('qemu-img', 'qemu-io');

beforeAll(async () => {
  available = await driverAvailable('@blockgraph/driver-qcow2', 'qcow2Driver');
  if (!available) console.warn('qcow2 comparisons [skipped: @blockgraph/driver-qcow2 is not installed]');
});

describe('qcow2 against QEMU 7.2', () => {
  const need = (ctx: { skip: () => void }) => {
    if (missing.length) {
      if (IN_CI) throw new Error(`missing: ${missing.join(', ')}`);
      console.warn(`[skipped: missing ${missing.join(', ')}]`);
      ctx.skip();
    }
    if (!available) {
      // The driver is part of this repository: under CI its absence is a failure, not a reason to skip.
      if (IN_CI) throw new Error('@blockgraph/driver-qcow2 is not installed');
      ctx.skip();
    }
  };
  /** Image names become absolute paths, except backing file names (-b/-B), which stay relative to the image. */
  const sub = (cmd: string, args: string[], setup: (d: string) => void = refImages, spawn = false) =>
    twin(
      setup,
      (d) => [
      cmd,
      ...args.map((a, i) =>
        ['-b', '-B'].includes(args[i - 1] ?? '')
          ? a
          : /\.(qcow2|raw)$/.test(a) && !a.includes('=')
            ? join(d, a)
            : a.replace(/(file\.filename=)(.*)/, `$1${d}/$2`),
        ),
      ],
      'qemu-img',
      { spawn },
    );

  /** One test per [command, args] on the standard images: qemu-img's status, output and messages, and its file. */
  function sameAsQemu(cases: [string, string[]][]): void {
    for (const [cmd, args] of cases) {
      it(`${cmd} ${args.join(' ')}`, async (ctx) => {
        need(ctx);
        t = await sub(cmd, args);
        expectSameOutput(t);
        expectSameFile(t, cmd === 'amend' ? 'std.qcow2' : 'x.qcow2');
      });
    }
  }

  describe('create', () => {
    const cases: string[][] = [
      ['-f', 'qcow2', 'x.qcow2', '64M'],
      ['-f', 'qcow2', '-o', 'compat=0.10', 'x.qcow2', '1G'],
      ['-f', 'qcow2', '-o', 'cluster_size=4k,lazy_refcounts=on', 'x.qcow2', '1M'],
      ['-f', 'qcow2', '-o', 'extended_l2=on', 'x.qcow2', '100000'],
      ['-f', 'qcow2', '-o', 'refcount_bits=1', 'x.qcow2', '16M'],
      ['-f', 'qcow2', '-o', 'compression_type=zstd', 'x.qcow2', '16M'],
      ['-f', 'qcow2', '-o', 'preallocation=metadata', 'x.qcow2', '8M'],
      ['-f', 'qcow2', '-b', 'std.qcow2', '-F', 'qcow2', 'x.qcow2'],
      ['-f', 'qcow2', '-b', 'std.qcow2', '-F', 'qcow2', 'x.qcow2', '128M'],
      ['-f', 'qcow2', '-u', '-b', 'nope.qcow2', '-F', 'qcow2', 'x.qcow2', '1M'],
      ['-f', 'qcow2', '-q', 'x.qcow2', '1M'],
    ];
    for (const args of cases) {
      it(`create ${args.join(' ')}`, async (ctx) => {
        need(ctx);
        t = await sub('create', args);
        expectSameOutput(t);
        expectSameFile(t, 'x.qcow2');
      });
    }
    const errors: string[][] = [
      ['-f', 'qcow2', '-b', 'std.qcow2', 'x.qcow2'],
      ['-f', 'qcow2', '-b', 'nope.qcow2', '-F', 'qcow2', 'x.qcow2'],
      ['-f', 'qcow2', '-o', 'cluster_size=4k,extended_l2=on', 'x.qcow2', '1M'],
      ['-f', 'qcow2', '-o', 'compat=0.10,lazy_refcounts=on', 'x.qcow2', '1M'],
      ['-f', 'qcow2', '-o', 'bogus=1', 'x.qcow2', '1M'],
    ];
    for (const args of errors) {
      it(`error: create ${args.join(' ')}`, async (ctx) => {
        need(ctx);
        t = await sub('create', args, refImages);
        expect(t.q.status).toBe(1);
        expect(t.b.status).toBe(1);
        expect(t.b.stderr.split('\n').filter(Boolean)).toHaveLength(1);
        expect(t.b.stderr).toMatch(/^blockgraph: .*x\.qcow2: /);
      });
    }
  });

  describe('-o values are read by their type, as QemuOpts reads them (sizes, numbers, booleans)', () => {
    // Hex and octal numbers, fractional sizes rounding half up, QAPI's y/n: accepted and printed as QEMU prints
    // them; malformed values: QEMU's message (with its hint lines for sizes), before the "Formatting" line.
    const creates: string[][] = [
      ['cluster_size=0x10000'],
      ['cluster_size=63.9999k'],
      ['refcount_bits=010'],
      ['refcount_bits=0x10'],
      ['lazy_refcounts=y,compat=1.1'],
      ['extended_l2=n'],
      ['cluster_size=1.5'],
      ['cluster_size='],
      ['cluster_size=64k '],
      ['cluster_size=99999999999E'],
      ['refcount_bits=abc'],
      ['refcount_bits=1k'],
      ['refcount_bits=99999999999999999999999'],
      ['refcount_bits=-1'],
      ['lazy_refcounts=maybe'],
      ['size=abc', '1M'],
    ];
    for (const [opts, size = '1M'] of creates) {
      it(`create -o ${opts}`, async (ctx) => {
        need(ctx);
        t = await sub('create', ['-f', 'qcow2', '-o', opts!, 'x.qcow2', size]);
        expectSameOutput(t);
        expectSameFile(t, 'x.qcow2');
      });
    }
    it('create failing after the file was made (an unusable data_file): the file is removed again, as by QEMU', async (ctx) => {
      need(ctx);
      t = await sub('create', ['-f', 'qcow2', '-o', 'data_file=', 'x.qcow2', '1M']);
      expectSameOutput(t);
      expect(existsSync(join(t.bdir, 'x.qcow2'))).toBe(false);
      expectSameFile(t, 'x.qcow2');
    });
    it('create -o size=1.5k (the size from -o alone)', async (ctx) => {
      need(ctx);
      t = await sub('create', ['-f', 'qcow2', '-o', 'size=1.5k', 'x.qcow2']);
      expectSameOutput(t);
      expectSameFile(t, 'x.qcow2');
    });
    const others: [string, string[]][] = [
      ['convert', ['-O', 'qcow2', '-o', 'cluster_size=1.5', 'std.qcow2', 'x.qcow2']],
      ['convert', ['-O', 'qcow2', '-o', 'refcount_bits=x', 'std.qcow2', 'x.qcow2']],
      ['measure', ['-O', 'qcow2', '-o', 'cluster_size=1.5', 'std.qcow2']],
      ['measure', ['-O', 'qcow2', '-o', 'cluster_size=63.9999k,refcount_bits=010', '--size', '1G']],
      ['amend', ['-o', 'refcount_bits=x', 'std.qcow2']],
      ['amend', ['-o', 'lazy_refcounts=maybe', 'std.qcow2']],
      ['amend', ['-o', 'lazy_refcounts=y', 'std.qcow2']],
    ];
    sameAsQemu(others);
  });

  describe('encryption options: named, typed and checked as qemu-img does, then refused (blockgraph does not encrypt)', () => {
    // Everything QEMU refuses before it needs a secret: the same status, output and messages, and no file left.
    const opts = [
      'encrypt.format=luks',
      'encrypt.format=aes',
      'encryption=on',
      'encryption=off',
      'encrypt.key-secret=s0',
      'encrypt.iter-time=10,encrypt.format=luks',
      'encrypt.iter-time=abc',
      'encrypt.format=foo',
      'encryption=on,encrypt.format=luks',
      'encryption=off,encrypt.format=luks',
      'encrypt.format=luks,cluster_size=3',
      'encrypt.key-secret=s0,cluster_size=3',
      'encrypt_format=luks',
      'encrypt.foo=1',
      'cluster-size=4k',
    ];
    for (const o of opts) {
      it(`create -o ${o}`, async (ctx) => {
        need(ctx);
        t = await sub('create', ['-f', 'qcow2', '-o', o, 'x.qcow2', '1M']);
        expectSameOutput(t);
        expectSameFile(t, 'x.qcow2');
      });
    }
    const others: [string, string[]][] = [
      ['convert', ['-O', 'qcow2', '-o', 'encrypt.format=luks', 'std.qcow2', 'x.qcow2']],
      ['convert', ['-O', 'qcow2', '-o', 'encrypt.format=aes,encryption=on', 'std.qcow2', 'x.qcow2']],
      ['measure', ['-O', 'qcow2', '-o', 'encrypt.format=luks', '--size', '1G']],
      ['measure', ['-O', 'qcow2', '-o', 'encrypt.format=aes', '--size', '1G']],
      ['measure', ['-O', 'qcow2', '-o', 'encryption=on', '--size', '1G']],
      ['measure', ['-O', 'qcow2', '-o', 'encrypt.format=foo,encrypt.iter-time=5', 'std.qcow2']],
      ['measure', ['-O', 'qcow2', '-o', 'encrypt_format=luks', '--size', '1G']],
      ['amend', ['-o', 'encrypt.format=luks', 'std.qcow2']],
      ['amend', ['-o', 'encrypt.iter-time=10', 'std.qcow2']],
      ['amend', ['-o', 'encrypt.keyslot=1,encrypt.state=active', 'std.qcow2']],
      ['amend', ['-o', 'compat=1.1,encrypt.cipher-alg=aes-128', 'std.qcow2']],
      ['amend', ['-o', 'compat=1.1,foo=1', 'std.qcow2']],
      ['amend', ['-o', 'lazy-refcounts=on', 'std.qcow2']],
    ];
    sameAsQemu(others);
    // With a secret named, QEMU goes on to look it up ("No secret with id 's0'"); blockgraph stops there.
    const secret: [string, string[]][] = [
      ['create', ['-f', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=s0', 'x.qcow2', '1M']],
      ['measure', ['-O', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=s0', '--size', '1G']],
    ];
    for (const [cmd, args] of secret) {
      it(`${cmd} ${args.join(' ')}: refused, nothing created`, async (ctx) => {
        need(ctx);
        t = await sub(cmd, args);
        expect(t.q.stderr).toMatch(/No secret with id 's0'/);
        expect(t.b.status).toBe(t.q.status);
        expect(t.b.stderr).toMatch(/^blockgraph: (.*x\.qcow2: )?qcow2: encrypted images are not supported\n$/);
        expectSameFile(t, 'x.qcow2');
      });
    }
    it('-o help lists the encrypt.* options as qemu-img does', async (ctx) => {
      need(ctx);
      t = await sub('create', ['-f', 'qcow2', '-o', 'help']);
      const encryptLines = (out: string) => out.split('\n').filter((l) => /^ {2}encrypt/.test(l));
      expect(encryptLines(t.q.stdout)).toHaveLength(9);
      expect(encryptLines(t.b.stdout)).toEqual(encryptLines(t.q.stdout));
    });
  });

  describe('read-only=on in the image options is honoured: commands that write fail as in QEMU, nothing is written', () => {
    const img = (d: string, extra = '') => `driver=qcow2,file.filename=${join(d, 'std.qcow2')}${extra}`;
    const json = (d: string) => `json:{"driver":"qcow2","read-only":true,"file":{"driver":"file","filename":"${join(d, 'std.qcow2')}"}}`;
    const cases: [string, 'qemu-img' | 'qemu-io', (d: string) => string[]][] = [
      ['io --image-opts write', 'qemu-io', (d) => ['--image-opts', '-c', 'write -P 7 0 512', img(d, ',read-only=on')]],
      ['io open -o read-only=on, then write', 'qemu-io', (d) => ['-c', `open -o read-only=on ${join(d, 'std.qcow2')}`, '-c', 'write 0 512']],
      ['resize --image-opts', 'qemu-img', (d) => ['resize', '--image-opts', img(d, ',read-only=on'), '+1M']],
      ['amend json:', 'qemu-img', (d) => ['amend', '-o', 'lazy_refcounts=on', json(d)]],
      ['snapshot -c json:', 'qemu-img', (d) => ['snapshot', '-c', 's1', json(d)]],
      ['info with read-only=on reads', 'qemu-img', (d) => ['info', '--image-opts', img(d, ',read-only=on')]],
      ['read-only=bogus', 'qemu-img', (d) => ['info', '--image-opts', img(d, ',read-only=bogus')]],
      // Keys that Object.prototype also has are options like any other: refused as unknown.
      ['an option named toString', 'qemu-img', (d) => ['info', '--image-opts', img(d, ',constructor=1')]],
      ['json: with a key named twice', 'qemu-img', (d) => ['info', `json:{"driver":"qcow2","file":{"driver":"file","filename":"${join(d, 'std.qcow2')}"},"driver":"raw"}`]],
    ];
    for (const [name, tool, args] of cases) {
      it(name, async (ctx) => {
        need(ctx);
        t = await twin(refImages, args, tool);
        expect({ status: t.b.status, stdout: t.b.stdout.replace(/blockgraph/g, 'qemu-img') }).toEqual({ status: t.q.status, stdout: t.q.stdout });
        // qemu-io's "no file open" line is a line of its own, not a continuation of the error.
        expect(t.b.stderr).toBe(tool === 'qemu-io' ? t.q.stderr.replace(/^qemu-io: /gm, 'blockgraph: ') : normaliseStderr(t.q.stderr));
        expectSameFile(t, 'std.qcow2');
      });
    }
  });

  describe('an empty format name is an unknown format, not a request to probe; -O and --target-image-opts exclude each other', () => {
    const cases: [string, string[], string][] = [
      ['info', ['-f', '', 'std.qcow2'], 'std.qcow2'],
      ['map', ['-f', '', 'std.qcow2'], 'std.qcow2'],
      ['check', ['-f', '', 'std.qcow2'], 'std.qcow2'],
      ['convert', ['-O', '', 'std.qcow2', 'x.qcow2'], 'x.qcow2'],
      ['convert', ['-n', '--target-image-opts', '-O', 'raw', 'std.qcow2', 'driver=qcow2,file.filename=x.qcow2'], 'x.qcow2'],
    ];
    for (const [cmd, args, file] of cases) {
      it(`${cmd} ${args.join(' ')}`, async (ctx) => {
        need(ctx);
        t = await sub(cmd, args);
        expectSameOutput(t);
        expectSameFile(t, file);
      });
    }
  });

  describe('check -r on an image marked corrupt: opened for repair (BDRV_O_CHECK), repaired and unmarked as by QEMU', () => {
    /**
     * std.qcow2 with the corrupt bit set (incompatible features, bit 1), optionally with a leaked cluster too: one
     * more cluster at the end of the file with refcount 1 (16-bit entries in the refcount block at 0x20000).
     */
    const corrupt = (leak: boolean) => (d: string) => {
      refImages(d);
      const f = join(d, 'std.qcow2');
      const fd = openSync(f, 'r+');
      try {
        writeSync(fd, new Uint8Array([2]), 0, 1, 79);
        if (leak) {
          const cluster = Math.ceil(statSync(f).size / 65536);
          writeSync(fd, new Uint8Array(65536), 0, 65536, cluster * 65536);
          writeSync(fd, new Uint8Array([0, 1]), 0, 2, 0x20000 + cluster * 2);
        }
      } finally {
        closeSync(fd);
      }
    };
    for (const leak of [false, true]) {
      for (const args of [[], ['-r', 'leaks'], ['-r', 'all'], ['-r', 'all', '--output=json']]) {
        it(`check ${args.join(' ')}${leak ? ' (and a leak)' : ''}`, async (ctx) => {
          need(ctx);
          t = await twin(corrupt(leak), (d) => ['check', ...args, join(d, 'std.qcow2')]);
          expectSameOutput(t);
          expectSameFile(t, 'std.qcow2');
        });
      }
    }
  });

  describe('info, map, check', () => {
    const images = ['std.qcow2', 'v2.qcow2', 'el2.qcow2', 'base.qcow2', 'overlay.qcow2', 'comp.qcow2', 'compz.qcow2'];
    for (const img of images) {
      it(`info/map/check ${img}`, async (ctx) => {
        need(ctx);
        for (const [cmd, args] of [
          ['info', ['--output=json', img]],
          ['info', [img]],
          ['map', ['--output=json', img]],
          ['check', [img]],
          ['check', ['--output=json', img]],
        ] as [string, string[]][]) {
          t?.cleanup();
          t = await sub(cmd, args);
          expectSameOutput(t);
        }
      });
    }
    it('map (human) of a compressed image fails as in qemu-img', async (ctx) => {
      need(ctx);
      t = await sub('map', ['comp.qcow2']);
      expectSameOutput(t);
    });
    it('info --backing-chain and map of an overlay', async (ctx) => {
      need(ctx);
      for (const args of [['--backing-chain', 'overlay.qcow2'], ['--backing-chain', '--output=json', 'overlay.qcow2']]) {
        t?.cleanup();
        t = await sub('info', args);
        expectSameOutput(t);
      }
      t?.cleanup();
      t = await sub('map', ['overlay.qcow2']);
      expectSameOutput(t);
    });
    it('json: and --image-opts forms', async (ctx) => {
      need(ctx);
      t = await sub('info', ['--image-opts', '--output=json', 'driver=qcow2,file.filename=std.qcow2']);
      expectSameOutput(t);
    });
    it('check finds leaks (exit 3) and repairs them with -r leaks', async (ctx) => {
      need(ctx);
      for (const args of [['leak.qcow2'], ['--output=json', 'leak.qcow2'], ['-r', 'leaks', 'leak.qcow2'], ['leak.qcow2']]) {
        t?.cleanup();
        t = await sub('check', args, faultyImages);
        expectSameOutput(t);
      }
    });
    it('check finds corruptions (exit 2); -r leaks cannot fix them; -r all does', async (ctx) => {
      need(ctx);
      for (const args of [['corrupt.qcow2'], ['--output=json', 'corrupt.qcow2'], ['-r', 'leaks', 'corrupt.qcow2'], ['-r', 'all', '--output=json', 'corrupt.qcow2']]) {
        t?.cleanup();
        t = await sub('check', args, faultyImages);
        expectSameOutput(t);
      }
      expectSameFile(t!, 'corrupt.qcow2');
    });
  });

  describe('compare and convert', () => {
    const cmp: string[][] = [
      ['std.qcow2', 'a.raw'],
      ['-s', 'std.qcow2', 'a.raw'],
      ['overlay.qcow2', 'base.qcow2'],
      ['comp.qcow2', 'lab.raw'],
      ['compz.qcow2', 'comp.qcow2'],
      ['-p', 'std.qcow2', 'v2.qcow2'],
    ];
    for (const args of cmp) {
      it(`compare ${args.join(' ')}`, async (ctx) => {
        need(ctx);
        t = await sub('compare', args);
        expectSameOutput(t);
      });
    }
    const conv: [string[], string, boolean | 'eof-unaligned'][] = [
      [['-O', 'qcow2', 'a.raw', 'x.qcow2'], 'x.qcow2', true],
      [['-O', 'qcow2', 'std.qcow2', 'x.qcow2'], 'x.qcow2', true],
      [['-O', 'qcow2', '-o', 'cluster_size=4k', 'lab.raw', 'x.qcow2'], 'x.qcow2', true],
      [['-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2', 'overlay.qcow2', 'x.qcow2'], 'x.qcow2', true],
      [['-O', 'raw', 'overlay.qcow2', 'x.raw'], 'x.raw', true],
      [['-O', 'raw', 'comp.qcow2', 'x.raw'], 'x.raw', true],
      // Compressed output is compared from the real bin (spawned).
      [['-c', '-O', 'qcow2', '-o', 'compression_type=zstd', 'lab.raw', 'x.qcow2'], 'x.qcow2', 'eof-unaligned'],
      // zlib streams depend on the zlib build (Node bundles its own): same clusters and contents, maybe other bytes.
      [['-c', '-O', 'qcow2', 'lab.raw', 'x.qcow2'], 'x.qcow2', false],
      [['-p', '-O', 'qcow2', 'std.qcow2', 'x.qcow2'], 'x.qcow2', true],
      [['-O', 'qcow2', 'a.raw', 'lab.raw', 'x.qcow2'], 'x.qcow2', true],
    ];
    for (const [args, out, bytes] of conv) {
      it(`convert ${args.join(' ')}`, async (ctx) => {
        need(ctx);
        t = await sub('convert', args, refImages, args.includes('-c'));
        expectSameOutput(t);
        expectSameFile(t, out, { bytes, fmt: out.endsWith('.raw') ? 'raw' : 'qcow2' });
      });
    }
  });

  describe('resize', () => {
    for (const args of [['std.qcow2', '+1M'], ['std.qcow2', '1G'], ['--shrink', 'std.qcow2', '16M'], ['std.qcow2', '16M'], ['v2.qcow2', '128M']]) {
      it(`resize ${args.join(' ')}`, async (ctx) => {
        need(ctx);
        t = await sub('resize', args);
        expect({ status: t.b.status, stdout: t.b.stdout }).toEqual({ status: t.q.status, stdout: t.q.stdout });
        expect(t.b.stderr.replace(/\n/g, ' ')).toBe(normaliseStderr(t.q.stderr).replace(/\n/g, ' '));
        expectSameFile(t, args[args.length - 2]!);
      });
    }
  });

  describe('snapshot, amend, rebase, measure: as QEMU once the driver offers them, else one clear line', () => {
    const cases: [string, string[], string][] = [
      ['snapshot', ['-c', 'snap1', 'std.qcow2'], 'std.qcow2'],
      ['snapshot', ['-l', 'std.qcow2'], 'std.qcow2'],
      ['snapshot', ['-d', 'nope', 'std.qcow2'], 'std.qcow2'],
      ['amend', ['-o', 'lazy_refcounts=on', 'std.qcow2'], 'std.qcow2'],
      ['amend', ['-o', 'compat=0.10', 'std.qcow2'], 'std.qcow2'],
      ['amend', ['-o', 'cluster_size=4k', 'std.qcow2'], 'std.qcow2'],
      ['rebase', ['-u', '-b', 'other.qcow2', '-F', 'qcow2', 'overlay.qcow2'], 'overlay.qcow2'],
      ['rebase', ['-b', '', 'overlay.qcow2'], 'overlay.qcow2'],
      ['rebase', ['-b', 'std.qcow2', '-F', 'qcow2', 'overlay.qcow2'], 'overlay.qcow2'],
      ['measure', ['-O', 'qcow2', '--size', '1G'], ''],
      ['measure', ['-O', 'qcow2', 'std.qcow2'], ''],
    ];
    for (const [cmd, args, file] of cases) {
      it(`${cmd} ${args.join(' ')}`, async (ctx) => {
        need(ctx);
        t = await sub(cmd, args);
        const unsupported = /does not support|Operation not supported/.test(t.b.stderr) && !/does not support|Operation not supported/.test(t.q.stderr);
        if (unsupported) {
          expect(t.b.status).toBe(1);
          expect(t.b.stderr.split('\n').filter(Boolean)).toHaveLength(1);
        } else {
          expect({ status: t.b.status, stdout: t.b.stdout.replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, 'DATE') }).toEqual({
            status: t.q.status,
            stdout: t.q.stdout.replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, 'DATE'),
          });
          if (file && cmd !== 'snapshot') expectSameFile(t, file);
        }
      });
    }
  });

  describe('io on qcow2 (golden outputs)', () => {
    // [name, commands, byte-identical file expected (default true)]
    const seqs: [string, string[], boolean?][] = [
      ['writes, reads, map, alloc', ['write -P 0xab 0 64k', 'write -z 128k 64k', 'read -P 0xab 0 64k', 'map', 'alloc 0 1M', 'alloc 64k', 'length']],
      ['discard and zero writes', ['discard 0 64k', 'write -z -u 4M 64k', 'map', 'read -P 0 0 64k']],
      ['compressed write', ['write -c -P 0x42 1M 64k', 'read -P 0x42 1M 64k', 'write -c 0 512', 'map']],
      ['compressed write of two clusters, the first allocated', ['write -P 1 16M 1', 'write -c -P 0x44 16M 128k', 'read -P 0x44 16448k 64k', 'map']],
      ['partial cluster writes', ['write -P 1 100 1', 'write -P 2 65535 2', 'read -P 2 65535 2', 'read -v 96 16', 'map']],
      ['truncate', ['truncate 128M', 'length', 'write -P 3 127M 64k', 'map']],
      ['aio', ['aio_write -P 7 0 64k', 'aio_write -P 8 64k 64k', 'aio_flush', 'readv -P 7 0 32k 32k', 'readv -P 8 64k 64k']],
      ['info', ['info']],
    ];
    for (const [name, cmds, bytes = true] of seqs) {
      it(name, async (ctx) => {
        need(ctx);
        t = await twin(refImages, (d) => ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), join(d, 'std.qcow2')], 'qemu-io');
        const vm = (s: string) => s.replace(/^vm state offset: .*$/m, 'vm state offset: X');
        // aio requests complete in whatever order the block layer finishes them (QEMU's too): compare as a set.
        const norm = (s: string) => (name === 'aio' ? (s.match(/.*\n.*\n/g) ?? []).sort().join('') : s);
        expect(norm(vm(filterQemuIo(t.b.stdout)))).toBe(norm(vm(filterQemuIo(t.q.stdout))));
        expect(t.b.stderr).toBe(normaliseStderr(t.q.stderr, 'qemu-io'));
        expect(t.b.status).toBe(t.q.status);
        expectSameFile(t, 'std.qcow2', { bytes });
      });
    }
    it('compressed write over an allocated cluster: the clusters started before the failure are written', async (ctx) => {
      // QEMU writes a compressed request's clusters as tasks, 8 at a time; the first cluster fails (it is allocated)
      // once compressed, and no task starts after a failure is seen. How many clusters QEMU has written by then
      // depends on which of its compression threads finishes first: clusters 1-7, 1-8 (the usual case: one task
      // completes and starts another before the failure), or more on a loaded machine. blockgraph writes 1-8.
      need(ctx);
      const cmds = ['write -P 1 32M 512', 'write -c -P 0x33 32M 768k', 'read -P 0x33 32832k 448k', 'map'];
      t = await twin(refImages, (d) => ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), join(d, 'std.qcow2')], 'qemu-io');
      const head = (out: string) => filterQemuIo(out).split('\n').slice(0, 7).join('\n');
      expect(head(t.b.stdout)).toBe(head(t.q.stdout));
      expect(filterQemuIo(t.b.stdout)).toMatch(/write failed: Input\/output error\nread 458752\/458752 bytes at offset 33619968\n/);
      expect(t.b.stderr).toBe(normaliseStderr(t.q.stderr, 'qemu-io'));
      expect(t.b.status).toBe(t.q.status);
      // The allocated run at 32 MiB: the first cluster plus those written.
      const written = (out: string) => {
        const m = /^(\d+) KiB \(0x[0-9a-f]+\) bytes +allocated at offset 32 MiB/m.exec(out);
        return m ? Number(m[1]) / 64 - 1 : -1;
      };
      expect(written(t.b.stdout)).toBe(8);
      expect(written(t.q.stdout)).toBeGreaterThanOrEqual(7);
      expect(written(t.q.stdout)).toBeLessThanOrEqual(11);
      expect(qemuImg('check', join(t.bdir, 'std.qcow2')).stdout).toMatch(/No errors were found on the image\./);
      // Clusters 9-11 were never written.
      expect(must('qemu-io', '-f', 'qcow2', '-c', 'read -P 0 33344k 192k', join(t.bdir, 'std.qcow2'))).not.toMatch(/Pattern verification failed/);
    });
    it('-C: copy-on-read fills the overlay from its backing file (needs @blockgraph/filter-cor)', async (ctx) => {
      need(ctx);
      if (!(await driverAvailable('@blockgraph/filter-cor', 'copyOnReadDriver'))) throw new Error('@blockgraph/filter-cor is not installed');
      t = await twin(refImages, (d) => ['-C', '-f', 'qcow2', '-c', 'read -P 0x11 0 64k', '-c', 'read -P 0x11 256k 128k', '-c', 'map', join(d, 'overlay.qcow2')], 'qemu-io');
      expect(filterQemuIo(t.b.stdout)).toBe(filterQemuIo(t.q.stdout));
      expect(t.b.status).toBe(t.q.status);
      expectSameFile(t, 'overlay.qcow2');
    });
    it('zero writes of part of a cluster over a raw backing file: a zero cluster where the rest reads as zeroes', async (ctx) => {
      need(ctx);
      // 2M, 3M: holes in the (shorter) raw backing file; 70M: past its end; 4M: its data (a normal write of zeroes).
      const cmds = ['write -z 2M 512', 'write -z -u 3M 100', 'write -z 70M 4k', 'write -z 4M 512', 'map', 'read -P 0 4M 512', 'read -P 0xcd 4195328 512'];
      // Built in place, not copied from a template: a copy would fill the backing file's holes.
      const setup = (d: string) => {
        must('qemu-img', 'create', '-q', '-f', 'raw', join(d, 'b.raw'), '64M');
        must('qemu-io', '-f', 'raw', '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0xcd 4M 64k', join(d, 'b.raw'));
        must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'b.raw', '-F', 'raw', join(d, 'rawov.qcow2'), '80M');
      };
      t = await twin(setup, (d) => ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), join(d, 'rawov.qcow2')], 'qemu-io');
      expect(filterQemuIo(t.b.stdout)).toBe(filterQemuIo(t.q.stdout));
      expect(t.b.status).toBe(t.q.status);
      expectSameFile(t, 'rawov.qcow2');
    });
    it('overlay: reads fall through to the backing file', async (ctx) => {
      need(ctx);
      t = await twin(refImages, (d) => ['-f', 'qcow2', '-c', 'read -P 0x11 0 64k', '-c', 'read -P 0x22 64k 64k', '-c', 'map', '-c', 'alloc 0 2M', join(d, 'overlay.qcow2')], 'qemu-io');
      expect(filterQemuIo(t.b.stdout)).toBe(filterQemuIo(t.q.stdout));
      expect(t.b.status).toBe(t.q.status);
    });
  });
});
