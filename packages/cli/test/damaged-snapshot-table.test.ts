/**
 * A damaged snapshot table whose 64-bit fields exceed 2^53: nb_snapshots set to 1 with snapshots_offset 0, so the
 * "snapshot" is the image header and its L1 table offset is the magic and version (0x514649fb00000003). QEMU opens
 * such an image and validates a snapshot's L1 table only when the snapshot is used; found by the corruption fuzz,
 * where blockgraph refused the whole image. Each case runs the same command with QEMU 7.2 and blockgraph and
 * compares status, stdout, stderr and the image bytes afterwards.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, must, normaliseStderr, qcow2Requirement, twin } from './helpers.js';

const need = qcow2Requirement();

const images = cachedSetup((d) => {
  const img = join(d, 'snap0.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', img, '8M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x11 0 64k', img);
  const bytes = readFileSync(img);
  bytes.writeUInt32BE(1, 60);
  writeFileSync(img, bytes);
});

const img = (d: string) => join(d, 'snap0.qcow2');

const CASES: [string, (dir: string) => string[]][] = [
  ['map', (d) => ['map', '--output=json', img(d)]],
  ['info lists the entry', (d) => ['info', img(d)]],
  ['info --output=json', (d) => ['info', '--output=json', img(d)]],
  ['check finds the entry broken', (d) => ['check', img(d)]],
  ['snapshot -l', (d) => ['snapshot', '-l', img(d)]],
  // The downgrade walks every snapshot's L1 table and validates it first: QEMU reports the validation itself.
  ['amend -o compat=0.10 stops at the entry', (d) => ['amend', '-o', 'compat=0.10', img(d)]],
  ['amend -o refcount_bits=64 rewrites the table as it was', (d) => ['amend', '-o', 'refcount_bits=64', img(d)]],
];

describe('a snapshot entry with 64-bit fields beyond 2^53 opens as in QEMU', () => {
  for (const [name, args] of CASES) {
    it(name, async (ctx) => {
      need(ctx);
      const t = await twin(images, args);
      try {
        expect({ status: t.b.status, stdout: t.b.stdout }).toEqual({ status: t.q.status, stdout: t.q.stdout });
        expect(t.b.stderr).toBe(name.startsWith('check') ? t.q.stderr : normaliseStderr(t.q.stderr));
        expect(readFileSync(img(t.bdir)).equals(readFileSync(img(t.qdir)))).toBe(true);
      } finally {
        t.cleanup();
      }
    });
  }
});
