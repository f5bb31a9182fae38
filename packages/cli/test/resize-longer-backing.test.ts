/**
 * Growing an overlay whose backing file is longer than the overlay was: the grown area must read as zeroes, not as
 * the backing file's data there (bdrv_co_truncate() asks the driver for BDRV_REQ_ZERO_WRITE, and qcow2 writes zero
 * clusters). `resize` and `amend -o size=` run with QEMU 7.2 on one copy and with blockgraph on its twin; status,
 * output, the guest data and the image bytes must be equal.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectSameOutput, must, qcow2Requirement, qemuImg, run, twin } from './helpers.js';

const need = qcow2Requirement();

/** A 32 MiB qcow2 base with data from 24 MiB on, and a 24 MiB overlay (4 KiB clusters) over it. */
function images(d: string): void {
  must('qemu-img', 'create', '-q', '-f', 'qcow2', join(d, 'base.qcow2'), '32M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x77 24M 8M', join(d, 'base.qcow2'));
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'base.qcow2', '-F', 'qcow2', join(d, 'ov.qcow2'), '24M');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', 'base.qcow2', '-F', 'qcow2', join(d, 'ov2.qcow2'), '24M');
}

describe('growing an overlay over a longer backing file', () => {
  // [name, command, bytes grown]
  const cases: [string, string[], number][] = [
    ['resize by 7 KiB (a partial cluster at the end)', ['resize', '-f', 'qcow2', '$DIR/ov.qcow2', '+7k'], 7 << 10],
    ['resize past the end of the backing file', ['resize', '-f', 'qcow2', '$DIR/ov.qcow2', '40M'], 16 << 20],
    ['amend -o size=', ['amend', '-f', 'qcow2', '-o', 'size=28M', '$DIR/ov.qcow2'], 4 << 20],
  ];
  for (const [name, args, grown] of cases) {
    it(`${name}: the grown area reads as zeroes, as in QEMU`, async (ctx) => {
      need(ctx);
      const t = await twin(images, (d) => args.map((a) => a.replace('$DIR', d)));
      try {
        expectSameOutput(t);
        expect(t.q.status).toBe(0);
        const q = join(t.qdir, 'ov.qcow2');
        const b = join(t.bdir, 'ov.qcow2');
        expect(qemuImg('compare', q, b).stdout).toBe('Images are identical.\n');
        // Zeroes from the old end on, where the backing file holds 0x77.
        const zeroes = run('qemu-io', ['-f', 'qcow2', '-c', `read -P 0 24M ${grown}`, b]);
        expect(zeroes.stdout).toMatch(new RegExp(`^read ${grown}/${grown} bytes at offset 25165824$`, 'm'));
        expect(zeroes.stdout).not.toMatch(/Pattern verification failed/);
        expect(readFileSync(b).equals(readFileSync(q)), 'byte-identical').toBe(true);
      } finally {
        t.cleanup();
      }
    });
  }

  it('a compat=0.10 overlay cannot: no zero clusters in v2, so the resize fails as in QEMU and changes nothing', async (ctx) => {
    need(ctx);
    const t = await twin(images, (d) => ['resize', '-f', 'qcow2', join(d, 'ov2.qcow2'), '+64k']);
    try {
      expectSameOutput(t);
      expect(t.q.stderr).toBe('qemu-img: Failed to zero out new clusters: Operation not supported\n');
      expect(readFileSync(join(t.bdir, 'ov2.qcow2')).equals(readFileSync(join(t.qdir, 'ov2.qcow2'))), 'byte-identical').toBe(true);
    } finally {
      t.cleanup();
    }
  });
});
