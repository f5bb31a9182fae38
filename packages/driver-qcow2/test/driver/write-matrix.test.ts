/**
 * The write matrix replayed against qemu-io 7.2: the same seeded sequence of writes, zero writes (with and
 * without unmap), discards and compressed writes goes through our driver into one image and through one qemu-io
 * process into its twin; then `qemu-img compare` must find them identical and `qemu-img check` ours clean.
 */
import { describe, expect, test } from 'vitest';
import { IOVector } from '@blockgraph/block-core';
import { Workdir, hasQemu, newGraph, openQcow2, qemuCheck, run } from './helpers.js';
import { genOps, qemuIoCommands } from './matrix-ops.js';

interface Case {
  compat: '0.10' | '1.1';
  clusterSize: number;
  refcountBits: number;
  extendedL2: boolean;
  backing: boolean;
}

function cases(): Case[] {
  const out: Case[] = [];
  for (const compat of ['0.10', '1.1'] as const) {
    for (const clusterSize of [512, 4096, 65536, 2 * 1024 * 1024]) {
      for (const refcountBits of [1, 16, 64]) {
        if (compat === '0.10' && refcountBits !== 16) continue;
        for (const extendedL2 of [false, true]) {
          if (extendedL2 && (compat === '0.10' || clusterSize < 16384)) continue;
          for (const backing of [false, true]) out.push({ compat, clusterSize, refcountBits, extendedL2, backing });
        }
      }
    }
  }
  return out;
}

const name = (c: Case): string =>
  `compat=${c.compat} cluster=${c.clusterSize} refcount_bits=${c.refcountBits}${c.extendedL2 ? ' extended_l2' : ''}${c.backing ? ' backing' : ''}`;

async function runCase(c: Case, index: number): Promise<void> {
  const w = new Workdir();
  try {
    const size = c.clusterSize >= 2 * 1024 * 1024 ? 8 * 1024 * 1024 : 4 * 1024 * 1024;
    const opts = [`compat=${c.compat}`, `cluster_size=${c.clusterSize}`, `refcount_bits=${c.refcountBits}`];
    if (c.extendedL2) opts.push('extended_l2=on');
    const extra: string[] = [];
    if (c.backing) {
      w.create('base.qcow2', String(size), ['cluster_size=65536']);
      w.qemuIo('base.qcow2', 'write -q -P 0x5a 0 ' + size / 2, 'write -q -P 0x33 ' + size / 2 + ' ' + size / 4);
      extra.push('-b', 'base.qcow2', '-F', 'qcow2');
    }
    w.create('ours.qcow2', String(size), opts, extra);
    w.create('twin.qcow2', String(size), opts, extra);
    const ops = genOps(0xc0ffee + index * 7919, size, c.clusterSize, 30);

    const io = run('qemu-io', ['-d', 'unmap', '-f', 'qcow2', ...qemuIoCommands(ops).flatMap((x) => ['-c', x]), 'twin.qcow2'], w.dir);
    expect(io.out).not.toMatch(/Marking image as corrupt/);

    const graph = newGraph();
    const { be } = await openQcow2(graph, w.path('ours.qcow2'));
    let failed = 0;
    let compressed = 0;
    for (const op of ops) {
      try {
        switch (op.kind) {
          case 'write':
            await be.pwrite(op.offset, new Uint8Array(op.bytes).fill(op.pattern));
            break;
          case 'zero':
            await be.pwriteZeroes(op.offset, op.bytes, op.unmap ? 0x4 : 0);
            break;
          case 'discard':
            await be.pdiscard(op.offset, op.bytes);
            break;
          case 'compressed':
            await be.pwritevCompressed(op.offset, op.bytes, IOVector.of(new Uint8Array(op.bytes).fill(op.pattern)));
            compressed++;
            break;
        }
      } catch (e) {
        // qemu-io fails the same requests (compressed writes over allocated clusters): content must still match.
        if (op.kind !== 'compressed') throw e;
        failed++;
      }
    }
    await graph.close();
    // Same requests refused on both sides.
    expect(failed).toBe((io.out.match(/write failed/g) ?? []).length);
    expect(compressed + failed).toBe(ops.filter((o) => o.kind === 'compressed').length);

    const cmp = run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', 'ours.qcow2', 'twin.qcow2'], w.dir);
    expect(cmp.out).toContain('Images are identical');
    const chk = qemuCheck(w.path('ours.qcow2'));
    expect(chk.out).toContain('No errors were found on the image.');
    expect(chk.status).toBe(0);
  } finally {
    w.cleanup();
  }
}

describe.skipIf(!hasQemu)('write matrix against qemu-io 7.2', () => {
  const all = cases();
  test.concurrent.each(all.map((c, i) => [name(c), c, i] as const))('%s', async (_n, c, i) => {
    await runCase(c, i);
  });
});
