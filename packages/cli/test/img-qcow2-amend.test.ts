/**
 * `blockgraph amend` on qcow2 against `qemu-img amend` (QEMU 7.2): each case amends one copy of an image with
 * qemu-img and a twin copy with blockgraph. Outputs, errors and exit codes must be equal; afterwards
 * `qemu-img info` (format-specific part included) must describe both images alike, `qemu-img check` must find
 * blockgraph's clean, and the guest data (of the active layer and of every internal snapshot) must be equal.
 * Where the amend changes nothing but header fields, the files must be byte-identical.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { bg, cachedSetup, must, normaliseStderr, qcow2Requirement, qemuImg, run, tempDir, type RunResult } from './helpers.js';

const need = qcow2Requirement();

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

const io = (file: string, ...cmds: string[]) => must('qemu-io', '-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file);

const images = cachedSetup((d) => {
  const img = (name: string, size: string, ...opts: string[]) => must('qemu-img', 'create', '-q', '-f', 'qcow2', ...opts, join(d, name), size);
  img('std.qcow2', '64M');
  io(join(d, 'std.qcow2'), 'write -P 0xab 0 1M', 'write -P 0xcd 4M 64k', 'write -z 8M 128k', 'write -z -u 9M 64k');
  img('v2.qcow2', '64M', '-o', 'compat=0.10');
  io(join(d, 'v2.qcow2'), 'write -P 0xab 0 1M', 'write -z 8M 128k', 'write -P 0x11 16M 64k');
  img('lazy.qcow2', '16M', '-o', 'lazy_refcounts=on');
  io(join(d, 'lazy.qcow2'), 'write -P 7 0 256k');
  img('rc1.qcow2', '16M', '-o', 'refcount_bits=1,cluster_size=4k');
  io(join(d, 'rc1.qcow2'), 'write -P 8 0 256k', 'write -P 9 10M 4k');
  img('big.qcow2', '256M', '-o', 'cluster_size=512');
  io(join(d, 'big.qcow2'), 'write -P 1 0 2M', 'write -P 2 100M 1M', 'write -P 3 255M 1M');
  img('snap.qcow2', '32M');
  io(join(d, 'snap.qcow2'), 'write -P 0x21 0 1M', 'write -z 2M 64k');
  must('qemu-img', 'snapshot', '-c', 's1', join(d, 'snap.qcow2'));
  io(join(d, 'snap.qcow2'), 'write -P 0x22 512k 1M', 'write -z 0 64k');
  // v2 snapshot table entries have no extra data: upgrading rewrites the table with it.
  img('snapv2.qcow2', '32M', '-o', 'compat=0.10');
  io(join(d, 'snapv2.qcow2'), 'write -P 0x31 0 1M');
  must('qemu-img', 'snapshot', '-c', 's1', join(d, 'snapv2.qcow2'));
  io(join(d, 'snapv2.qcow2'), 'write -P 0x32 512k 1M');
  img('zstd.qcow2', '16M', '-o', 'compression_type=zstd');
  img('el2.qcow2', '16M', '-o', 'extended_l2=on');
  io(join(d, 'el2.qcow2'), 'write -P 1 0 4k', 'write -z 64k 8k');
  img('base.qcow2', '16M');
  io(join(d, 'base.qcow2'), 'write -P 0x11 0 2M');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(d, 'overlay.qcow2'));
  io(join(d, 'overlay.qcow2'), 'write -P 0x22 64k 64k', 'write -z 1M 64k', 'write -z 4M 64k');
  // An absolute data file name: every copy of ext.qcow2 uses the template's data file (amend writes none).
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', `data_file=${join(d, 'data.raw')}`, join(d, 'ext.qcow2'), '4M');
  img('bitmap.qcow2', '16M');
  must('qemu-img', 'bitmap', '--add', join(d, 'bitmap.qcow2'), 'b0');
});

/** qemu-img info --output=json with the per-copy fields (paths, allocation) left out. */
function info(file: string): unknown {
  const r = qemuImg('info', '--output=json', '-U', file);
  const j = JSON.parse(r.stdout) as Record<string, unknown>;
  delete j.filename;
  delete j['actual-size'];
  delete j['backing-filename-format'];
  delete j['full-backing-filename'];
  for (const s of (j.snapshots ?? []) as Record<string, unknown>[]) {
    delete s['date-sec'];
    delete s['date-nsec'];
  }
  return j;
}

function snapshotNames(file: string): string[] {
  const j = JSON.parse(qemuImg('info', '--output=json', '-U', file).stdout) as { snapshots?: { name: string }[] };
  return (j.snapshots ?? []).map((s) => s.name);
}

interface Amended {
  q: string;
  b: string;
  rq: RunResult;
  rb: RunResult;
}

/** Amend a QEMU copy and a blockgraph copy of `image` with the same arguments (image last). */
async function amend(image: string, args: string[]): Promise<Amended> {
  const qd = tempDir('amend-q');
  const bd = tempDir('amend-b');
  cleanups.push(qd.cleanup, bd.cleanup);
  images(qd.dir);
  images(bd.dir);
  const q = join(qd.dir, image);
  const b = join(bd.dir, image);
  const rq = run('qemu-img', ['amend', ...args, q]);
  const rb = await bg('amend', ...args, b);
  const norm = (s: string, dir: string) => s.split(dir).join('$DIR');
  expect({ status: rb.status, stdout: norm(rb.stdout, bd.dir) }).toEqual({ status: rq.status, stdout: norm(rq.stdout, qd.dir) });
  expect(norm(rb.stderr, bd.dir)).toBe(normaliseStderr(norm(rq.stderr, qd.dir)));
  return { q, b, rq, rb };
}

/** The same image as QEMU's by every outside measure; `bytes` asks for byte identity too. */
function expectSameImage(a: Amended, opts: { bytes?: boolean } = {}): void {
  expect(info(a.b)).toEqual(info(a.q));
  // Clean whenever QEMU's result is; otherwise exactly as unclean (e.g. the leaks of a refused downgrade).
  const cq = qemuImg('check', a.q);
  const cb = qemuImg('check', a.b);
  const norm = (r: RunResult, f: string) => (r.stdout + r.stderr).split(f).join('IMG');
  if (cq.status === 0) expect(cb.stdout + cb.stderr).toMatch(/No errors were found on the image\./);
  else expect({ status: cb.status, out: norm(cb, a.b) }).toEqual({ status: cq.status, out: norm(cq, a.q) });
  expect(qemuImg('compare', '-U', a.q, a.b).stdout).toBe('Images are identical.\n');
  expect(qemuImg('map', '--output=json', '-U', a.b).stdout).toBe(qemuImg('map', '--output=json', '-U', a.q).stdout);
  for (const name of snapshotNames(a.q)) {
    const out = (f: string) => {
      must('qemu-img', 'convert', '-U', '-l', `snapshot.name=${name}`, '-O', 'raw', f, `${f}.${name}.raw`);
      return readFileSync(`${f}.${name}.raw`);
    };
    expect(out(a.b).equals(out(a.q)), `snapshot ${name}`).toBe(true);
  }
  if (opts.bytes) expect(readFileSync(a.b).equals(readFileSync(a.q)), 'byte-identical').toBe(true);
}

describe('blockgraph amend on qcow2 against qemu-img amend', () => {
  // [image, -o options, byte-identical expected]
  const OK: [string, string, boolean][] = [
    ['std.qcow2', 'compat=0.10', true],
    ['std.qcow2', 'compat=v2', true],
    ['v2.qcow2', 'compat=1.1', true],
    ['v2.qcow2', 'compat=v3,lazy_refcounts=on', true],
    ['std.qcow2', 'lazy_refcounts=on', true],
    ['lazy.qcow2', 'lazy_refcounts=off', true],
    ['lazy.qcow2', 'compat=0.10', true],
    ['std.qcow2', 'refcount_bits=1', true],
    ['std.qcow2', 'refcount_bits=64', true],
    ['std.qcow2', 'refcount_bits=8', true],
    ['rc1.qcow2', 'refcount_bits=16', true],
    ['big.qcow2', 'refcount_bits=1', true],
    ['big.qcow2', 'refcount_bits=64', true],
    ['snap.qcow2', 'refcount_bits=2', true],
    ['snap.qcow2', 'lazy_refcounts=on', true],
    ['snapv2.qcow2', 'compat=1.1', true],
    ['snapv2.qcow2', 'compat=1.1,refcount_bits=8,size=64M', true],
    ['std.qcow2', 'size=128M', true],
    ['std.qcow2', 'size=1G', true],
    ['std.qcow2', 'size=16M', true],
    ['v2.qcow2', 'size=128M', true],
    ['std.qcow2', 'size=64M', true],
    ['std.qcow2', 'compat=0.10,size=128M', true],
    ['overlay.qcow2', 'compat=0.10', true],
    ['overlay.qcow2', 'backing_file=base.qcow2,backing_fmt=qcow2', true],
    ['el2.qcow2', 'lazy_refcounts=on', true],
    ['zstd.qcow2', 'compat=0.10', true],
    ['ext.qcow2', 'data_file_raw=off', true],
    ['std.qcow2', 'size=128M,lazy_refcounts=on,refcount_bits=32', true],
  ];
  for (const [image, opts, bytes] of OK) {
    it(`amend -o ${opts} ${image}`, async (ctx) => {
      need(ctx);
      const a = await amend(image, ['-o', opts]);
      expect(a.rq.status).toBe(0);
      expectSameImage(a, { bytes });
    });
  }

  const ERR: [string, string[]][] = [
    ['std.qcow2', ['-o', 'cluster_size=4k']],
    ['std.qcow2', ['-o', 'preallocation=metadata']],
    ['std.qcow2', ['-o', 'extended_l2=on']],
    ['std.qcow2', ['-o', 'compression_type=zstd']],
    ['std.qcow2', ['-o', 'encryption=on']],
    ['std.qcow2', ['-o', 'bogus=1']],
    ['std.qcow2', ['-o', 'compat=0.9']],
    ['std.qcow2', ['-o', 'lazy_refcounts=maybe']],
    ['std.qcow2', ['-o', 'refcount_bits=3']],
    ['std.qcow2', ['-o', 'refcount_bits=128']],
    ['std.qcow2', ['-o', 'size=-1']],
    ['std.qcow2', ['-o', 'size=100000']],
    ['overlay.qcow2', ['-o', 'backing_file=base.qcow2']],
    ['std.qcow2', ['-o', 'size=foo']],
    ['v2.qcow2', ['-o', 'lazy_refcounts=on']],
    ['v2.qcow2', ['-o', 'refcount_bits=64']],
    ['std.qcow2', ['-o', 'compat=0.10,lazy_refcounts=on']],
    ['std.qcow2', ['-o', 'compat=0.10,refcount_bits=8']],
    ['std.qcow2', ['-o', 'backing_file=base.qcow2']],
    ['overlay.qcow2', ['-o', 'backing_file=other.qcow2']],
    ['overlay.qcow2', ['-o', 'backing_fmt=raw']],
    ['snap.qcow2', ['-o', 'refcount_bits=1']],
    ['snap.qcow2', ['-o', 'size=64M']],
    ['snap.qcow2', ['-o', 'size=16M,compat=0.10']],
    ['el2.qcow2', ['-o', 'compat=0.10']],
    ['ext.qcow2', ['-o', 'compat=0.10']],
    ['ext.qcow2', ['-o', 'data_file_raw=on']],
    ['std.qcow2', ['-o', 'data_file=x.raw']],
    ['std.qcow2', ['-o', 'size=16M,compat=0.10', '-o', 'lazy_refcounts=on']],
    ['std.qcow2', []],
    ['std.qcow2', ['-f', 'raw', '-o', 'size=1M']],
  ];
  for (const [image, args] of ERR) {
    it(`amend ${args.join(' ')} ${image} (refused or as QEMU)`, async (ctx) => {
      need(ctx);
      const a = await amend(image, args);
      // Whatever QEMU did to its copy (usually nothing), blockgraph did to its own.
      expectSameImage(a, { bytes: true });
    });
  }

  it('compat=0.10 with a snapshot sharing a preallocated zero cluster: COPIED only where the refcount is 1', async (ctx) => {
    need(ctx);
    // QEMU 7.2's qcow2_expand_zero_clusters() sets COPIED from the L2 table's refcount alone, so its result
    // has one cluster flagged COPIED with refcount 2 (a later write would change the snapshot's data).
    const a = await amend('snap.qcow2', ['-o', 'compat=0.10']);
    expect(a.rq.status).toBe(0);
    expect(qemuImg('check', a.q).stdout + qemuImg('check', a.q).stderr).toMatch(/ERROR OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=2/);
    const cb = qemuImg('check', a.b);
    expect(cb.stdout + cb.stderr).toMatch(/No errors were found on the image\./);
    expect(info(a.b)).toEqual(info(a.q));
    expect(qemuImg('compare', '-U', a.q, a.b).stdout).toBe('Images are identical.\n');
    // The one difference: that L2 entry's COPIED bit.
    const qb = readFileSync(a.q);
    const bb = readFileSync(a.b);
    const diff = [...qb.keys()].filter((i) => qb[i] !== bb[i]);
    expect(diff).toHaveLength(1);
    expect([qb[diff[0]!], bb[diff[0]!]]).toEqual([0x80, 0]);
  });

  it('compat=0.10 with a persistent bitmap: downgraded as QEMU does, the bitmap clusters left behind', async (ctx) => {
    need(ctx);
    // QEMU rewrites the bitmap table and directory when it closes the image (new clusters), blockgraph keeps
    // them where they were: both leak the same two clusters in the v2 image, at different offsets.
    const a = await amend('bitmap.qcow2', ['-o', 'compat=0.10']);
    expect(a.rq.status).toBe(0);
    expect(info(a.b)).toEqual(info(a.q));
    const leaks = (f: string) => {
      const r = qemuImg('check', '--output=json', f);
      const j = JSON.parse(r.stdout) as { 'leaks'?: number; 'corruptions'?: number };
      return { status: r.status, leaks: j.leaks ?? 0, corruptions: j.corruptions ?? 0 };
    };
    expect(leaks(a.b)).toEqual(leaks(a.q));
    expect(qemuImg('compare', '-U', a.q, a.b).stdout).toBe('Images are identical.\n');
  });

  it('amend -o help and -f qcow2 -o help', async (ctx) => {
    need(ctx);
    for (const args of [['-f', 'qcow2', '-o', 'help'], ['-o', 'help']]) {
      const a = await amend('std.qcow2', args);
      expect(a.rq.status).toBe(0);
    }
  });
});
