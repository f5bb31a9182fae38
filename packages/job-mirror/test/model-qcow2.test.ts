/**
 * The model-based mirror test on real images: qcow2 source and target files (QEMU 7.2 cross-checks the result),
 * random reads, writes, zero writes and discards through the guest (and, in background mode, a writer behind
 * the mirror node's back), every copy mode. Discards leave what each image decides (a partial qcow2 cluster keeps
 * its data), so reads of discarded ranges are not checked against the model; the end result is: target == source,
 * and `qemu-img compare` and `qemu-img check` agree.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Graph, type BlockBackend } from '@blockgraph/block-core';
import { rawDriver } from '@blockgraph/driver-raw';
import { fileDriver } from '@blockgraph/driver-raw/file';
import { qcow2Driver } from '@blockgraph/driver-qcow2/node';
import { copyOnReadDriver } from '@blockgraph/filter-cor';
import { startMirror, type MirrorCopyMode } from '../src/index.js';
import { firstDiff, R, W, WU } from './helpers.js';
import { randInt, xorshift } from '../../block-core/test/prng.js';

const SIZE = 8 << 20;
const hasQemu = spawnSync('qemu-img', ['--version']).status === 0;
const inCi = process.env.CI === 'true' || process.env.CI === '1';

async function workload(be: BlockBackend, model: Uint8Array, known: Uint8Array, rnd: () => number, ops: number, lo: number, hi: number): Promise<void> {
  for (let i = 0; i < ops; i++) {
    const off = randInt(rnd, lo, hi - 1);
    const len = randInt(rnd, 1, Math.min(hi - off, 200_000));
    const k = rnd();
    if (k < 0.45) {
      const d = new Uint8Array(len).fill(randInt(rnd, 1, 255));
      await be.pwrite(off, d);
      model.set(d, off);
      known.fill(1, off, off + len);
    } else if (k < 0.55) {
      await be.pwriteZeroes(off, len);
      model.fill(0, off, off + len);
      known.fill(1, off, off + len);
    } else if (k < 0.62) {
      await be.pdiscard(off, len);
      known.fill(0, off, off + len);
    } else {
      const got = await be.read(off, len);
      for (let j = 0; j < len; j++) {
        if (known[off + j] && got[j] !== model[off + j]) throw new Error(`read mismatch at ${off + j}`);
      }
    }
  }
}

const run = hasQemu || inCi ? describe : describe.skip;
run('mirror: model-based randomized test on qcow2 files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bg-mirror-qcow2-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  for (const mode of ['background', 'write-blocking', 'read-write-blocking'] as const satisfies readonly MirrorCopyMode[]) {
    it(`${mode}: target == source, qemu-img compare and check agree`, async () => {
      expect(hasQemu, 'qemu-img is needed').toBe(true);
      for (const seed of [1, 2, 3]) {
        const src = join(dir, `src-${mode}-${seed}.qcow2`);
        const dst = join(dir, `dst-${mode}-${seed}.qcow2`);
        const g = new Graph({ drivers: [fileDriver, rawDriver, qcow2Driver, copyOnReadDriver] });
        await g.createImage('qcow2', { filename: src, size: SIZE, clusterSize: 65536 });
        await g.createImage('qcow2', { filename: dst, size: SIZE, clusterSize: 65536 });
        await g.openImage(src, { format: 'qcow2', nodeName: 'src', options: { discard: 'unmap' } });
        await g.openImage(dst, { format: 'qcow2', nodeName: 'tgt', options: { discard: 'unmap' } });
        const guest = g.backend('src', { name: 'guest', perm: R | W, shared: R | W | WU });
        const model = new Uint8Array(SIZE);
        const known = new Uint8Array(SIZE).fill(1);
        const rnd = xorshift(seed * 31 + mode.length);
        await workload(guest, model, known, rnd, 40, 0, SIZE);
        const job = await startMirror(g, { jobId: 'job0', device: 'src', target: 'tgt', sync: 'full', copyMode: mode, speed: 32 << 20, granularity: 65536, bufSize: 1 << 20 });
        const side = mode === 'background' ? g.backend('src', { name: 'side', perm: R | W, shared: 15 }) : null;
        const workers = 4;
        const region = SIZE / workers;
        await Promise.all(
          Array.from({ length: workers }, (_, w) =>
            workload(w === workers - 1 && side ? side : guest, model, known, xorshift(seed * 100 + w), 25, w * region, (w + 1) * region),
          ),
        );
        job.setSpeed(0);
        await job.waitFor('ready');
        if (mode !== 'background') {
          await workload(guest, model, known, xorshift(seed * 7), 15, 0, SIZE);
          await guest.flush();
          expect(job.bitmap.count(), `seed ${seed}: clean after active writes`).toBe(0);
        }
        const before = job.progress.current;
        job.complete();
        await job.waitFinished();
        if (mode !== 'background') expect(job.progress.current, `seed ${seed}: completion copied nothing`).toBe(before);
        side?.remove();
        expect(guest.root!.node.nodeName).toBe('tgt');
        const onTarget = await guest.read(0, SIZE);
        guest.remove();
        const srcBe = g.backend('src', { perm: R, shared: 15 });
        const onSource = await srcBe.read(0, SIZE);
        expect(firstDiff(onTarget, onSource), `seed ${seed} ${mode}: target == source`).toBe(-1);
        for (let i = 0; i < SIZE; i++) if (known[i] && onSource[i] !== model[i]) throw new Error(`seed ${seed}: source differs from the model at ${i}`);
        await g.close();
        const cmp = spawnSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', src, dst], { encoding: 'utf8' });
        expect(cmp.stdout.trim(), cmp.stderr).toBe('Images are identical.');
        for (const f of [src, dst]) {
          const chk = spawnSync('qemu-img', ['check', f], { encoding: 'utf8' });
          expect(chk.status, chk.stdout + chk.stderr).toBe(0);
        }
      }
    }, 120_000);
  }
});
