/**
 * Port of qemu-iotests 310 "Copy-on-read tests using a COR filter with a bottom node" (tests/qemu-iotests/310).
 *
 * Ported, with the same assertions:
 * - Setting up images (qemu-img / qemu-io): base 64 MiB with pattern 1 at 0M and 3M, mid over base with pattern 3
 *   at 2M and 4M, top over mid with pattern 2 at 1M:
 *
 *          0 1 2 3 4
 *     top    2
 *     mid      3   3
 *     base 1     1
 *
 * - Doing COR: blockdev-add node0 = `copy-on-read` with `bottom: 'node2'` over qcow2 top, whose backing is node2
 *   (mid) over base — one `graph.addNode` with the same nested options; HMP `qemu-io node0 "read 0 5M"` (a backend
 *   with no permissions that shares all). The read itself returns the whole chain's data.
 * - Checking COR result: `qemu-img rebase -u -b ''` on top, then qemu-io reads on top alone: `-P 0 0 1M`,
 *   `-P 2 1M 1M`, `-P 3 2M 1M`, `-P 0 3M 1M`, `-P 3 4M 1M` — mid's data was copied, base's was not.
 *   Additionally the same through our API with `backing: null`, and `qemu-img check` clean.
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import { PERM_ALL } from '@blockgraph/block-core';
import { describeWithTools, MiB, R, scratch, type Scratch } from './helpers.js';
import { checkClean, firstNot, newCorGraph, qemuImg, qemuIo } from './cor-helpers.js';

describeWithTools('iotest 310: copy-on-read with a bottom node', ['qemu-img', 'qemu-io'], () => {
  let s: Scratch;
  let basePath: string;
  let midPath: string;
  let topPath: string;

  beforeEach(() => {
    s = scratch('310');
    basePath = s.path('base.img');
    midPath = s.path('mid.img');
    topPath = s.path('top.img');
    // --- Setting up images ---
    qemuImg('create', '-f', 'qcow2', basePath, '64M');
    qemuIo('-f', 'qcow2', '-c', 'write -P 1 0M 1M', basePath);
    qemuIo('-f', 'qcow2', '-c', 'write -P 1 3M 1M', basePath);
    qemuImg('create', '-f', 'qcow2', '-b', basePath, '-F', 'qcow2', midPath);
    qemuIo('-f', 'qcow2', '-c', 'write -P 3 2M 1M', midPath);
    qemuIo('-f', 'qcow2', '-c', 'write -P 3 4M 1M', midPath);
    qemuImg('create', '-f', 'qcow2', '-b', midPath, '-F', 'qcow2', topPath);
    qemuIo('-f', 'qcow2', '-c', 'write -P 2 1M 1M', topPath);
  });

  afterEach(() => {
    s.cleanup();
  });

  it('copies what lies above bottom (mid), not what lies below (base)', async () => {
    // --- Doing COR ---
    const g = newCorGraph();
    try {
      await g.addNode({
        nodeName: 'node0',
        driver: 'copy-on-read',
        bottom: 'node2',
        file: {
          driver: 'qcow2',
          file: { driver: 'file', filename: topPath },
          backing: {
            nodeName: 'node2',
            driver: 'qcow2',
            file: { driver: 'file', filename: midPath },
            backing: { driver: 'qcow2', file: { driver: 'file', filename: basePath } },
          },
        },
      });
      const hmp = g.backend('node0', { perm: 0, shared: PERM_ALL });
      const got = await hmp.read(0, 5 * MiB); // qemu-io node0 "read 0 5M"
      const want = [1, 2, 3, 1, 3];
      for (let m = 0; m < 5; m++) expect(firstNot(got, want[m]!, m * MiB, (m + 1) * MiB)).toBe(-1);
      hmp.remove();
    } finally {
      await g.close();
    }

    // --- Checking COR result ---
    // Detach backing to check that we can read the data from the top level now.
    qemuImg('rebase', '-u', '-b', '', '-f', 'qcow2', topPath);
    qemuIo('-f', 'qcow2', '-c', 'read -P 0 0 1M', topPath);
    qemuIo('-f', 'qcow2', '-c', 'read -P 2 1M 1M', topPath);
    qemuIo('-f', 'qcow2', '-c', 'read -P 3 2M 1M', topPath);
    qemuIo('-f', 'qcow2', '-c', 'read -P 0 3M 1M', topPath);
    qemuIo('-f', 'qcow2', '-c', 'read -P 3 4M 1M', topPath);
    checkClean(topPath);

    // The same through our API, top opened without a backing file.
    const g2 = newCorGraph();
    try {
      await g2.addNode({ driver: 'qcow2', nodeName: 'top', backing: null, file: { driver: 'file', filename: topPath } });
      const be = g2.backend('top', { perm: R, shared: PERM_ALL });
      const got = await be.read(0, 5 * MiB);
      const want = [0, 2, 3, 0, 3];
      for (let m = 0; m < 5; m++) expect(firstNot(got, want[m]!, m * MiB, (m + 1) * MiB)).toBe(-1);
    } finally {
      await g2.close();
    }
  });
});
