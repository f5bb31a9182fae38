/**
 * `blockgraph io` `write -b` / `read -b` (the VM state area of internal snapshots, bdrv_save_vmstate /
 * bdrv_load_vmstate) against qemu-io 7.2: the same output, and image files byte-identical to QEMU's afterwards.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, filterQemuIo, must, qcow2Requirement, run, twin, type RunResult } from './helpers.js';

const need = qcow2Requirement();

const images = cachedSetup((d) => {
  const at = (n: string) => join(d, n);
  must('qemu-img', 'create', '-q', '-f', 'qcow2', at('plain.qcow2'), '1M');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', at('base.qcow2'), '1M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 7 0 1M', at('base.qcow2'));
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', at('over.qcow2'));
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', at('el2.qcow2'), '1M');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,compat=0.10', at('small.qcow2'), '100k');
  must('qemu-img', 'create', '-q', '-f', 'raw', at('r.raw'), '1M');
});

const FILES = ['plain.qcow2', 'base.qcow2', 'over.qcow2', 'el2.qcow2', 'small.qcow2', 'r.raw'];
const SEQUENCE = ['-c', 'write -b -P 0x5 512 4k', '-c', 'read -b -P 0x5 512 4k', '-c', 'read -b -P 0 0 512', '-c', 'read -b -P 0 4608 8k', '-c', 'write -b 64k 64k', '-c', 'map', '-c', 'info'];

const CASES: { name: string; args: string[] }[] = [
  { name: 'a qcow2 image', args: [...SEQUENCE, 'plain.qcow2'] },
  { name: 'an overlay: the VM state area does not read through to the backing file', args: [...SEQUENCE, 'over.qcow2'] },
  { name: 'extended L2 entries', args: [...SEQUENCE, 'el2.qcow2'] },
  { name: 'v2, 512-byte clusters', args: [...SEQUENCE, 'small.qcow2'] },
  { name: 'the guest disk is untouched', args: ['-c', 'write -b -P 1 0 64k', '-c', 'read -P 0 0 1M', '-c', 'length', 'plain.qcow2'] },
  { name: 'read-only image', args: ['-r', '-c', 'write -b 0 512', '-c', 'read -b -P 0 0 512', 'plain.qcow2'] },
  { name: 'raw has no VM state', args: ['-f', 'raw', '-c', 'write -b 0 512', '-c', 'read -b 0 512', 'r.raw'] },
  { name: 'unaligned and zero requests', args: ['-c', 'write -b 1 512', '-c', 'read -b 0 100', '-c', 'write -b -z 0 512', '-c', 'write -b -c 0 64k', 'plain.qcow2'] },
];

describe('blockgraph io write -b / read -b (VM state) against qemu-io', () => {
  for (const c of CASES) {
    it(c.name, async (ctx) => {
      need(ctx);
      const t = await twin(images, (dir) => c.args.map((a) => (/\.(qcow2|raw)$/.test(a) ? join(dir, a) : a)), 'qemu-io', { spawn: true });
      try {
        const norm = (r: RunResult) => ({ status: r.status, stdout: filterQemuIo(r.stdout), stderr: r.stderr.replaceAll('qemu-io: ', 'blockgraph: ') });
        expect(norm(t.b)).toEqual(norm(t.q));
        for (const f of FILES) expect(readFileSync(join(t.bdir, f)).equals(readFileSync(join(t.qdir, f))), f).toBe(true);
        expect(run('qemu-img', ['check', '-q', join(t.bdir, 'plain.qcow2')]).status).toBe(0);
      } finally {
        t.cleanup();
      }
    });
  }
});
