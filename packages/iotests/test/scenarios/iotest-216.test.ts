/**
 * Port of qemu-iotests 216 "Copy-on-read tests using a COR filter node" (tests/qemu-iotests/216, 216.out).
 *
 * Ported, with the same assertions:
 * - Setting up images: a 64 MiB qcow2 base with `write -P 1 0M 1M`, a qcow2 top over it with `write -P 2 1M 1M`
 *   (qemu-img / qemu-io).
 * - Doing COR: the nested blockdev-add of 216 — `copy-on-read` (node0) → `raw` → `copy-on-read` → `raw` → qcow2
 *   top with the base as its backing — as one `graph.addNode` with the same nested options; then HMP's
 *   `qemu-io node0 "read 0 64M"`, i.e. a read through a backend that takes no permissions and shares all (what
 *   HMP qemu-io on a node name creates).
 * - Checking COR result: `qemu-io base -c 'discard 0 64M'`, then `qemu-io top -c 'read -P 1 0M 1M'` and
 *   `-c 'read -P 2 1M 1M'` must succeed: the base's data was copied into top. Additionally (what the discard stands
 *   for) top is opened with its backing link dropped (`backing: null`) and reads both patterns, zeroes after 2M;
 *   the whole 64 MiB are allocated in top (`qemu-img map`), and `qemu-img check` is clean.
 * - The comment's point — legacy copy-on-read without a filter node "sneaks" its write past the permission system
 *   and hits an assertion in QEMU when a raw layer re-issues it — is checked as blockgraph's answer: a
 *   COPY_ON_READ request through an edge without write permission is refused with EPERM, and nothing is copied.
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import { isBlockError, PERM_ALL, ReqFlag } from '@blockgraph/block-core';
import { describeWithTools, MiB, R, scratch, type Scratch } from './helpers.js';
import { allAllocated, checkClean, firstNot, mapJsonNoOffsets, newCorGraph, qemuImg, qemuIo } from './cor-helpers.js';

describeWithTools('iotest 216: copy-on-read across nodes', ['qemu-img', 'qemu-io'], () => {
  let s: Scratch;
  let basePath: string;
  let topPath: string;

  beforeEach(() => {
    s = scratch('216');
    basePath = s.path('base.img');
    topPath = s.path('top.img');
    // --- Setting up images ---
    qemuImg('create', '-f', 'qcow2', basePath, '64M');
    qemuIo('-f', 'qcow2', '-c', 'write -P 1 0M 1M', basePath);
    qemuImg('create', '-f', 'qcow2', '-b', basePath, '-F', 'qcow2', topPath);
    qemuIo('-f', 'qcow2', '-c', 'write -P 2 1M 1M', topPath);
  });

  afterEach(() => {
    s.cleanup();
  });

  const top = (): Record<string, unknown> => ({
    driver: 'qcow2',
    file: { driver: 'file', filename: topPath },
    backing: { driver: 'qcow2', file: { driver: 'file', filename: basePath } },
  });

  it('reading through copy-on-read → raw → copy-on-read → raw → qcow2 copies the base into top', async () => {
    // --- Doing COR ---
    const g = newCorGraph();
    try {
      const node0 = await g.addNode({
        nodeName: 'node0',
        driver: 'copy-on-read',
        file: { driver: 'raw', file: { driver: 'copy-on-read', file: { driver: 'raw', file: top() } } },
      });
      expect(node0.driver.name).toBe('copy-on-read');
      // human-monitor-command: qemu-io node0 "read 0 64M" (a BlockBackend with perm 0, shared all).
      const hmp = g.backend('node0', { perm: 0, shared: PERM_ALL });
      const got = await hmp.read(0, 64 * MiB);
      expect(firstNot(got, 1, 0, MiB)).toBe(-1);
      expect(firstNot(got, 2, MiB, 2 * MiB)).toBe(-1);
      expect(firstNot(got, 0, 2 * MiB)).toBe(-1);
      hmp.remove();
    } finally {
      await g.close(); // vm.shutdown()
    }

    // --- Checking COR result ---
    qemuIo('-f', 'qcow2', '-c', 'discard 0 64M', basePath);
    qemuIo('-f', 'qcow2', '-c', 'read -P 1 0M 1M', topPath);
    qemuIo('-f', 'qcow2', '-c', 'read -P 2 1M 1M', topPath);

    // The same with the backing link dropped, through our API.
    const g2 = newCorGraph();
    try {
      const t = await g2.addNode({ driver: 'qcow2', nodeName: 'top', backing: null, file: { driver: 'file', filename: topPath } });
      expect(await allAllocated(t, 0, 64 * MiB)).toBe(true);
      const be = g2.backend(t, { perm: R, shared: PERM_ALL });
      const got = await be.read(0, 64 * MiB);
      expect(firstNot(got, 1, 0, MiB)).toBe(-1);
      expect(firstNot(got, 2, MiB, 2 * MiB)).toBe(-1);
      expect(firstNot(got, 0, 2 * MiB)).toBe(-1);
    } finally {
      await g2.close();
    }
    // Every cluster of top is its own now: data where the base had data, zero clusters for the copied zeroes.
    qemuImg('rebase', '-u', '-b', '', '-f', 'qcow2', topPath);
    expect(mapJsonNoOffsets(topPath)).toEqual([
      { start: 0, length: 2 * MiB, depth: 0, present: true, zero: false, data: true },
      { start: 2 * MiB, length: 62 * MiB, depth: 0, present: true, zero: true, data: false },
    ]);
    checkClean(topPath);
  });

  it('copy-on-read without a filter node needs write permission on the edge (QEMU: assertion)', async () => {
    // The commented-out variant of 216: node0 = raw over qcow2 with copy-on-read, and nobody above holding write.
    const g = newCorGraph();
    try {
      await g.addNode({ nodeName: 'node0', driver: 'raw', file: top() });
      const reader = g.backend('node0', { perm: R, shared: PERM_ALL });
      const err = await reader.read(0, MiB, ReqFlag.COPY_ON_READ).then(
        () => null,
        (e: unknown) => e,
      );
      expect(isBlockError(err, 'EPERM')).toBe(true);
      expect((err as Error).message).toMatch(/needs the 'write unchanged' permission/);
      reader.remove();
      // Nothing was copied.
      const t = g.getNode('node0').filteredChild()?.node ?? g.getNode('node0').children[0]!.node;
      expect(await allAllocated(t, 0, MiB)).toBe(false);
    } finally {
      await g.close();
    }
  });
});
