/**
 * qemu-img subcommands on raw images: blockgraph and qemu-img 7.2 run on identical inputs; stdout, exit code,
 * error lines and the produced images must agree.
 */
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { cachedSetup, describeWithQemu, must, normaliseStderr, qemuImg, twin as twin2, type Twin } from './helpers.js';

const twin = (cmd: string, setup: (d: string) => void, args: (d: string) => string[]): Promise<Twin> => twin2(setup, (d) => [cmd, ...args(d)]);

/** A 4 MiB raw image: data at 0 (64k), 1M (4k), 3M+512 (1k), the rest holes. */
function rawImage(dir: string, name = 'a.raw', size = '4M'): void {
  const f = join(dir, name);
  must('qemu-img', 'create', '-q', '-f', 'raw', f, size);
  const writes = ['write -P 0x11 0 64k', 'write -P 0x22 1M 4k', 'write -P 0x33 3145728 1k'];
  const bytes = Number.parseInt(size) * 1024 * 1024;
  must('qemu-io', '-f', 'raw', ...writes.filter((_, i) => [0, 1048576, 3145728][i]! < bytes).flatMap((w) => ['-c', w]), f);
}

const rawA = cachedSetup((d) => rawImage(d));

let t: Twin | undefined;
afterEach(() => {
  t?.cleanup();
  t = undefined;
});

function expectSame(tw: Twin, opts: { stderr?: boolean } = {}): void {
  expect({ status: tw.b.status, stdout: tw.b.stdout }).toEqual({ status: tw.q.status, stdout: tw.q.stdout });
  if (opts.stderr !== false) expect(tw.b.stderr).toBe(normaliseStderr(tw.q.stderr));
}

/** The two produced images have the same bytes (qemu-img compare) and the same allocation map. */
function expectSameImage(tw: Twin, name: string, fmt = 'raw'): void {
  const q = join(tw.qdir, name);
  const b = join(tw.bdir, name);
  expect(existsSync(b)).toBe(existsSync(q));
  if (!existsSync(q)) return;
  expect(statSync(b).size).toBe(statSync(q).size);
  const cmp = qemuImg('compare', '-f', fmt, '-F', fmt, q, b);
  expect(cmp.stdout).toBe('Images are identical.\n');
  const mq = qemuImg('map', '--output=json', '-f', fmt, q).stdout;
  const mb = qemuImg('map', '--output=json', '-f', fmt, b).stdout;
  expect(mb).toBe(mq);
}

describeWithQemu('create (raw)', ['qemu-img', 'qemu-io'], () => {
  const cases: string[][] = [
    ['-f', 'raw', 'x.raw', '1M'],
    ['-f', 'raw', 'x.raw', '100000'],
    ['-f', 'raw', 'x.raw', '1.5M'],
    ['-f', 'raw', 'x.raw', '0'],
    ['x.raw', '64k'],
    ['-q', '-f', 'raw', 'x.raw', '1M'],
    ['-f', 'raw', '-o', 'preallocation=full', 'x.raw', '1M'],
    ['-f', 'raw', '-o', 'preallocation=falloc', 'x.raw', '2M'],
    ['-f', 'raw', '-o', 'size=2M', 'x.raw'],
    ['-f', 'raw', '-o', 'size=1M,size=3M', 'x.raw'],
    ['-fraw', 'x.raw', '0x10000'],
  ];
  for (const args of cases) {
    it(`create ${args.join(' ')}`, async () => {
      t = await twin('create', 
        () => undefined,
        (d) => args.map((a) => (a === 'x.raw' ? join(d, a) : a)),
      );
      expectSame(t);
      expectSameImage(t, 'x.raw');
    });
  }
  const errors: string[][] = [
    ['-f', 'raw', 'x.raw', '1x'],
    ['-f', 'raw', 'x.raw'],
    ['-f', 'raw', 'x.raw', '-5'],
    ['-f', 'foo', 'x.raw', '1M'],
    ['-f', 'raw', '-o', 'size=1M', 'x.raw', '2M'],
    ['-f', 'raw', '-o', 'bogus=1', 'x.raw', '1M'],
    ['-f', 'raw', '-b', 'y.raw', 'x.raw', '1M'],
    ['-f', 'raw', '-o', 'size=1M,', 'x.raw'],
    ['-f', 'raw'],
    ['-f', 'raw', 'x.raw', '1M', 'extra'],
    ['-f', 'raw', 'x.raw', '18446744073709551616'],
    ['--bogus', 'x.raw', '1M'],
  ];
  for (const args of errors) {
    it(`create ${args.join(' ')} fails the same way and creates nothing`, async () => {
      t = await twin('create', 
        () => undefined,
        (d) => args.map((a) => (a === 'x.raw' ? join(d, a) : a)),
      );
      expect(t.q.status).not.toBe(0);
      expectSame(t);
      expect(t.b.stderr.split('\n').filter(Boolean)).toHaveLength(1);
      expect(existsSync(join(t.bdir, 'x.raw'))).toBe(false);
    });
  }
  it('-o help lists the options (names as qemu-img)', async () => {
    t = await twin('create', 
      () => undefined,
      () => ['-f', 'raw', '-o', 'help'],
    );
    expect(t.b.status).toBe(0);
    expect(t.b.stdout).toMatch(/^Supported raw options:\n/);
    expect(t.b.stdout).toContain('  size=<size>            - Virtual disk size\n');
    expect(t.b.stdout).toMatch(/\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n$/);
  });
});

describeWithQemu('info (raw)', ['qemu-img', 'qemu-io'], () => {
  const forms: [string, (d: string) => string[]][] = [
    ['human', (d) => [join(d, 'a.raw')]],
    ['json', (d) => ['--output=json', join(d, 'a.raw')]],
    ['-f raw json', (d) => ['-f', 'raw', '--output', 'json', join(d, 'a.raw')]],
    ['-f file', (d) => ['-f', 'file', join(d, 'a.raw')]],
    ['-U', (d) => ['-U', '--output=json', join(d, 'a.raw')]],
    ['--backing-chain json', (d) => ['--backing-chain', '--output=json', join(d, 'a.raw')]],
    ['--backing-chain human', (d) => ['--backing-chain', join(d, 'a.raw')]],
    ['json: filename', (d) => ['--output=json', `json:{"driver":"raw","file":{"driver":"file","filename":"${join(d, 'a.raw')}"}}`]],
    ['json: file only', (d) => ['--output=json', `json:{"file.filename":"${join(d, 'a.raw')}"}`]],
    ['--image-opts', (d) => ['--image-opts', `driver=raw,file.driver=file,file.filename=${join(d, 'a.raw')}`]],
    ['--image-opts protocol', (d) => ['--output=json', '--image-opts', `driver=file,filename=${join(d, 'a.raw')}`]],
    ['--image-opts short-form boolean (deprecated)', (d) => ['--image-opts', `driver=raw,file.filename=${join(d, 'a.raw')},force-share`]],
    ['odd size', (d) => ['--output=json', '-f', 'raw', join(d, 'a.raw')]],
  ];
  for (const [name, args] of forms) {
    it(name, async () => {
      t = await twin('info', rawA, args);
      expectSame(t);
    });
  }
  it('a comma in a file name is escaped by doubling in --image-opts', async () => {
    t = await twin('info', 
      (d) => rawImage(d, 'a,b.raw'),
      (d) => ['--image-opts', `driver=raw,file.filename=${join(d, 'a,,b.raw')}`],
    );
    expectSame(t);
  });
  const errors: [string, (d: string) => string[]][] = [
    ['missing file', (d) => [join(d, 'nope.raw')]],
    ['no file name', () => []],
    ['two file names', (d) => [join(d, 'a.raw'), join(d, 'a.raw')]],
    ['unknown format', (d) => ['-f', 'foo', join(d, 'a.raw')]],
    ['bad --output', (d) => ['--output=xml', join(d, 'a.raw')]],
    ['unknown option', (d) => ['-z', join(d, 'a.raw')]],
    ['unknown long option', (d) => ['--bogus', join(d, 'a.raw')]],
    ['missing option argument', () => ['-f']],
    ['--image-opts with -f', (d) => ['-f', 'raw', '--image-opts', `driver=raw,file.filename=${join(d, 'a.raw')}`]],
    // A bare first element names `file`, a node reference; written-out options need a driver or a file.
    ['--image-opts bare name', (d) => ['--image-opts', join(d, 'a.raw')]],
    ['--image-opts neither driver nor file', (d) => ['--image-opts', `filename=${join(d, 'a.raw')}`]],
    ['--image-opts a format with filename', (d) => ['--image-opts', `driver=raw,filename=${join(d, 'a.raw')}`]],
    ['json: filename only', (d) => [`json:{"filename":"${join(d, 'a.raw')}"}`]],
    ['json: format with filename', (d) => [`json:{"driver":"raw","filename":"${join(d, 'a.raw')}"}`]],
  ];
  for (const [name, args] of errors) {
    it(`error: ${name}`, async () => {
      t = await twin('info', rawA, args);
      expect(t.q.status).not.toBe(0);
      expectSame(t);
      expect(t.b.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    });
  }
});

describeWithQemu('map (raw)', ['qemu-img', 'qemu-io'], () => {
  const forms: [string, (d: string) => string[]][] = [
    ['human', (d) => [join(d, 'a.raw')]],
    ['json', (d) => ['--output=json', join(d, 'a.raw')]],
    ['-f raw json', (d) => ['-f', 'raw', '--output=json', join(d, 'a.raw')]],
    ['-f file json', (d) => ['-f', 'file', '--output=json', join(d, 'a.raw')]],
    ['window', (d) => ['--output=json', '--start-offset=4096', '--max-length=1100000', join(d, 'a.raw')]],
    ['window human', (d) => ['--start-offset', '1M', '--max-length', '2M', join(d, 'a.raw')]],
    ['window past the end', (d) => ['--output=json', '--start-offset=3M', '--max-length=100M', join(d, 'a.raw')]],
  ];
  for (const [name, args] of forms) {
    it(name, async () => {
      t = await twin('map', rawA, args);
      expectSame(t);
    });
  }
  it('an image that is all data', async () => {
    t = await twin('map', 
      (d) => {
        writeFileSync(join(d, 'full.raw'), new Uint8Array(256 * 1024).fill(7));
      },
      (d) => ['--output=json', join(d, 'full.raw')],
    );
    expectSame(t);
  });
  it('an empty image', async () => {
    t = await twin('map', 
      (d) => writeFileSync(join(d, 'e.raw'), new Uint8Array(0)),
      (d) => ['--output=json', '-f', 'raw', join(d, 'e.raw')],
    );
    expectSame(t);
  });
  it('error: bad --start-offset', async () => {
    t = await twin('map', rawA, (d) => ['--start-offset=1x', join(d, 'a.raw')]);
    expectSame(t);
  });
});

describeWithQemu('check (raw)', ['qemu-img', 'qemu-io'], () => {
  for (const extra of [[], ['--output=json'], ['-r', 'leaks'], ['-f', 'raw'], ['-q']]) {
    it(`check ${extra.join(' ')} → 63, "does not support checks"`, async () => {
      t = await twin('check', rawA, (d) => [...extra, join(d, 'a.raw')]);
      expect(t.q.status).toBe(63);
      expectSame(t);
    });
  }
  it('bad -r value', async () => {
    t = await twin('check', rawA, (d) => ['-r', 'bogus', join(d, 'a.raw')]);
    expectSame(t);
  });
});

describeWithQemu('compare (raw)', ['qemu-img', 'qemu-io'], () => {
  /** a.raw and variants: b = a, c = a with one changed byte, d = a grown by 2M (zeros), e = d with data past a's end. */
  const setup = cachedSetup((d: string) => {
    rawImage(d);
    rawImage(d, 'b.raw');
    rawImage(d, 'c.raw');
    must('qemu-io', '-f', 'raw', '-c', 'write -P 0x44 1050000 1', join(d, 'c.raw'));
    rawImage(d, 'd.raw', '6M');
    rawImage(d, 'e.raw', '6M');
    must('qemu-io', '-f', 'raw', '-c', 'write -P 0x55 5M 512', join(d, 'e.raw'));
    rawImage(d, 'f.raw');
    must('qemu-io', '-f', 'raw', '-c', 'write -P 0x66 2M 512', join(d, 'f.raw'));
  });
  const cases: [string, string[]][] = [
    ['identical', ['a.raw', 'b.raw']],
    ['itself', ['a.raw', 'a.raw']],
    ['one byte differs', ['a.raw', 'c.raw']],
    ['data where the other has a hole', ['a.raw', 'f.raw']],
    ['data where the other has a hole (swapped)', ['f.raw', 'a.raw']],
    ['size mismatch, zero tail', ['a.raw', 'd.raw']],
    ['size mismatch, data in tail', ['a.raw', 'e.raw']],
    ['size mismatch, data in tail (swapped)', ['e.raw', 'a.raw']],
    ['strict, size mismatch', ['-s', 'a.raw', 'd.raw']],
    ['strict, identical', ['-s', 'a.raw', 'b.raw']],
    ['quiet', ['-q', 'a.raw', 'c.raw']],
    ['with formats', ['-f', 'raw', '-F', 'raw', 'a.raw', 'b.raw']],
    ['progress', ['-p', 'a.raw', 'd.raw']],
    ['progress, mismatch', ['-p', 'a.raw', 'c.raw']],
    ['missing file', ['a.raw', 'nope.raw']],
    ['one file', ['a.raw']],
    ['bad source cache', ['-T', 'bogus', 'a.raw', 'b.raw']],
  ];
  for (const [name, args] of cases) {
    it(name, async () => {
      t = await twin('compare', setup, (d) => args.map((a) => (a.endsWith('.raw') ? join(d, a) : a)));
      expectSame(t);
    });
  }
});

describeWithQemu('convert (raw → raw)', ['qemu-img', 'qemu-io'], () => {
  const setup = cachedSetup((d: string) => {
    rawImage(d);
    rawImage(d, 'b.raw', '1M');
    writeFileSync(join(d, 'odd.bin'), new Uint8Array(1000).fill(9));
    writeFileSync(join(d, 'full.raw'), new Uint8Array(3 * 1024 * 1024).map((_, i) => (i % 7 === 0 ? 0 : i & 0xff)));
    // Mixed zero runs inside allocated data: 16k data, 2k zero, 16k data, 64k zero, 4k data.
    const mixed = new Uint8Array(256 * 1024);
    mixed.fill(1, 0, 16384);
    mixed.fill(2, 18432, 34816);
    mixed.fill(3, 100352, 104448);
    writeFileSync(join(d, 'mixed.raw'), mixed);
    must('qemu-img', 'create', '-q', '-f', 'raw', join(d, 'target.raw'), '8M');
    must('qemu-io', '-f', 'raw', '-c', 'write -P 0x77 0 8M', join(d, 'target.raw'));
  });
  const cases: [string, string[], string][] = [
    ['plain', ['a.raw', 'x.raw'], 'x.raw'],
    ['-O raw -f raw', ['-f', 'raw', '-O', 'raw', 'a.raw', 'x.raw'], 'x.raw'],
    ['-S 0 (fully allocated)', ['-S', '0', 'a.raw', 'x.raw'], 'x.raw'],
    ['-S 64k', ['-S', '64k', 'mixed.raw', 'x.raw'], 'x.raw'],
    ['-S 512', ['-S', '512', 'mixed.raw', 'x.raw'], 'x.raw'],
    ['zero runs inside data', ['mixed.raw', 'x.raw'], 'x.raw'],
    ['dense data', ['full.raw', 'x.raw'], 'x.raw'],
    ['concatenation', ['a.raw', 'b.raw', 'odd.bin', 'x.raw'], 'x.raw'],
    ['odd-sized source', ['odd.bin', 'x.raw'], 'x.raw'],
    ['-m 1', ['-m', '1', 'a.raw', 'x.raw'], 'x.raw'],
    ['-W -m 16', ['-W', '-m', '16', 'full.raw', 'x.raw'], 'x.raw'],
    ['-n into an existing larger image', ['-n', 'a.raw', 'target.raw'], 'target.raw'],
    ['-n --target-is-zero', ['-n', '--target-is-zero', 'b.raw', 'target.raw'], 'target.raw'],
    ['-p', ['-p', 'a.raw', 'x.raw'], 'x.raw'],
    ['-q -p', ['-q', '-p', 'a.raw', 'x.raw'], 'x.raw'],
    ['-t writeback -T none source cache', ['-t', 'writeback', 'a.raw', 'x.raw'], 'x.raw'],
    ['-o preallocation=full', ['-o', 'preallocation=full', 'b.raw', 'x.raw'], 'x.raw'],
  ];
  for (const [name, args, out] of cases) {
    it(name, async () => {
      t = await twin('convert', setup, (d) => args.map((a) => (/\.(raw|bin)$/.test(a) ? join(d, a) : a)));
      expectSame(t);
      expectSameImage(t, out);
    });
  }
  const errors: [string, string[]][] = [
    ['target too small with -n', ['-n', 'a.raw', 'b.raw']],
    ['-o with -n', ['-n', '-o', 'size=1M', 'a.raw', 'target.raw']],
    ['bad -S', ['-S', '1000', 'a.raw', 'x.raw']],
    ['bad -m', ['-m', '17', 'a.raw', 'x.raw']],
    ['-c on raw', ['-c', 'a.raw', 'x.raw']],
    ['no target', ['a.raw']],
    ['missing source', ['nope.raw', 'x.raw']],
    ['unknown output format', ['-O', 'foo', 'a.raw', 'x.raw']],
    ['backing file for raw', ['-B', 'b.raw', 'a.raw', 'x.raw']],
    ['--target-is-zero without -n', ['--target-is-zero', 'a.raw', 'x.raw']],
    ['-C with -S', ['-C', '-S', '4k', 'a.raw', 'x.raw']],
  ];
  for (const [name, args] of errors) {
    it(`error: ${name}`, async () => {
      t = await twin('convert', setup, (d) => args.map((a) => (/\.(raw|bin)$/.test(a) ? join(d, a) : a)));
      expect(t.q.status).not.toBe(0);
      expectSame(t);
      expect(existsSync(join(t.bdir, 'x.raw'))).toBe(existsSync(join(t.qdir, 'x.raw')));
      // -n targets are not modified on argument errors.
      expect(readFileSync(join(t.bdir, 'b.raw')).equals(readFileSync(join(t.qdir, 'b.raw')))).toBe(true);
    });
  }
  it('-o help', async () => {
    t = await twin('convert', setup, () => ['-O', 'raw', '-o', 'help']);
    expect(t.b.status).toBe(0);
    expect(t.b.stdout).toMatch(/^Supported raw options:\n/);
  });
});

describeWithQemu('resize (raw)', ['qemu-img', 'qemu-io'], () => {
  const cases: string[][] = [
    ['-f', 'raw', 'a.raw', '8M'],
    ['-f', 'raw', 'a.raw', '+1M'],
    ['-f', 'raw', '--shrink', 'a.raw', '-1M'],
    ['-f', 'raw', '--shrink', 'a.raw', '2M'],
    ['-f', 'raw', '--preallocation=full', 'a.raw', '+1M'],
    ['-f', 'raw', '--preallocation=falloc', 'a.raw', '5M'],
    ['-q', '-f', 'raw', 'a.raw', '5M'],
    ['-f', 'raw', 'a.raw', '4M'],
    ['--image-opts', 'driver=raw,file.filename=a.raw', '6M'],
  ];
  for (const args of cases) {
    it(`resize ${args.join(' ')}`, async () => {
      t = await twin('resize', rawA, (d) => args.map((a) => a.replace(/(^|=)a\.raw$/, `$1${join(d, 'a.raw')}`)));
      expectSame(t);
      expectSameImage(t, 'a.raw');
    });
  }
  const errors: string[][] = [
    ['-f', 'raw', 'a.raw', '2M'],
    ['-f', 'raw', 'a.raw', '-10M'],
    ['-f', 'raw', '--preallocation=bogus', 'a.raw', '+1M'],
    ['-f', 'raw', '--preallocation=full', 'a.raw', '1M'],
    ['-f', 'raw', 'a.raw', '99999999999E'],
    ['-f', 'raw', 'a.raw'],
    ['a.raw', '1M', '2M'],
    ['nope.raw', '1M'],
  ];
  for (const args of errors) {
    it(`error: resize ${args.join(' ')} leaves the image alone`, async () => {
      t = await twin('resize', rawA, (d) => args.map((a) => (/\.raw$/.test(a) ? join(d, a) : a)));
      expect(t.q.status).not.toBe(0);
      expect({ status: t.b.status, stdout: t.b.stdout }).toEqual({ status: t.q.status, stdout: t.q.stdout });
      // QEMU's multi-line messages become one line; the shrink hint keeps its separate warning line.
      expect(t.b.stderr.replace(/\n/g, ' ')).toBe(normaliseStderr(t.q.stderr).replace(/\n/g, ' '));
      expectSameImage(t, 'a.raw');
    });
  }
});

describeWithQemu('measure, snapshot, amend, rebase (raw)', ['qemu-img', 'qemu-io'], () => {
  const cases: [string, string, string[]][] = [
    ['measure --size', 'measure', ['--size', '1G']],
    ['measure --size odd', 'measure', ['--size', '1000']],
    ['measure json', 'measure', ['--output=json', '-O', 'raw', '--size', '5M']],
    ['measure file', 'measure', ['a.raw']],
    ['measure file json', 'measure', ['--output=json', '-f', 'raw', 'a.raw']],
    ['measure nothing', 'measure', []],
    ['measure both', 'measure', ['--size', '1M', 'a.raw']],
    ['measure unknown format', 'measure', ['-O', 'foo', '--size', '1M']],
    ['measure bad option', 'measure', ['-o', 'bogus=1', '--size', '1M']],
    ['snapshot -l', 'snapshot', ['-l', 'a.raw']],
    ['snapshot -l --image-opts', 'snapshot', ['-l', '--image-opts', 'driver=raw,file.filename=a.raw']],
    ['snapshot -c', 'snapshot', ['-c', 's1', 'a.raw']],
    ['snapshot -a', 'snapshot', ['-a', 's1', 'a.raw']],
    ['snapshot -d', 'snapshot', ['-d', 's1', 'a.raw']],
    ['snapshot -f (not an option of qemu-img snapshot)', 'snapshot', ['-l', '-f', 'raw', 'a.raw']],
    ['snapshot mixed actions', 'snapshot', ['-l', '-c', 'x', 'a.raw']],
    ['amend raw', 'amend', ['-f', 'raw', '-o', 'size=2M', 'a.raw']],
    ['amend without -o', 'amend', ['-f', 'raw', 'a.raw']],
    ['amend empty -o', 'amend', ['-f', 'raw', '-o', '', 'a.raw']],
    ['measure empty -o', 'measure', ['-o', '', '--size', '1M']],
    ['rebase -u raw', 'rebase', ['-u', '-b', 'x.raw', '-F', 'raw', '-f', 'raw', 'a.raw']],
    ['rebase raw', 'rebase', ['-b', 'a.raw', '-F', 'raw', '-f', 'raw', 'a.raw']],
    ['rebase without -b', 'rebase', ['-f', 'raw', 'a.raw']],
    ['rebase bad format', 'rebase', ['-b', 'a.raw', '-F', 'bogus', '-f', 'raw', 'a.raw']],
  ];
  for (const [name, cmd, args] of cases) {
    it(name, async () => {
      t = await twin(cmd, rawA, (d) => [...args.map((a) => (/\.raw$/.test(a) ? a.replace(/(^|=)([a-z]+\.raw)$/, `$1${d}/$2`) : a))]);
      expectSame(t);
      expectSameImage(t, 'a.raw');
    });
  }
});
