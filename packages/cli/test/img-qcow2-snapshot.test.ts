/**
 * Internal snapshots of qcow2 images (`blockgraph snapshot -l/-c/-a/-d`) against QEMU 7.2. Every scenario runs
 * twice from the same image: once with qemu-img / qemu-io, once with blockgraph (its `snapshot` and `io`
 * commands), optionally with some steps done by QEMU on both copies (snapshots made by one tool, used by the
 * other). After every step the outputs must be equal, `qemu-img check` must find blockgraph's image clean, and
 * at the end both files must be byte-identical except for the snapshot dates (the clock differs), which also
 * proves the refcounts, COPIED flags, L1 copies and freed clusters equal QEMU's.
 */
import { closeSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { bg, cachedSetup, filterQemuIo, must, normaliseStderr, qcow2Requirement, qemuImg, run, tempDir, type RunResult } from './helpers.js';

const need = qcow2Requirement();

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

const io = (file: string, ...cmds: string[]) => must('qemu-io', '-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file);

/** Source images, built once. */
const images = cachedSetup((d) => {
  const img = (name: string, size: string, ...opts: string[]) => must('qemu-img', 'create', '-q', '-f', 'qcow2', ...opts, join(d, name), size);
  img('std.qcow2', '64M');
  io(join(d, 'std.qcow2'), 'write -P 0xab 0 1M', 'write -P 0xcd 4M 64k', 'write -z 8M 128k');
  img('v2.qcow2', '64M', '-o', 'compat=0.10');
  io(join(d, 'v2.qcow2'), 'write -P 0xab 0 1M', 'write -z 8M 128k', 'write -P 0x11 16M 64k');
  img('el2.qcow2', '16M', '-o', 'extended_l2=on');
  io(join(d, 'el2.qcow2'), 'write -P 1 0 4k', 'write -P 2 70k 10k', 'write -z 1M 8k', 'write -P 3 2M 64k');
  img('small.qcow2', '8M', '-o', 'cluster_size=4k,refcount_bits=2');
  img('rc1.qcow2', '8M', '-o', 'cluster_size=4k,refcount_bits=1');
  io(join(d, 'rc1.qcow2'), 'write -P 5 0 64k');
  io(join(d, 'small.qcow2'), 'write -P 5 0 64k', 'write -P 6 3M 12k');
  img('lazy.qcow2', '16M', '-o', 'lazy_refcounts=on,refcount_bits=64');
  io(join(d, 'lazy.qcow2'), 'write -P 7 0 256k');
  img('base.qcow2', '16M');
  io(join(d, 'base.qcow2'), 'write -P 0xb0 0 4M');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(d, 'overlay.qcow2'));
  io(join(d, 'overlay.qcow2'), 'write -P 0xb1 64k 64k', 'write -z 1M 64k');
  // Compressed clusters (refcounted by sector range) are shared by snapshots too.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', join(d, 'plain.qcow2'), '4M');
  io(join(d, 'plain.qcow2'), 'write -P 0x42 0 2M', 'write -P 0x43 3M 256k');
  must('qemu-img', 'convert', '-c', '-O', 'qcow2', join(d, 'plain.qcow2'), join(d, 'comp.qcow2'));
});

/** One step of a scenario. */
type Step =
  /** `snapshot ARGS` by each tool on its own copy. */
  | { snap: string[] }
  /** qemu-io commands by qemu-io on QEMU's copy, by `blockgraph io` on blockgraph's. */
  | { io: string[] }
  /** `qemu-img ARGS` (image last) on both copies: QEMU made it, blockgraph must use it. */
  | { qemu: string[] }
  /** `resize ARGS` (image first) by each tool. */
  | { resize: string[] }
  /** Damage the first snapshot table entry on both copies: its L1 table offset and size. */
  | { damage: { l1Offset?: (o: number) => number; l1Size?: number } };

/** The dates of every snapshot table entry (date_sec, date_nsec) zeroed: the only bytes the clock decides. */
function maskSnapshotDates(buf: Buffer): Buffer {
  const out = Buffer.from(buf);
  const n = out.readUInt32BE(60);
  let off = Number(out.readBigUInt64BE(64));
  for (let i = 0; i < n; i++) {
    const idLen = out.readUInt16BE(off + 12);
    const nameLen = out.readUInt16BE(off + 14);
    const extra = out.readUInt32BE(off + 36);
    out.fill(0, off + 16, off + 24);
    off += Math.ceil((40 + extra + idLen + nameLen) / 8) * 8;
  }
  return out;
}

function damageFirstSnapshot(file: string, d: { l1Offset?: (o: number) => number; l1Size?: number }): void {
  const fd = openSync(file, 'r+');
  try {
    const head = Buffer.alloc(72);
    readSync(fd, head, 0, 72, 0);
    const entry = Number(head.readBigUInt64BE(64));
    const e = Buffer.alloc(12);
    readSync(fd, e, 0, 12, entry);
    if (d.l1Offset) e.writeBigUInt64BE(BigInt(d.l1Offset(Number(e.readBigUInt64BE(0)))), 0);
    if (d.l1Size !== undefined) e.writeUInt32BE(d.l1Size, 8);
    writeSync(fd, e, 0, 12, entry);
  } finally {
    closeSync(fd);
  }
}

const DATE = /\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g;

function expectSameRun(what: string, b: RunResult, q: RunResult, qdir: string, bdir: string, tool: 'qemu-img' | 'qemu-io'): void {
  const norm = (s: string, dir: string) => filterQemuIo(s.split(dir).join('$DIR')).replace(DATE, 'DATE');
  expect({ status: b.status, stdout: norm(b.stdout, bdir) }, what).toEqual({ status: q.status, stdout: norm(q.stdout, qdir) });
  expect(norm(b.stderr, bdir), what).toBe(normaliseStderr(norm(q.stderr, qdir), tool));
}

/** Each qemu-img command (image last) prints the same as blockgraph's, dates included. */
async function expectSameListings(file: string, commands: string[][]): Promise<void> {
  for (const args of commands) {
    const q = run('qemu-img', [...args, file]);
    const b = await bg(...args, file);
    expect({ status: b.status, stdout: b.stdout, stderr: b.stderr }, args.join(' ')).toEqual({
      status: q.status,
      stdout: q.stdout,
      stderr: normaliseStderr(q.stderr),
    });
  }
}

function expectClean(file: string, what: string): void {
  const r = qemuImg('check', '-f', 'qcow2', file);
  expect(r.stdout + r.stderr, what).toMatch(/No errors were found on the image\./);
  expect(r.status, what).toBe(0);
}

/** blockgraph's image is clean whenever QEMU's is; where QEMU leaks (a failed create), it leaks the same. */
function expectCheckAsQemu(b: string, q: string, what: string): void {
  const rq = qemuImg('check', '-f', 'qcow2', q);
  if (rq.status === 0) return expectClean(b, what);
  const rb = qemuImg('check', '-f', 'qcow2', b);
  expect({ status: rb.status, out: rb.stdout + rb.stderr }, what).toEqual({ status: rq.status, out: rq.stdout + rq.stderr });
}

/** Run the steps on a QEMU copy and a blockgraph copy of `image`; returns both paths for further checks. */
async function scenario(image: string, steps: Step[]): Promise<{ q: string; b: string }> {
  const qd = tempDir('snap-q');
  const bd = tempDir('snap-b');
  cleanups.push(qd.cleanup, bd.cleanup);
  images(qd.dir);
  images(bd.dir);
  const q = join(qd.dir, image);
  const b = join(bd.dir, image);
  for (const [i, step] of steps.entries()) {
    const what = `step ${i}: ${JSON.stringify(step)}`;
    if ('snap' in step) {
      const rq = run('qemu-img', ['snapshot', ...step.snap, q]);
      const rb = await bg('snapshot', ...step.snap, b);
      expectSameRun(what, rb, rq, qd.dir, bd.dir, 'qemu-img');
    } else if ('io' in step) {
      const cmds = step.io.flatMap((c) => ['-c', c]);
      const rq = run('qemu-io', ['-f', 'qcow2', ...cmds, q]);
      const rb = await bg('io', '-f', 'qcow2', ...cmds, b);
      expectSameRun(what, rb, rq, qd.dir, bd.dir, 'qemu-io');
    } else if ('qemu' in step) {
      for (const f of [q, b]) must('qemu-img', ...step.qemu, f);
    } else if ('damage' in step) {
      for (const f of [q, b]) damageFirstSnapshot(f, step.damage);
    } else {
      const rq = run('qemu-img', ['resize', '-f', 'qcow2', q, ...step.resize]);
      const rb = await bg('resize', '-f', 'qcow2', b, ...step.resize);
      expectSameRun(what, rb, rq, qd.dir, bd.dir, 'qemu-img');
    }
    expectCheckAsQemu(b, q, what);
  }
  // Same snapshot table (modulo dates), same refcounts, same L1/L2 tables, same data, same freed clusters.
  const qb = maskSnapshotDates(readFileSync(q));
  const bb = maskSnapshotDates(readFileSync(b));
  expect(bb.length, 'file length').toBe(qb.length);
  expect(bb.equals(qb), 'byte-identical except for the snapshot dates').toBe(true);
  return { q, b };
}

/** The guest content of snapshot `name` (qemu-img convert -l) must be what qemu-io reads with `expect` patterns. */
function expectSnapshotContent(file: string, name: string, reads: string[]): void {
  const raw = `${file}.${name}.raw`;
  must('qemu-img', 'convert', '-U', '-f', 'qcow2', '-l', `snapshot.name=${name}`, '-O', 'raw', file, raw);
  const r = run('qemu-io', ['-f', 'raw', '-r', ...reads.flatMap((c) => ['-c', c]), raw]);
  expect(r.stdout, `${name}: ${reads.join('; ')}`).not.toMatch(/Pattern verification failed/);
  expect(r.status).toBe(0);
}

describe('blockgraph snapshot on qcow2 against QEMU 7.2', () => {
  it('create, list, apply, delete with data written between snapshots (std)', async (ctx) => {
    need(ctx);
    const { b } = await scenario('std.qcow2', [
      { snap: ['-l'] },
      { snap: ['-c', 's1'] },
      { io: ['write -P 0x11 0 64k', 'write -P 0x12 100k 4k', 'write -z 4M 64k', 'discard 8M 128k'] },
      { snap: ['-c', 's2'] },
      { io: ['write -P 0x21 32k 64k', 'write -P 0x22 30M 1M'] },
      { snap: ['-l'] },
      { snap: ['-a', 's1'] },
      { io: ['read -P 0xab 0 1M', 'read -P 0xcd 4M 64k', 'read -P 0 30M 1M'] },
      { snap: ['-a', '2'] },
      { io: ['read -P 0x11 0 64k', 'read -P 0x12 100k 4k', 'read -P 0 4M 64k'] },
      { snap: ['-d', 's1'] },
      { snap: ['-l'] },
      { snap: ['-c', 's3'] },
      // qemu-img snapshot -d looks names up, never ids: "2" is not found.
      { snap: ['-d', '2'] },
      { snap: ['-d', 's2'] },
      { io: ['write -P 0x33 0 2M'] },
      { snap: ['-a', 's3'] },
      { snap: ['-d', 's3'] },
      { snap: ['-l'] },
    ]);
    // No snapshot left: every cluster is referenced once, as a fresh copy of the data would be.
    expect(qemuImg('info', '--output=json', b).stdout).not.toMatch(/snapshots/);
  });

  it('the listing: ids, duplicate names, names that look like ids', async (ctx) => {
    need(ctx);
    await scenario('std.qcow2', [
      { snap: ['-c', 'a'] },
      { snap: ['-c', 'a'] },
      { snap: ['-c', '1'] },
      { snap: ['-c', 'a name with spaces and ünïcode'] },
      { snap: ['-l'] },
      // By id first: "1" is snapshot 1 ("a"), not the one named "1".
      { io: ['write -P 9 0 64k'] },
      { snap: ['-a', '1'] },
      { io: ['read -P 0xab 0 64k'] },
      // Delete by name deletes the first of two equal names.
      { snap: ['-d', 'a'] },
      { snap: ['-l'] },
      { snap: ['-d', '1'] },
      { snap: ['-d', '3'] },
      { snap: ['-l'] },
      { snap: ['-c', 'next'] },
      { snap: ['-l'] },
    ]);
  });

  it('errors: missing snapshots, mixed actions, force-share on a write', async (ctx) => {
    need(ctx);
    await scenario('std.qcow2', [
      { snap: ['-a', 'nope'] },
      { snap: ['-d', 'nope'] },
      { snap: ['-c', 's1'] },
      { snap: ['-a', 's2'] },
      { snap: ['-d', '2'] },
      { snap: ['-U', '-c', 'x'] },
      { snap: ['-U', '-a', 's1'] },
      { snap: ['-U', '-d', 's1'] },
      { snap: ['-U', '-l'] },
      { snap: ['-l', '-c', 'x'] },
      { snap: ['-l'] },
    ]);
  });

  it('a damaged snapshot table entry: apply and delete refuse it with the messages of QEMU, nothing changes', async (ctx) => {
    need(ctx);
    const { q, b } = await scenario('std.qcow2', [
      { snap: ['-c', 's1'] },
      { snap: ['-c', 's2'] },
      { damage: { l1Offset: (o) => o + 512 } },
      { snap: ['-l'] },
      { snap: ['-a', 's1'] },
      { snap: ['-d', 's1'] },
      { damage: { l1Offset: (o) => o - 512, l1Size: 0x1000000 } },
      { snap: ['-a', '1'] },
      { snap: ['-d', 's1'] },
      // The undamaged one can still be applied.
      { snap: ['-a', 's2'] },
    ]);
    // Deleting it must rewrite the table, and the huge damaged L1 table overlaps wherever the new one goes: both
    // mark the image corrupt and fail alike. QEMU's corrupt-bit header rewrite then also stores its in-memory
    // snapshot count (already one less), so s2 vanishes from its table and leaks; blockgraph's header keeps
    // the table as it was on disk (s2 still listed, its clusters still referenced).
    const rq = run('qemu-img', ['snapshot', '-d', 's2', q]);
    const rb = await bg('snapshot', '-d', 's2', b);
    expect(rb.status).toBe(rq.status);
    expect(rb.stderr.split(b).join('IMG')).toBe(normaliseStderr(rq.stderr.split(q).join('IMG')));
    expect(rb.stderr).toMatch(/^qcow2: Marking image as corrupt: Preventing invalid write on metadata \(overlaps with inactive L1 table\)/);
    expect(qemuImg('snapshot', '-l', '-U', b).stdout).toMatch(/ s2 /);
    expect(qemuImg('snapshot', '-l', '-U', q).stdout).not.toMatch(/ s2 /);
  });

  it('listings of the same file are identical, dates included (snapshot -l, info, info --output=json)', async (ctx) => {
    need(ctx);
    const d = tempDir('snap-list');
    cleanups.push(d.cleanup);
    images(d.dir);
    const f = join(d.dir, 'std.qcow2');
    // 'é…' checks that columns are padded by bytes, as printf does, not by characters.
    for (const name of ['a', 'a-rather-long-snapshot-name-that-overflows-its-column', 'x', '', 'é…', 'ünïcødé-ünïcødé']) {
      must('qemu-img', 'snapshot', '-c', name, f);
    }
    await bg('snapshot', '-c', 'made by blockgraph', f);
    await bg('snapshot', '-d', 'a', f);
    await expectSameListings(f, [['snapshot', '-l'], ['info'], ['info', '--output=json'], ['snapshot', '-l', '-U']]);
  });

  it('guest clocks and icounts beyond 2^53 (104 days of guest time) are listed exactly, as QEMU lists them', async (ctx) => {
    need(ctx);
    const d = tempDir('snap-clock');
    cleanups.push(d.cleanup);
    images(d.dir);
    const f = join(d.dir, 'std.qcow2');
    for (const name of ['a', 'b', 'c']) must('qemu-img', 'snapshot', '-c', name, f);
    // Entry fields: vm_clock_nsec at +24; extra data from +40, icount at extra +16 (QEMU 7.2 writes 24 bytes).
    const clocks = [31536000999999999n, 10000000123456789n, 2n ** 63n + 5n];
    const icounts = [12345678901234567n, 2n ** 64n - 2n, null];
    const fd = openSync(f, 'r+');
    try {
      const head = Buffer.alloc(72);
      readSync(fd, head, 0, 72, 0);
      let off = Number(head.readBigUInt64BE(64));
      for (let i = 0; i < 3; i++) {
        const e = Buffer.alloc(64);
        readSync(fd, e, 0, 64, off);
        expect(e.readUInt32BE(36)).toBeGreaterThanOrEqual(24);
        e.writeBigUInt64BE(clocks[i]!, 24);
        if (icounts[i] !== null) e.writeBigUInt64BE(icounts[i]!, 56);
        writeSync(fd, e, 0, 64, off);
        off += Math.ceil((40 + e.readUInt32BE(36) + e.readUInt16BE(12) + e.readUInt16BE(14)) / 8) * 8;
      }
    } finally {
      closeSync(fd);
    }
    await expectSameListings(f, [['snapshot', '-l'], ['info'], ['info', '--output=json']]);
    // The exact digits, not just agreement: 31536000999999999 ns is 31536000 s + 999999999 ns.
    expect(run('qemu-img', ['info', '--output=json', f]).stdout).toContain('"vm-clock-nsec": 999999999');
  });

  it('refcount_bits=1: a snapshot would need refcount 2, so create fails (EINVAL) and leaks what QEMU leaks', async (ctx) => {
    need(ctx);
    await scenario('rc1.qcow2', [{ snap: ['-c', 's1'] }, { snap: ['-l'] }]);
  });

  it('a snapshot survives a resize and applying it restores its size (grow, then shrink)', async (ctx) => {
    need(ctx);
    await scenario('std.qcow2', [
      { snap: ['-c', 'small'] },
      { resize: ['128M'] },
      { io: ['write -P 0x44 100M 1M', 'write -P 0x45 0 64k'] },
      { snap: ['-c', 'big'] },
      { snap: ['-l'] },
      { snap: ['-a', 'small'] },
      { io: ['length', 'read -P 0xab 0 1M'] },
      { snap: ['-a', 'big'] },
      { io: ['length', 'read -P 0x44 100M 1M', 'read -P 0x45 0 64k'] },
      { snap: ['-d', 'small'] },
      { snap: ['-a', 'big'] },
      { snap: ['-d', 'big'] },
    ]);
  });

  for (const [image, writes] of [
    ['v2.qcow2', ['write -P 0x51 0 64k', 'write -z 16M 64k', 'write -P 0x52 8M 4k']],
    ['el2.qcow2', ['write -P 0x61 4k 4k', 'write -z 64k 16k', 'write -P 0x62 2M 8k', 'discard 72k 4k']],
    ['small.qcow2', ['write -P 0x71 0 4k', 'write -P 0x72 3M 20k', 'write -z 64k 4k']],
    ['lazy.qcow2', ['write -P 0x81 64k 64k', 'write -P 0x82 8M 64k']],
    ['comp.qcow2', ['write -P 0x91 64k 4k', 'write -P 0x92 3M 64k', 'write -z 1M 64k']],
    // Partial writes copy from the backing file; the snapshot covers the overlay's own clusters only.
    ['overlay.qcow2', ['write -P 0xa1 8k 4k', 'write -P 0xa2 66k 1k', 'write -z 2M 64k', 'discard 64k 64k']],
  ] as const) {
    it(`${image}: create, overwrite, apply, delete`, async (ctx) => {
      need(ctx);
      const { b } = await scenario(image, [
        { snap: ['-c', 's1'] },
        { io: [...writes] },
        { snap: ['-c', 's2'] },
        { io: ['write -P 0xee 0 128k'] },
        { snap: ['-l'] },
        { snap: ['-a', 's1'] },
        { snap: ['-d', 's2'] },
        { io: ['write -P 0xef 0 8k'] },
        { snap: ['-c', 's3'] },
        { snap: ['-a', 's1'] },
        { snap: ['-d', 's1'] },
        { snap: ['-l'] },
      ]);
      expectSnapshotContent(b, 's3', ['read -P 0xef 0 8k']);
    });
  }

  it('snapshots made by qemu-img: listed, applied and deleted by blockgraph', async (ctx) => {
    need(ctx);
    const { b } = await scenario('std.qcow2', [
      { qemu: ['snapshot', '-c', 'q1'] },
      { io: ['write -P 0x13 0 128k'] },
      { qemu: ['snapshot', '-c', 'q2'] },
      { io: ['write -P 0x14 64k 128k'] },
      { snap: ['-l'] },
      { snap: ['-a', 'q1'] },
      { io: ['read -P 0xab 0 1M'] },
      { snap: ['-d', 'q1'] },
      { snap: ['-c', 'b1'] },
      { snap: ['-a', 'q2'] },
      { io: ['read -P 0x13 0 128k'] },
    ]);
    expectSnapshotContent(b, 'b1', ['read -P 0xab 0 1M']);
  });

  it('snapshots made by blockgraph: applied and deleted by qemu-img', async (ctx) => {
    need(ctx);
    const { b } = await scenario('v2.qcow2', [
      { snap: ['-c', 'b1'] },
      { io: ['write -P 0x15 0 128k'] },
      { snap: ['-c', 'b2'] },
      { qemu: ['snapshot', '-a', 'b1'] },
      { io: ['read -P 0xab 0 1M'] },
      { qemu: ['snapshot', '-d', 'b1'] },
      { qemu: ['snapshot', '-a', 'b2'] },
      { io: ['read -P 0x15 0 128k'] },
      { qemu: ['snapshot', '-d', 'b2'] },
    ]);
    expectClean(b, 'after qemu-img');
  });
});
