/**
 * The write matrix replayed against qemu-io 7.2: the same seeded sequence of writes, zero writes (with and
 * without unmap), discards and compressed writes goes through our driver into one image and through one qemu-io
 * process into its twin; then `qemu-img compare` must find them identical and `qemu-img check` ours clean.
 */
import { describe, expect, test } from 'vitest';
import { IOVector } from '@blockgraph/block-core';
import { Workdir, hasQemu, newGraph, openQcow2, qemuCheck, run } from './helpers.js';
import { genOps, qemuIoCommands } from './matrix-ops.js';

/**
 * Stress runs: QCOW2_MATRIX_SEEDS=N replays every case with N different sequences (seed 0 is the one CI runs),
 * QCOW2_MATRIX_OPS=M makes each sequence M requests long.
 */
const SEEDS = Math.max(1, Number(process.env.QCOW2_MATRIX_SEEDS ?? 1));
const OPS = Math.max(1, Number(process.env.QCOW2_MATRIX_OPS ?? 30));

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

async function runCase(c: Case, index: number, seed: number): Promise<void> {
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
    const ops = genOps(0xc0ffee + index * 7919 + seed * 1_000_003, size, c.clusterSize, OPS);

    const io = run('qemu-io', ['-d', 'unmap', '-f', 'qcow2', ...qemuIoCommands(ops, 'twin.qcow2').flatMap((x) => ['-c', x]), 'twin.qcow2'], w.dir);
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
  const runs = cases().flatMap((c, i) =>
    Array.from({ length: SEEDS }, (_, seed) => [seed ? `${name(c)} seed=${seed}` : name(c), c, i, seed] as const),
  );
  test.concurrent.each(runs)('%s', async (_n, c, i, seed) => {
    await runCase(c, i, seed);
  });
});
