/**
 * A damaged snapshot table whose 64-bit fields exceed 2^53: nb_snapshots set to 1 with snapshots_offset 0, so the
 * "snapshot" is the image header and its L1 table offset is the magic and version (0x514649fb00000003). QEMU opens
 * such an image and validates a snapshot's L1 table only when the snapshot is used; found by the corruption fuzz,
 * where blockgraph refused the whole image. Also tables the check must see although the driver would refuse them
 * (QEMU's open for a check does not read the snapshot table). Each case runs the same command with QEMU 7.2 and blockgraph and
 * compares status, stdout, stderr and the image bytes afterwards.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bgSpawn, cachedSetup, must, normaliseStderr, qcow2Requirement, run, tempDir, twin } from './helpers.js';

const need = qcow2Requirement();

const images = cachedSetup((d) => {
  const img = join(d, 'snap0.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', img, '8M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x11 0 64k', img);
  const bytes = readFileSync(img);
  bytes.writeUInt32BE(1, 60);
  writeFileSync(img, bytes);
  // Broken tables the check reports and -r all repairs (QEMU does not read the table when it opens for a check):
  // 0x28000 entries read from the header on, and an entry with more than 1024 bytes of extra data.
  const many = join(d, 'many.qcow2');
  writeFileSync(many, readFileSync(img));
  const m = readFileSync(many);
  m.writeUInt32BE(0x28000, 60);
  writeFileSync(many, m);
  const extra = join(d, 'extra.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', extra, '8M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x11 0 64k', extra);
  must('qemu-img', 'snapshot', '-c', 's1', extra);
  const e = readFileSync(extra);
  e.writeUInt32BE(2048, Number(e.readBigUInt64BE(64)) + 36);
  writeFileSync(extra, e);
});

const img = (d: string, name = 'snap0.qcow2') => join(d, name);

const CASES: [string, (dir: string) => string[]][] = [
  ['map', (d) => ['map', '--output=json', img(d)]],
  ['info lists the entry', (d) => ['info', img(d)]],
  ['info --output=json', (d) => ['info', '--output=json', img(d)]],
  ['check finds the entry broken', (d) => ['check', img(d)]],
  ['snapshot -l', (d) => ['snapshot', '-l', img(d)]],
  // The downgrade walks every snapshot's L1 table and validates it first: QEMU reports the validation itself.
  ['amend -o compat=0.10 stops at the entry', (d) => ['amend', '-o', 'compat=0.10', img(d)]],
  ['amend -o refcount_bits=64 rewrites the table as it was', (d) => ['amend', '-o', 'refcount_bits=64', img(d)]],
  ['check of 0x28000 entries: too large', (d) => ['check', img(d, 'many.qcow2')]],
  ['check of an entry with too much extra data', (d) => ['check', img(d, 'extra.qcow2')]],
  ['check -r all discards the extra data', (d) => ['check', '-r', 'all', img(d, 'extra.qcow2')]],
];

describe('a snapshot entry with 64-bit fields beyond 2^53 opens as in QEMU', () => {
  for (const [name, args] of CASES) {
    it(name, async (ctx) => {
      need(ctx);
      const t = await twin(images, args);
      try {
        expect({ status: t.b.status, stdout: t.b.stdout }).toEqual({ status: t.q.status, stdout: t.q.stdout });
        // check's report lines follow its 'qemu-img:' lines, which normaliseStderr would take for continuations.
        expect(t.b.stderr).toBe(name.startsWith('check') ? t.q.stderr.replaceAll('qemu-img: ', 'blockgraph: ') : normaliseStderr(t.q.stderr));
        for (const f of ['snap0.qcow2', 'many.qcow2', 'extra.qcow2']) {
          expect(readFileSync(img(t.bdir, f)).equals(readFileSync(img(t.qdir, f))), f).toBe(true);
        }
      } finally {
        t.cleanup();
      }
    });
  }
});

describe('a repair open keeps the snapshot table it does not read', () => {
  it('check -r leaks with an unknown autoclear bit keeps the snapshots (qemu-img 7.2 drops them)', async (ctx) => {
    need(ctx);
    // QEMU's open for a check does not read the snapshot table, and the header rewrite that clears the unknown
    // bit then writes its empty snapshot list: qemu-img loses the snapshot and reports its clusters as leaks.
    // blockgraph rewrites the header with the table's place kept.
    const t = tempDir('autoclear');
    try {
      const img = t.path('s.qcow2');
      must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', img, '1M');
      must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x11 0 64k', img);
      must('qemu-img', 'snapshot', '-c', 's1', img);
      const bytes = readFileSync(img);
      bytes[88] = 0x01; // autoclear bit 56
      writeFileSync(img, bytes);
      const r = bgSpawn(['check', '-r', 'leaks', img]);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('No errors were found on the image.');
      expect(readFileSync(img)[88]).toBe(0);
      expect(run('qemu-img', ['snapshot', '-l', img]).stdout).toMatch(/^1 +s1 /m);
      expect(run('qemu-img', ['check', img]).status).toBe(0);
    } finally {
      t.cleanup();
    }
  });
});
