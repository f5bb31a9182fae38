/**
 * makeEmpty (qcow2_make_empty) through the driver API: both of QEMU's paths leave an image that reads as its
 * backing file and that qemu-img check finds clean, and a failure half-way through the in-place rebuild stops the
 * node with the dirty bit still set, so that the next read-write open (or qemu-img check -r) repairs it.
 */
import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { BlockError, ChildRole, defineBlockDriver, Graph, NO_CAPABILITIES, PERM_ALL, type IOVector } from '@blockgraph/block-core';
import { allRawDrivers } from '@blockgraph/driver-raw/file';
import { qcow2Driver } from '../../src/node/index.js';
import { Workdir, allBytes, expectCode, hasQemu, qemuCheck } from './helpers.js';

/** A pass-through filter whose writes fail once armed when they touch byte `failAt` of its child. */
const failing = { armed: false, failAt: -1 };
const failingFilter = defineBlockDriver({
  name: 'test-failing-writes',
  kind: 'filter',
  capabilities: { ...NO_CAPABILITIES, write: true, storesData: true, zeroWrite: true, discard: true, resize: true },
  options: { file: { type: 'ref', required: true } },
  async open(ctx, o) {
    const file = (await ctx.openChild('file', o.file, ChildRole.FILTERED | ChildRole.PRIMARY))!;
    const hit = (offset: number, bytes: number) => failing.armed && failing.failAt >= offset && failing.failAt < offset + bytes;
    return {
      getLength: () => file.node.totalBytes,
      preadv: (offset: number, bytes: number, qiov: IOVector) => file.preadv(offset, bytes, qiov),
      async pwritev(offset: number, bytes: number, qiov: IOVector) {
        if (hit(offset, bytes)) throw new BlockError('EIO', 'injected write error');
        await file.pwritev(offset, bytes, qiov);
      },
      async pwriteZeroes(offset: number, bytes: number, flags: number) {
        if (hit(offset, bytes)) throw new BlockError('EIO', 'injected write error');
        await file.pwriteZeroes(offset, bytes, flags);
      },
      pdiscard: (offset: number, bytes: number) => file.pdiscard(offset, bytes),
      flush: () => file.flush(),
      truncate: (offset: number, exact: boolean, prealloc: 'off', flags: number) => file.truncate(offset, exact, prealloc, flags),
    };
  },
});

describe.skipIf(!hasQemu)('qcow2 makeEmpty (driver API)', () => {
  let w: Workdir;
  let g: Graph;
  beforeEach(() => {
    w = new Workdir();
    w.create('base.qcow2', '1M');
    w.qemuIo('base.qcow2', 'write -P 0x11 0 1M');
    failing.armed = false;
  });
  afterEach(async () => {
    await g?.close();
    w.cleanup();
  });

  async function openTop(name: string) {
    g = new Graph({ drivers: [...allRawDrivers, qcow2Driver, failingFilter] });
    const node = await g.addNode({ driver: 'qcow2', file: { driver: 'test-failing-writes', file: { driver: 'file', filename: w.path(name) } } });
    return { node, be: g.backend(node, { perm: PERM_ALL, shared: PERM_ALL }) };
  }

  for (const [label, opts] of [
    ['v3: rebuilt in place', []],
    ['v2: every cluster discarded', ['-o', 'compat=0.10']],
  ] as const) {
    test(`${label}; reads as the backing file, qemu-img check clean`, async () => {
      w.qemuImg('create', '-q', '-f', 'qcow2', ...opts, '-b', 'base.qcow2', '-F', 'qcow2', w.path('top.qcow2'));
      w.qemuIo('top.qcow2', 'write -P 0x22 64k 192k', 'write -z 512k 64k');
      const { be } = await openTop('top.qcow2');
      await be.makeEmpty();
      expect(allBytes(await be.read(0, 1 << 20), 0x11)).toBe(true);
      await g.close();
      expect(qemuCheck(w.path('top.qcow2')).status).toBe(0);
      expect(w.qemuIo('top.qcow2', 'read -P 0x11 0 1M')).toMatch(/read 1048576\/1048576/);
    });
  }

  test('a write error half-way stops the node and leaves the dirty bit for the repair', async () => {
    w.qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', w.path('top.qcow2'));
    w.qemuIo('top.qcow2', 'write -P 0x22 0 256k');
    const { be } = await openTop('top.qcow2');
    // The header fields naming the new L1 table and refcount table (offset 40) fail to be written.
    failing.armed = true;
    failing.failAt = 40;
    await expectCode(be.makeEmpty(), 'EIO');
    failing.armed = false;
    await expectCode(be.pwrite(0, new Uint8Array(512)), 'ENOMEDIUM', /needs a repair/);
    await g.close();
    const incompatible = readFileSync(w.path('top.qcow2')).readBigUInt64BE(72);
    expect(incompatible & 1n).toBe(1n);
    w.qemuImg('check', '-q', '-r', 'all', w.path('top.qcow2'));
    expect(qemuCheck(w.path('top.qcow2')).status).toBe(0);
  });
});
