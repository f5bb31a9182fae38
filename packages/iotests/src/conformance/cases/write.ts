/** Writes, zero writes and discards, checked byte for byte against the model. */
import { alignDown, alignUp, ReqFlag, type BlockBackend } from '@blockgraph/block-core';
import { describeError, isBlockErrorLike } from '../../assert.js';
import { ByteModel } from '../../model.js';
import { KiB, type TestRun } from '../harness.js';
import type { ConformanceCase } from '../types.js';

/** Fill the whole node with random data (and the model with the same). */
export async function fillRandom(t: TestRun, be: BlockBackend, model: ByteModel): Promise<void> {
  const data = t.rng.bytes(model.size);
  await t.write(be, 0, data);
  model.write(0, data);
}

/** Read a window of `margin` bytes around [offset, +bytes) and compare with the model. */
export async function checkAround(t: TestRun, be: BlockBackend, model: ByteModel, offset: number, bytes: number, what: string, margin = t.info.granule + 7): Promise<void> {
  const a = Math.max(0, offset - margin);
  const b = Math.min(model.size, offset + bytes + margin);
  const parts = t.rng.bool(0.25) ? t.rng.range(2, 5) : 1;
  const buf = await t.read(be, a, b - a, parts);
  t.expect(model, a, buf, what);
}

function uniqueSorted(xs: number[]): number[] {
  return [...new Set(xs)].sort((a, b) => a - b);
}

export const writeCases: ConformanceCase[] = [
  {
    name: 'write: data written reads back (unaligned, multi-slice, FUA, larger than max transfer)',
    requires: ['write', 'storesData'],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = new ByteModel(t.size);
      const g = t.info.granule;
      const lens = uniqueSorted([1, 2, 3, 7, 511, 512, 513, 4095, 4096, 4097, g - 1, g, g + 1, 2 * g + 3, 64 * KiB + 7, 200 * KiB + 13]).filter(
        (n) => n > 0 && n <= t.size / 2,
      );
      for (const len of lens) {
        const mid = alignDown(t.size / 2, g);
        const offsets = uniqueSorted([0, 1, g - 1, g + 1, mid - 1, mid, t.size - len, t.randomOffset(len, t.size)]).filter(
          (o) => o >= 0 && o + len <= t.size,
        );
        for (const off of offsets) {
          const data = t.rng.bytes(len);
          const flags = t.rng.bool(0.2) ? ReqFlag.FUA : 0;
          await t.write(be, off, data, flags, t.rng.bool(0.3) ? t.rng.range(2, 6) : 1);
          model.write(off, data);
          await checkAround(t, be, model, off, len, `read back after write [${off}, +${len})`);
        }
      }
      await t.verify(be, model, 'the whole node after the writes');
      const maxT = s.node.limits.maxTransfer;
      const big = Math.min(t.size - 1001, Math.max(512 * KiB, maxT ? 2 * maxT + 333 : 0));
      const data = t.rng.bytes(big);
      await t.write(be, 1000, data, 0, 4);
      model.write(1000, data);
      await t.verify(be, model, `the whole node after a ${big}-byte write`);
    },
  },
  {
    name: 'write: random unaligned writes, zero writes, discards, reads and flushes match the model',
    requires: ['write', 'storesData'],
    timeoutMs: 180_000,
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = new ByteModel(t.size);
      const r = t.rng;
      for (let i = 1; i <= 400; i++) {
        const { offset, bytes } = t.extent();
        const k = r.int(100);
        if (k < 35) {
          const data = r.bytes(bytes);
          await t.write(be, offset, data, r.bool(0.1) ? ReqFlag.FUA : 0, r.bool(0.3) ? r.range(2, 6) : 1);
          model.write(offset, data);
        } else if (k < 60) {
          const buf = await t.read(be, offset, bytes, r.bool(0.3) ? r.range(2, 6) : 1);
          t.expect(model, offset, buf, `read [${offset}, +${bytes})`);
        } else if (k < 72) {
          await t.zero(be, offset, bytes, r.bool(0.5) ? ReqFlag.MAY_UNMAP : 0);
          model.zero(offset, bytes);
        } else if (k < 80) {
          await t.discard(be, offset, bytes);
          t.modelDiscard(model, s.node, offset, bytes);
        } else if (k < 84) {
          await t.flush(be);
        } else if (k < 90) {
          const answers = await t.statusWalk(be, offset, offset + bytes, r.bool(0.7));
          const buf = await t.read(be, offset, bytes);
          t.expect(model, offset, buf, `read [${offset}, +${bytes}) after block status`);
          t.checkStatusContent(answers, buf, offset, 'random operations');
        } else {
          // Data that happens to be all zeroes (detect-zeroes, zero detection in formats).
          await t.write(be, offset, new Uint8Array(bytes));
          model.zero(offset, bytes);
        }
        if (i % 100 === 0) await t.verify(be, model, `the whole node after ${i} operations`);
      }
      await t.flush(be);
      await t.verify(be, model, 'the whole node at the end');
    },
  },
  {
    name: 'zero write: zero-written ranges read back as zeroes, with and without MAY_UNMAP',
    requires: ['write', 'storesData'],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = new ByteModel(t.size);
      await fillRandom(t, be, model);
      const g = t.info.granule;
      for (let i = 0; i < 48; i++) {
        let { offset, bytes } = t.extent();
        if (i % 4 === 3) {
          // Whole granules, where an efficient zero write (or unmap) can take effect.
          offset = alignDown(offset, g);
          bytes = Math.min(alignUp(bytes, g), t.size - offset);
        }
        const flags = (i % 2 ? ReqFlag.MAY_UNMAP : 0) | (i % 7 === 0 ? ReqFlag.FUA : 0);
        await t.zero(be, offset, bytes, flags);
        model.zero(offset, bytes);
        await checkAround(t, be, model, offset, bytes, `read after write zeroes [${offset}, +${bytes}) flags 0x${flags.toString(16)}`);
        // Rewrite part of it so that later zero writes hit data again.
        if (i % 3 === 0) {
          const e = t.extent();
          const data = t.rng.bytes(e.bytes);
          await t.write(be, e.offset, data);
          model.write(e.offset, data);
        }
      }
      await t.verify(be, model, 'the whole node after zero writes');
      await t.zero(be, 0, t.size, ReqFlag.MAY_UNMAP);
      model.zero(0, t.size);
      await t.verify(be, model, 'the whole node after zeroing all of it');
    },
  },
  {
    name: 'zero write: NO_FALLBACK zeroes the range or fails with ENOTSUP, never anything else',
    requires: ['write', 'storesData', 'zeroWrite'],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = new ByteModel(t.size);
      await fillRandom(t, be, model);
      const g = t.info.granule;
      let done = 0;
      for (let i = 0; i < 32; i++) {
        let { offset, bytes } = t.extent();
        if (i % 2) {
          offset = alignDown(offset, g);
          bytes = Math.min(alignUp(bytes, g), t.size - offset);
        }
        const flags = ReqFlag.NO_FALLBACK | (t.rng.bool() ? ReqFlag.MAY_UNMAP : 0);
        t.log(`write zeroes [${offset}, +${bytes}) flags 0x${flags.toString(16)} (may fail with ENOTSUP)`);
        try {
          await be.pwriteZeroes(offset, bytes, flags);
          model.zero(offset, bytes);
          done++;
        } catch (e) {
          t.check(isBlockErrorLike(e, ['ENOTSUP']), () => `write zeroes [${offset}, +${bytes}) with NO_FALLBACK failed with ${describeError(e)}; only ENOTSUP is allowed`);
          // Part of the range may have been zeroed before the driver refused.
          model.maybeZero(offset, bytes);
        }
        await checkAround(t, be, model, offset, bytes, `read after NO_FALLBACK write zeroes [${offset}, +${bytes})`);
      }
      t.log(`${done} of 32 NO_FALLBACK zero writes succeeded`);
      await t.verify(be, model, 'the whole node after NO_FALLBACK zero writes');
    },
  },
  {
    name: 'write: every kind of request succeeds on a node that does not store data',
    requires: ['write'],
    excludes: ['storesData'],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      for (let i = 0; i < 40; i++) {
        const { offset, bytes } = t.extent();
        const k = i % 5;
        if (k === 0) await t.write(be, offset, t.rng.bytes(bytes), t.rng.bool(0.2) ? ReqFlag.FUA : 0);
        else if (k === 1) await t.zero(be, offset, bytes, t.rng.bool() ? ReqFlag.MAY_UNMAP : 0);
        else if (k === 2) await t.discard(be, offset, bytes);
        else if (k === 3) await t.read(be, offset, bytes, 3);
        else await t.flush(be);
      }
    },
  },
];

export const discardCases: ConformanceCase[] = [
  {
    name: 'discard: each discarded byte keeps its data or reads as zero; nothing outside the range changes',
    requires: ['write', 'storesData'],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = new ByteModel(t.size);
      await fillRandom(t, be, model);
      const g = t.info.discardGranule;
      for (let i = 0; i < 40; i++) {
        let { offset, bytes } = t.extent();
        if (i % 3 === 2) {
          offset = alignDown(offset, g);
          bytes = Math.min(alignUp(bytes, g), t.size - offset);
        }
        await t.discard(be, offset, bytes);
        t.modelDiscard(model, s.node, offset, bytes);
        await checkAround(t, be, model, offset, bytes, `read after discard [${offset}, +${bytes})`, 2 * g + 7);
        if (i % 4 === 0) {
          const e = t.extent();
          const data = t.rng.bytes(e.bytes);
          await t.write(be, e.offset, data);
          model.write(e.offset, data);
        }
      }
      await t.verify(be, model, 'the whole node after discards');
    },
  },
  {
    name: 'discard: discarded blocks read back as zeroes',
    requires: ['write', 'storesData', 'discard', 'discardZeroes'],
    async run(t) {
      const s = await t.open();
      requireDiscardUnmap(t, s.node.common.discard);
      const be = t.backend(s);
      const model = new ByteModel(t.size);
      await fillRandom(t, be, model);
      const g = t.info.discardGranule;
      const blocks = t.size / g;
      for (let i = 0; i < 24; i++) {
        // Whole blocks, sometimes with an unaligned head and tail (those may keep their data).
        const first = t.rng.int(blocks);
        const n = t.rng.range(1, Math.min(8, blocks - first));
        let offset = first * g;
        let bytes = n * g;
        if (i % 2) {
          const head = Math.min(offset, t.rng.range(1, 99));
          const tail = Math.min(t.size - offset - bytes, t.rng.range(1, 99));
          offset -= head;
          bytes += head + tail;
        }
        await t.discard(be, offset, bytes);
        t.modelDiscard(model, s.node, offset, bytes);
        const a = alignUp(offset, g);
        const b = alignDown(offset + bytes, g);
        t.check(a >= b || model.isZero(a, b - a), 'model: aligned part of the discard must be zero');
        await checkAround(t, be, model, offset, bytes, `read after discard [${offset}, +${bytes}) (whole ${g}-byte blocks must read as zeroes)`, g + 7);
        const e = t.extent();
        const data = t.rng.bytes(e.bytes);
        await t.write(be, e.offset, data);
        model.write(e.offset, data);
      }
      await t.verify(be, model, 'the whole node after discards');
    },
  },
];

export function requireDiscardUnmap(t: TestRun, mode: string): void {
  t.check(
    mode === 'unmap',
    `the node declares discardZeroes but was opened with discard='${mode}', so discards never reach the driver; ` +
      "open it with discard: 'unmap' in the factory so that the suite can check the claim",
  );
}
