/**
 * `compare -s` compares the block status of both sides, EOF flag included, so it sees how far each lookup reaches.
 * QEMU's qcow2 looks at most INT_MAX bytes ahead: a long unallocated stretch comes in pieces, without EOF before the
 * last one. Images of different cluster sizes and an empty overlay, against `qemu-img compare -s` (QEMU 7.2).
 */
import { join } from 'node:path';
import { afterEach, describe, it } from 'vitest';
import { cachedSetup, expectSameOutput, must, qcow2Requirement, twin, type Twin } from './helpers.js';

const need = qcow2Requirement();

let t: Twin | undefined;
afterEach(() => {
  t?.cleanup();
  t = undefined;
});

const images = cachedSetup((d) => {
  const create = (name: string, size: string, ...opts: string[]) =>
    must('qemu-img', 'create', '-q', '-f', 'qcow2', ...opts, join(d, name), size);
  create('big-2m.qcow2', '3G', '-o', 'cluster_size=2M');
  create('big-64k.qcow2', '3G', '-o', 'cluster_size=64k');
  create('huge-2m.qcow2', '6G', '-o', 'cluster_size=2M');
  create('huge-64k.qcow2', '6G', '-o', 'cluster_size=64k');
  create('small-2m.qcow2', '1G', '-o', 'cluster_size=2M');
  create('small-64k.qcow2', '1G', '-o', 'cluster_size=64k');
  create('data.qcow2', '3G', '-o', 'cluster_size=2M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x2c 696320 512', '-c', 'write -P 0x8b 3504128 4096', join(d, 'data.qcow2'));
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=128k', '-b', 'data.qcow2', '-F', 'qcow2', join(d, 'overlay.qcow2'));
});

describe('compare -s against qemu-img compare -s', () => {
  const CASES: string[][] = [
    // 3 GiB: the 2 MiB-cluster side reaches EOF only from 1.5 GiB on; the 64 KiB side never before the end.
    ['big-2m.qcow2', 'big-64k.qcow2'],
    ['huge-2m.qcow2', 'huge-64k.qcow2'],
    ['small-2m.qcow2', 'small-64k.qcow2'],
    // An empty overlay reads its backing file's status: identical.
    ['data.qcow2', 'overlay.qcow2'],
    ['overlay.qcow2', 'data.qcow2'],
  ];
  for (const [a, b] of CASES) {
    it(`compare -s ${a} ${b}`, async (ctx) => {
      need(ctx);
      t = await twin(images, (d) => ['compare', '-s', join(d, a!), join(d, b!)]);
      expectSameOutput(t);
    });
  }
});
