/** Checks every driver must pass, whatever it declares: open, read, the end of the device, flush. */
import { BLOCK_DRIVER_SPEC_VERSION, type DriverCapabilities } from '@blockgraph/block-core';
import { ByteModel } from '../../model.js';
import type { ConformanceCase } from '../types.js';

const IMPLIES: [keyof DriverCapabilities, keyof DriverCapabilities][] = [
  ['shrink', 'resize'],
  ['discardZeroes', 'discard'],
  ['growOnWrite', 'write'],
  ['reopen', 'write'],
  ['compressedWrite', 'write'],
];

export const basicCases: ConformanceCase[] = [
  {
    name: 'manifest: capabilities are consistent and stable across factory calls',
    requires: [],
    async run(t) {
      // open() compares every capability with the first factory call; do it twice more, read-write and read-only.
      const s = await t.open();
      await t.open({ readOnly: true });
      const d = s.node.driver;
      t.check(d.specVersion === BLOCK_DRIVER_SPEC_VERSION, `driver '${d.name}' states spec version ${String(d.specVersion)}`);
      const caps = s.node.capabilities;
      for (const [k, v] of Object.entries(caps)) t.check(typeof v === 'boolean', `capability '${k}' is ${String(v)}, not a boolean`);
      for (const [a, b] of IMPLIES) {
        t.check(!caps[a] || caps[b], `capability '${a}' is declared without '${b}', which it implies`);
      }
      const a = s.node.limits.requestAlignment;
      t.check(Number.isSafeInteger(a) && a > 0 && (a & (a - 1)) === 0, `request alignment ${a} is not a power of two`);
    },
  },
  {
    name: 'open: the node has the requested size, read-write and read-only',
    requires: [],
    async run(t) {
      const rw = await t.open();
      const be = t.backend(rw);
      t.check(be.getLength() === t.size, `backend length ${be.getLength()}, expected ${t.size}`);
      const ro = await t.open({ readOnly: true });
      t.check(ro.node.readOnly, 'read-only subject is writable');
      const be2 = t.backend(ro);
      t.check(be2.getLength() === t.size, `read-only backend length ${be2.getLength()}, expected ${t.size}`);
    },
  },
  {
    name: 'read: the whole node and random unaligned ranges of a fresh node (reading as zeroes)',
    requires: [],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = t.caps.storesData ? new ByteModel(t.size) : null;
      const whole = await t.read(be, 0, t.size);
      if (model) t.expect(model, 0, whole, 'a fresh node must read as zeroes');
      for (const off of [0, 1, t.size - 1, t.size]) {
        const z = await t.read(be, off, 0);
        t.check(z.byteLength === 0, 'zero-length read returned data');
      }
      for (let i = 0; i < 60; i++) {
        const { offset, bytes } = t.extent();
        const buf = await t.read(be, offset, bytes, t.rng.bool(0.3) ? t.rng.range(2, 6) : 1);
        if (model) t.expect(model, offset, buf, `read [${offset}, +${bytes}) of a fresh node`);
      }
    },
  },
  {
    name: 'read: requests past the end fail with EIO (writes too)',
    requires: [],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const n = t.size;
      await t.rejects(`read [${n}, +1)`, () => be.read(n, 1), ['EIO']);
      await t.rejects(`read [${n - 1}, +2)`, () => be.read(n - 1, 2), ['EIO']);
      await t.rejects(`read [${n - 4096}, +8192)`, () => be.read(n - 4096, 8192), ['EIO']);
      await t.rejects(`read [${n + 65536}, +512)`, () => be.read(n + 65536, 512), ['EIO']);
      await t.rejects('read at offset -1', () => be.read(-1, 1), ['EIO']);
      if (t.caps.write) {
        await t.rejects(`write [${n - 1}, +2)`, () => be.pwrite(n - 1, new Uint8Array([1, 2])), ['EIO']);
        await t.rejects(`write [${n}, +512)`, () => be.pwrite(n, new Uint8Array(512).fill(3)), ['EIO']);
        await t.rejects(`write zeroes [${n - 10}, +20)`, () => be.pwriteZeroes(n - 10, 20), ['EIO']);
        await t.rejects(`discard [${n - 100}, +200)`, () => be.pdiscard(n - 100, 200), ['EIO']);
      }
      t.check(s.node.totalBytes === n, `node size changed to ${s.node.totalBytes} after refused requests`);
      const tail = await t.read(be, n - 4096, 4096);
      if (t.caps.storesData) t.expect(new ByteModel(4096), 0, tail, 'the end of the node after refused writes');
    },
  },
  {
    name: 'flush: succeeds on an idle node, after writes and on a read-only node',
    requires: [],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      await t.flush(be);
      await t.flush(be);
      if (t.caps.write) {
        for (let i = 0; i < 8; i++) {
          const { offset, bytes } = t.extent();
          await t.write(be, offset, t.rng.bytes(bytes));
          await t.flush(be);
        }
      }
      const ro = await t.open({ readOnly: true });
      await t.flush(t.backend(ro));
    },
  },
];
