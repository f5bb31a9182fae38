/** Truncate (grow, shrink, refusal) and growing by writing past the end. */
import { alignUp, Perm } from '@blockgraph/block-core';
import { ByteModel } from '../../model.js';
import { KiB, type TestRun } from '../harness.js';
import type { ConformanceCase } from '../types.js';
import { fillRandom } from './write.js';

/** A size step every driver can take: whole 64 KiB blocks, or whole granules when those are larger. */
function step(t: TestRun): number {
  return alignUp(Math.max(64 * KiB, t.info.granule), t.info.granule);
}

export const resizeCases: ConformanceCase[] = [
  {
    name: 'resize: truncate grows the node and the new area reads as zeroes',
    requires: ['write', 'resize'],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = t.caps.storesData ? new ByteModel(t.size) : null;
      for (const [off, len] of [[0, 5000], [t.size - 3000, 3000]] as const) {
        const data = t.rng.bytes(len);
        await t.write(be, off, data);
        model?.write(off, data);
      }
      let size = t.size;
      for (const grow of [3 * step(t), step(t)]) {
        size += grow;
        await t.truncate(be, size);
        t.check(s.node.totalBytes === size && be.getLength() === size, `after truncate to ${size} the node has ${s.node.totalBytes} bytes`);
        model?.resize(size);
        if (model) await t.verify(be, model, `the node after growing to ${size} (the new area must read as zeroes)`);
        // The new area is usable, including across the old end.
        const off = size - grow - 100;
        const data = t.rng.bytes(1000);
        await t.write(be, off, data);
        model?.write(off, data);
        const tail = t.rng.bytes(10);
        await t.write(be, size - 10, tail);
        model?.write(size - 10, tail);
        if (model) await t.verify(be, model, `the node after writing into the grown area`);
      }
      await t.rejects(`read [${size}, +1) past the new end`, () => be.read(size, 1), ['EIO']);
    },
  },
  {
    name: 'resize: truncate shrinks the node; data below the new end is kept',
    requires: ['write', 'resize', 'shrink'],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = t.caps.storesData ? new ByteModel(t.size) : null;
      if (model) await fillRandom(t, be, model);
      const small = alignUp(Math.floor(t.size / 2), step(t)) - step(t);
      await t.truncate(be, small);
      t.check(s.node.totalBytes === small, `after truncate to ${small} the node has ${s.node.totalBytes} bytes`);
      model?.resize(small);
      if (model) await t.verify(be, model, `the node after shrinking to ${small}`);
      await t.rejects(`read [${small}, +1) past the new end`, () => be.read(small, 1), ['EIO']);
      await t.rejects(`write [${small - 1}, +2) past the new end`, () => be.pwrite(small - 1, new Uint8Array([1, 2])), ['EIO']);
      await t.truncate(be, t.size);
      t.check(s.node.totalBytes === t.size, `after growing back to ${t.size} the node has ${s.node.totalBytes} bytes`);
      model?.resize(t.size);
      if (model) await t.verify(be, model, 'the node after shrinking and growing back (the re-grown area must read as zeroes)');
    },
  },
  {
    name: 'resize: truncate fails without the resize capability and the size stays',
    requires: ['write'],
    excludes: ['resize'],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = t.caps.storesData ? new ByteModel(t.size) : null;
      if (model) await fillRandom(t, be, model);
      await t.rejects(`truncate to ${t.size + step(t)}`, () => be.truncate(t.size + step(t)));
      t.check(s.node.totalBytes === t.size, `refused truncate changed the size to ${s.node.totalBytes}`);
      if (model) await t.verify(be, model, 'content after a refused truncate');
    },
  },
  {
    name: 'grow on write: writes past the end through an edge with RESIZE grow the node',
    requires: ['write', 'growOnWrite'],
    async run(t) {
      const s = await t.open();
      const align = s.node.limits.requestAlignment;
      const model = t.caps.storesData ? new ByteModel(t.size) : null;
      // Without the resize permission the write is refused and nothing changes.
      const noResize = t.backend(s, { allowBeyondEof: true, perm: Perm.CONSISTENT_READ | Perm.WRITE });
      await t.rejects(`write [${t.size + 100}, +10) without the resize permission`, () => noResize.pwrite(t.size + 100, t.rng.bytes(10)), ['EPERM', 'EACCES']);
      t.check(s.node.totalBytes === t.size, `a refused write past the end changed the size to ${s.node.totalBytes}`);
      t.release(noResize);
      const be = t.backend(s, { allowBeyondEof: true });
      let end = t.size;
      for (const [gap, len] of [[5000 + t.rng.int(3000), 3001], [0, 777], [t.rng.int(100), 1]] as const) {
        const off = s.node.totalBytes + gap;
        const data = t.rng.bytes(len);
        await t.write(be, off, data);
        end = off + len;
        const got = s.node.totalBytes;
        // Node sizes are whole 512-byte sectors (QEMU's total_sectors), or whole alignment blocks if larger.
        const max = alignUp(end, Math.max(align, 512));
        t.check(got >= end && got <= max, `after writing [${off}, +${len}) past the end the node has ${got} bytes; expected ${end} rounded up to ${max}`);
        t.check(be.getLength() === got, `backend length ${be.getLength()} differs from the node's ${got}`);
        if (model) {
          model.resize(got);
          model.write(off, data);
          await t.verify(be, model, `the node after growing by a write to [${off}, +${len}) (the gap must read as zeroes)`);
        }
      }
    },
  },
];
