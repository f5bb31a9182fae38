/**
 * A header whose active L1 table or refcount table lies at 2^53 or beyond: past the end of any file, so QEMU reads
 * the table as zeroes (found by the corruption fuzz, where blockgraph refused every open with its 2^53 limit).
 * A read-only open now does the same; an open for writing, which would write the offset back or write there,
 * still refuses it with our limit. Each read-only case runs the same command with QEMU 7.2 and blockgraph and
 * compares status, stdout and stderr.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bgSpawn, cachedSetup, must, normaliseStderr, qcow2Requirement, tempDir, twin } from './helpers.js';

const need = qcow2Requirement();

const images = cachedSetup((d) => {
  const base = join(d, 'base.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', base, '1M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x11 0 64k', base);
  const bytes = readFileSync(base);
  const reftable = Buffer.from(bytes);
  reftable.writeBigUInt64BE(1n << 55n, 48);
  writeFileSync(join(d, 'far-reftable.qcow2'), reftable);
  const l1 = Buffer.from(bytes);
  l1.writeBigUInt64BE(0x20000000003000n, 40);
  writeFileSync(join(d, 'far-l1.qcow2'), l1);
});

const CASES: [string, string, (dir: string, image: string) => string[]][] = [];
for (const image of ['far-reftable.qcow2', 'far-l1.qcow2']) {
  CASES.push(
    [image, 'info', (d, i) => ['info', join(d, i)]],
    [image, 'map', (d, i) => ['map', '--output=json', join(d, i)]],
    [image, 'check', (d, i) => ['check', join(d, i)]],
    [image, 'convert -O raw', (d, i) => ['convert', '-O', 'raw', join(d, i), join(d, 'out.raw')]],
  );
}

describe('tables beyond 2^53 read as zeroes in a read-only open, as in QEMU', () => {
  for (const [image, name, args] of CASES) {
    it(`${image}: ${name}`, async (ctx) => {
      need(ctx);
      const t = await twin(images, (d) => args(d, image));
      try {
        expect({ status: t.b.status, stdout: t.b.stdout }).toEqual({ status: t.q.status, stdout: t.q.stdout });
        // check's report lines follow its 'qemu-img:' lines, which normaliseStderr would take for continuations.
        expect(t.b.stderr).toBe(name === 'check' ? t.q.stderr.replaceAll('qemu-img: ', 'blockgraph: ') : normaliseStderr(t.q.stderr));
        if (name.startsWith('convert')) {
          expect(readFileSync(join(t.bdir, 'out.raw')).equals(readFileSync(join(t.qdir, 'out.raw')))).toBe(true);
        }
      } finally {
        t.cleanup();
      }
    });
  }

  it('an open for writing refuses the table with the 2^53 limit and leaves the image alone', (ctx) => {
    need(ctx);
    const t = tempDir('far-rw');
    try {
      images(t.dir);
      const img = join(t.dir, 'far-reftable.qcow2');
      const before = readFileSync(img);
      const r = bgSpawn(['io', '-c', 'write 0 4k', img]);
      expect(r.status).toBe(1);
      expect(r.stderr).toBe(
        `blockgraph: can't open device ${img}: Reference count table offset is beyond the 2^53 bytes this implementation can address\n`,
      );
      expect(readFileSync(img).equals(before)).toBe(true);
    } finally {
      t.cleanup();
    }
  });
});
