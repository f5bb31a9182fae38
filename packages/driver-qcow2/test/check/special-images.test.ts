import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { Workdir, hasQemu } from '../format/qemu.js';
import { checkExitCode, formatCheckJson } from '../../src/check/index.js';
import { cmpFiles, copy, expectParity, expectRepairedLike, ourCheck, qemuCheck } from './helpers.js';
import { ImageEditor } from './image-editor.js';

/**
 * Images whose state is more than one injected entry: dirty lazy-refcount images, the corrupt bit, LUKS,
 * external data files, refcount structures spanning several refcount blocks and table clusters.
 */

const d = hasQemu ? describe : describe.skip;

d('checkImage on special images', () => {
  const w = new Workdir();
  afterAll(() => w.cleanup());

  it('lazy refcounts + abort (dirty bit, refcounts 0): check and -r all like QEMU', async () => {
    w.create('lazy.qcow2', '64M', ['lazy_refcounts=on']);
    w.qemuIoCrash('lazy.qcow2', 'write -P 1 0 128k', 'write -P 2 1M 64k', 'abort');
    const image = w.path('lazy.qcow2');
    expect(new ImageEditor(image).u64(72) & 1n).toBe(1n);
    const { result } = await expectParity(image, 'none');
    expect(result.messages).toContain('ERROR OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=0');
    const all = await expectParity(image, 'all');
    expect(all.result.messages).toContain('Rebuilding refcount structure');
    expectRepairedLike(all.ours, all.theirs);
    expect(cmpFiles(all.ours, all.theirs)).toBe(true);
    // The dirty bit is cleared with a full header rewrite.
    expect(new ImageEditor(all.ours).u64(72)).toBe(0n);
  });

  it('lazy refcounts + abort: -r leaks fails like QEMU and keeps the dirty bit (QEMU clears it on close)', async () => {
    const image = w.path('lazy.qcow2');
    const { ours, theirs, result } = await expectParity(image, 'leaks');
    expect(result.checkFailed).toBe('EIO');
    expect(result.messages.at(-1)).toBe('ERROR need to rebuild refcount structures');
    // Deliberate difference: qemu-img's close path (qcow2_inactivate -> qcow2_mark_clean) clears the dirty
    // bit although the refcounts are still wrong; we leave it set so that the next open repairs the image.
    const a = new ImageEditor(ours);
    const b = new ImageEditor(theirs);
    expect(a.u64(72)).toBe(1n);
    expect(b.u64(72)).toBe(0n);
    a.setU64(72, 0n);
    expect(Buffer.compare(Buffer.from(a.bytes), Buffer.from(b.bytes))).toBe(0);
  });

  it('corrupt bit on a consistent image: -r all clears it, plain check does not', async () => {
    w.create('corrupt.qcow2', '64M');
    w.qemuIo('corrupt.qcow2', 'write -P 1 0 64k');
    const image = w.path('corrupt.qcow2');
    new ImageEditor(image).setU64(72, 2n).save();
    await expectParity(image, 'none');
    const leaks = await expectParity(image, 'leaks');
    expect(cmpFiles(leaks.ours, leaks.theirs)).toBe(true);
    expect(new ImageEditor(leaks.ours).u64(72)).toBe(0n);
    const all = await expectParity(image, 'all');
    expect(cmpFiles(all.ours, all.theirs)).toBe(true);
  });

  it('corrupt bit with a remaining corruption stays set', async () => {
    const image = copy(w.path('corrupt.qcow2'), w.path('corrupt2.qcow2'));
    new ImageEditor(image).setL2Entry(5, 0x8000000000050200n).save();
    const all = await expectParity(image, 'all');
    expect(new ImageEditor(all.ours).u64(72)).toBe(2n);
    expect(cmpFiles(all.ours, all.theirs)).toBe(true);
  });

  it('unknown autoclear bits are cleared when repairing (header rewrite at open)', async () => {
    const image = copy(w.path('corrupt.qcow2'), w.path('autoclear.qcow2'));
    const e = new ImageEditor(image);
    e.setU64(72, 0n).setU64(88, 0x100n).setRefcount(0, 2).save();
    const r = await expectParity(image, 'leaks');
    expect(cmpFiles(r.ours, r.theirs)).toBe(true);
    expect(new ImageEditor(r.ours).u64(88)).toBe(0n);
  });

  it('LUKS-encrypted image: the LUKS header area is refcounted', async () => {
    const secret = ['--object', 'secret,id=sec0,data=abc'];
    // QEMU times its PBKDF iteration count on the thread's CPU clock and gives up ("Unable to get accurate CPU
    // usage") when the measuring loop sees no CPU time at all; that is QEMU's, so try again (a quarter of the runs on
    // an idle machine here, five in a row under CI load once).
    const create = ['create', '-q', '-f', 'qcow2', ...secret, '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10', 'luks.qcow2', '64M'];
    for (let attempt = 1; ; attempt++) {
      const r = spawnSync('qemu-img', create, { cwd: w.dir, encoding: 'utf8' });
      if (r.status === 0) break;
      if (attempt === 30 || !r.stderr.includes('Unable to get accurate CPU usage')) throw new Error(`qemu-img ${create.join(' ')}: ${r.stderr}`);
    }
    const opts = 'driver=qcow2,file.filename=luks.qcow2,encrypt.key-secret=sec0';
    const io = spawnSync('qemu-io', [...secret, '--image-opts', opts, '-c', 'write -P 1 0 128k'], { cwd: w.dir, encoding: 'utf8' });
    expect(io.status, io.stderr).toBe(0);
    const image = w.path('luks.qcow2');
    const run = (file: string) => {
      const r = spawnSync('qemu-img', ['check', '--output=json', ...secret, '--image-opts', `driver=qcow2,file.filename=${file},encrypt.key-secret=sec0`], { cwd: w.dir, encoding: 'utf8' });
      return { status: r.status, stdout: r.stdout, lines: r.stderr.split('\n').filter((l) => l && !l.startsWith('qemu-img: Check failed')) };
    };
    const clean = await ourCheck(copy(image, w.path('luks-a.qcow2')));
    const q = run('luks.qcow2');
    expect(q.status, q.lines.join('\n')).toBe(0);
    expect(clean.messages).toEqual([]);
    expect(formatCheckJson(clean, `driver=qcow2,file.filename=luks.qcow2,encrypt.key-secret=sec0`)).toBe(q.stdout);
    // Leak the LUKS header's first cluster: QEMU and we see the same.
    const e = new ImageEditor(image);
    const hdrExt = findExtension(e, 0x0537be77);
    const luksCluster = Number(e.u64(hdrExt)) / e.clusterSize;
    e.setRefcount(luksCluster, 3).save();
    const broken = await ourCheck(copy(image, w.path('luks-b.qcow2')));
    const qb = run('luks.qcow2');
    expect(broken.messages).toEqual(qb.lines);
    expect(checkExitCode(broken)).toBe(qb.status);
    expect(formatCheckJson(broken, `driver=qcow2,file.filename=luks.qcow2,encrypt.key-secret=sec0`)).toBe(qb.stdout);
  });

  it('external data file: compressed entry and snapshots are corruptions', async () => {
    w.create('dfx.qcow2', '64M', ['data_file=dfx.raw']);
    w.qemuIo('dfx.qcow2', 'write -P 1 0 64k', 'write -P 2 1M 64k');
    const image = w.path('dfx.qcow2');
    const e = new ImageEditor(image);
    e.setL2Entry(3, 0x4000000000070000n);
    // A snapshot entry sharing the active L1 table.
    const table = e.append();
    e.setU64(table, BigInt(e.l1Offset));
    e.setU32(table + 8, e.l1Size);
    e.bytes[table + 13] = 1; // id size
    e.bytes[table + 15] = 1; // name size
    e.setU32(table + 36, 24);
    e.bytes[table + 64] = 0x31;
    e.bytes[table + 65] = 0x73;
    e.setU32(60, 1).setU64(64, BigInt(table)).save();
    const { result } = await expectParity(image, 'none');
    expect(result.messages).toContain('ERROR 1 snapshots in image with data file');
    expect(result.messages).toContain('ERROR compressed cluster 3 with data file, entry=0x4000000000070000');
    const leaks = await expectParity(image, 'leaks');
    expect(leaks.result.checkFailed).toBe('EIO');
    expect(cmpFiles(leaks.ours, leaks.theirs)).toBe(true);
    // -r all rebuilds, fixes the leaks the rebuild left behind, then trips QEMU's overlap check when it
    // repairs the COPIED flag of the L1 entry (the snapshot shares the active L1 table): the image is marked
    // corrupt and the check fails — in both implementations.
    const all = await expectParity(image, 'all');
    expect(all.result.checkFailed).toBe('EIO');
    expect(all.result.messages.at(-1)).toBe(
      'qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with inactive L1 table); ' +
        'further corruption events will be suppressed',
    );
    // The refcount repairs were still in the refcount cache, which is never written once the node is unusable:
    // both images keep the two leaks, and are the same byte for byte.
    expect(cmpFiles(all.ours, all.theirs)).toBe(true);
    expect(qemuCheck(all.ours).lines.filter((l) => l.startsWith('Leaked cluster'))).toEqual([
      'Leaked cluster 1 refcount=1 reference=0',
      'Leaked cluster 2 refcount=1 reference=0',
    ]);
  });

  it('512-byte clusters with a multi-cluster refcount table: rebuild grows the new table', async () => {
    w.create('many.qcow2', '64M', ['cluster_size=512']);
    w.qemuIo('many.qcow2', 'write -P 1 0 9M', 'write -P 2 20M 512k');
    const image = w.path('many.qcow2');
    const e = new ImageEditor(image);
    expect(e.u32(56)).toBeGreaterThan(1);
    e.setRefcount(5000, 0).setRefcount(12000, 7).save();
    await expectParity(image, 'none');
    for (const fix of ['leaks', 'all'] as const) {
      const r = await expectParity(image, fix);
      expectRepairedLike(r.ours, r.theirs);
      if (!r.result.checkFailed) expect(cmpFiles(r.ours, r.theirs)).toBe(true);
    }
  });

  it('refcount table of zero clusters (check mode opens it)', async () => {
    w.create('noreft.qcow2', '64M');
    w.qemuIo('noreft.qcow2', 'write -P 1 0 64k');
    const image = w.path('noreft.qcow2');
    new ImageEditor(image).setU32(56, 0).save();
    await expectParity(image, 'none');
    const r = await expectParity(image, 'all');
    expectRepairedLike(r.ours, r.theirs);
    expect(cmpFiles(r.ours, r.theirs)).toBe(true);
  });

  it('a freed cluster inside the file is reused by the rebuild', async () => {
    w.create('hole.qcow2', '64M');
    w.qemuIo('hole.qcow2', 'write -P 1 0 256k', 'discard 64k 64k', 'write -P 2 1M 64k');
    const image = w.path('hole.qcow2');
    new ImageEditor(image).setRefcount(4, 0).save();
    const r = await expectParity(image, 'all');
    expect(cmpFiles(r.ours, r.theirs)).toBe(true);
  });

  it('snapshot table pointer beyond 2^53 with no snapshots: check mode ignores it', async () => {
    const image = copy(w.path('corrupt.qcow2'), w.path('farsnap.qcow2'));
    new ImageEditor(image).setU64(72, 0n).setU64(64, 1n << 60n).save();
    const { result } = await expectParity(image, 'none');
    expect(result.corruptions + result.leaks + result.checkErrors).toBe(0);
  });

  it('l1_size inflated over the data clusters (46,000 garbage L2 pointers past EOF): check and -r all like QEMU', async () => {
    // The corruption fuzz's image: its check took 7x qemu-img's time before tables past EOF were skipped
    // (bench: check-garbage-l1). The findings must stay QEMU's, repeated line for line.
    w.create('garbage-l1.qcow2', '8M', ['cluster_size=65536', 'refcount_bits=64']);
    w.qemuIo('garbage-l1.qcow2', 'write -P 0x11 0 64k', 'write -P 0x44 5M 300k');
    const image = w.path('garbage-l1.qcow2');
    new ImageEditor(image).setU32(36, 0xffff).save();
    const { result } = await expectParity(image, 'none');
    expect(result.messages.filter((m) => m === 'ERROR l2_offset=44444444444400: Table is not cluster aligned; L1 entry corrupted')).toHaveLength(38400);
    const all = await expectParity(image, 'all');
    expect(all.result.messages).toContain('ERROR: Overlap check failed');
    expect(cmpFiles(all.ours, all.theirs)).toBe(true);
  });

  it('refcount block offset unaligned and beyond 2^53: EIO per cluster like QEMU; -r all gives the same file', async () => {
    // Alignment is checked before size (qcow2_get_refcount), and the repair's last refcount change stays in the
    // refcount cache, which the fatal corruption event keeps from ever being written; its discard is not cached.
    w.create('far-refblock.qcow2', '8M', ['cluster_size=4096']);
    w.qemuIo('far-refblock.qcow2', 'write -P 0x11 0 64k');
    const image = w.path('far-refblock.qcow2');
    const e = new ImageEditor(image);
    e.setU64(Number(e.u64(48)), 0x00fffffffffffe00n).save();
    const { result } = await expectParity(image, 'none');
    expect(result.checkErrors).toBe(21);
    expect(result.messages).toContain("Can't get refcount for cluster 20: Input/output error");
    await expectParity(image, 'leaks');
    const all = await expectParity(image, 'all');
    expect(all.result.messages).toContain('Repairing cluster 1 refcount=1 reference=0');
    expect(all.result.checkFailed).toBe('ENOMEDIUM');
    expect(cmpFiles(all.ours, all.theirs)).toBe(true);
  });

  it('snapshot table rewritten after a fatal corruption event: its refcount changes stay in the cache', async () => {
    // From the check-repair fuzz. Two snapshot entries at EOF read as zeroes ("incomplete"), refcount table
    // entry 0 is unaligned (fatal: the node becomes unusable) and the rebuild counts the old table's
    // cluster past EOF. The table rewrite's allocation and the old table's free go through the refcount cache,
    // which QEMU never writes once the node is gone (its bdrv_flush of a node without driver does nothing):
    // the rebuilt refcount block keeps refcount 1 for the old table's cluster.
    w.create('snap-eof.qcow2', '8M', ['cluster_size=4096']);
    w.qemuIo('snap-eof.qcow2', 'write -P 0x11 0 64k', 'write -P 0x22 1M 100k');
    const image = w.path('snap-eof.qcow2');
    const e = new ImageEditor(image);
    const eof = BigInt(e.bytes.length);
    e.setU32(60, 2).setU64(64, eof).setU64(Number(e.u64(48)), 0x7fffffffn).save();
    const all = await expectParity(image, 'all');
    expect(all.result.messages).toContain('Repairing snapshot table entry 1 is incomplete');
    expect(all.result.checkFailed).toBe('ENOMEDIUM');
    const repaired = new ImageEditor(all.ours);
    expect(repaired.u64(64)).not.toBe(eof);
    expect(repaired.refcount(Number(eof) / 4096)).toBe(1);
    expect(cmpFiles(all.ours, all.theirs)).toBe(true);
  });

  it('a repair write onto the second refcount block is refused by the overlap check', async () => {
    // The overlap check walks the refcount table up to its last used entry (QEMU's max_refcount_table_index),
    // not only entry 0. An L1 entry points at refcount block 1 as if it were an L2 table; four of the refcounts
    // in it read as a preallocated zero entry at the unaligned offset 0x10200, which -r all rewrites in place.
    w.create('rb1.qcow2', '4M', ['cluster_size=1024']);
    w.qemuIo('rb1.qcow2', 'write -P 0x11 0 1M');
    const image = w.path('rb1.qcow2');
    const e = new ImageEditor(image);
    const refblock1 = Number(e.u64(e.reftableOffset + 8));
    expect(refblock1).not.toBe(0);
    const first = refblock1 / 1024 === 512 ? 516 : 512; // the 4 refcounts read as the entry (not its own)
    e.setRefcount(first, 0).setRefcount(first + 1, 0).setRefcount(first + 2, 1).setRefcount(first + 3, 0x0201);
    e.setL1Entry(8, (1n << 63n) | BigInt(refblock1)).save();
    const all = await expectParity(image, 'all');
    expect(all.result.messages).toContain(
      'qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with refcount block); ' +
        'further corruption events will be suppressed',
    );
    expect(cmpFiles(all.ours, all.theirs)).toBe(true);
  });

  it('a 64-bit refcount beyond 2^53 is printed exactly, in the COPIED lines too', async () => {
    w.create('rc64.qcow2', '8M', ['refcount_bits=64']);
    w.qemuIo('rc64.qcow2', 'write -P 0x11 0 64k');
    const image = w.path('rc64.qcow2');
    const e = new ImageEditor(image);
    e.setRefcount(e.hostCluster(0), 0xffffffffffffffffn).save();
    const { result } = await expectParity(image, 'none');
    expect(result.messages.join('\n')).toContain('refcount=18446744073709551615');
    expect(result.messages.filter((m) => m.includes('OFLAG_COPIED'))).not.toEqual([]);
  });

  it('2^31 overhanging snapshots: the corruption count wraps like QEMU\'s int', async () => {
    // The check-repair fuzz's image: with extended L2 entries the table read from the header yields 2^31 + 6.
    w.create('wrap.qcow2', '8M', ['extended_l2=on']);
    w.qemuIo('wrap.qcow2', 'write -P 0x11 0 64k', 'write -P 0x22 1M 100k', 'write -P 0x33 3M 4k', 'write -z 2M 64k', 'write -P 0x44 5M 300k');
    const image = w.path('wrap.qcow2');
    new ImageEditor(image).setU32(60, 0x80000000).save();
    const all = await expectParity(image, 'all');
    expect(all.result.corruptionsFixed).toBeLessThan(0);
    expect(cmpFiles(all.ours, all.theirs)).toBe(true);
  });

  it('qemu-img human output of a failed check matches (no report, exit 1)', async () => {
    const image = copy(w.path('corrupt.qcow2'), w.path('badsnap.qcow2'));
    new ImageEditor(image).setU32(60, 1).setU64(64, 0x10010n).save();
    const { result } = await expectParity(image, 'none');
    expect(result.checkFailed).toBe('EINVAL');
    expect(qemuCheck(image).lines).toEqual(['qemu-img: ERROR snapshot table offset invalid']);
  });
});

function findExtension(e: ImageEditor, type: number): number {
  let off = e.version >= 3 ? e.u32(100) : 72;
  for (;;) {
    const t = e.u32(off);
    const len = e.u32(off + 4);
    if (t === 0) throw new Error('extension not found');
    if (t === type) return off + 8;
    off += 8 + Math.ceil(len / 8) * 8;
  }
}
