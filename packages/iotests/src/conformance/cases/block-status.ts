/**
 * Block status. What QEMU's semantics guarantee, and therefore all that is checked: answers cover the range
 * consecutively; ZERO means the range reads as zeroes; a range holding data written through the node is
 * allocated and not ZERO. Precision (reporting a zeroed range as ZERO) is only required where it is certain: a
 * discard of whole blocks on a driver that says its discards read back as zeroes and that has block status.
 * A zero write may legitimately stay DATA (QEMU's file driver fallocates zeroes without punching a hole unless
 * it may unmap, and even then only where the filesystem can), so zero writes are only checked for consistency.
 */
import { alignDown, alignUp, BlockStatus, ReqFlag } from '@blockgraph/block-core';
import { ByteModel } from '../../model.js';
import { KiB, statusNames } from '../harness.js';
import type { ConformanceCase } from '../types.js';
import { fillRandom, requireDiscardUnmap } from './write.js';

export const blockStatusCases: ConformanceCase[] = [
  {
    name: 'block status: consecutive answers cover a fresh node and agree with its content',
    requires: [],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const content = t.caps.storesData ? await t.read(be, 0, t.size) : null;
      if (content) t.expect(new ByteModel(t.size), 0, content, 'a fresh node must read as zeroes');
      for (const wantZero of [true, false]) {
        const answers = await t.statusWalk(be, 0, t.size, wantZero);
        if (content) t.checkStatusContent(answers, content, 0, `fresh node, wantZero=${wantZero}`);
      }
      for (let i = 0; i < 40; i++) {
        const { offset, bytes } = t.extent();
        const answers = await t.statusWalk(be, offset, offset + bytes, t.rng.bool());
        if (content) t.checkStatusContent(answers, content, 0, `fresh node [${offset}, +${bytes})`);
      }
      t.log(`block status at the end (${t.size})`);
      const end = await be.blockStatus(t.size, 512);
      t.check(end.pnum === 0 && end.ret & BlockStatus.EOF, `block status at the end of the node: pnum ${end.pnum}, status ${statusNames(end.ret)}; expected 0 bytes with EOF`);
    },
  },
  {
    name: 'block status: after writes, zero writes and discards the answers agree with the content',
    requires: ['write', 'storesData'],
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = new ByteModel(t.size);
      const g = t.info.granule;
      // Regions of different kinds, some aligned, some not.
      for (let off = 0; off < t.size; ) {
        const len = Math.min(t.size - off, t.rng.bool() ? t.rng.range(1, 4) * g : t.randomLength(64 * KiB));
        switch (t.rng.int(6)) {
          case 0: {
            const data = t.rng.bytes(len);
            await t.write(be, off, data);
            model.write(off, data);
            break;
          }
          case 1:
            await t.zero(be, off, len, ReqFlag.MAY_UNMAP);
            model.zero(off, len);
            break;
          case 2:
            await t.zero(be, off, len);
            model.zero(off, len);
            break;
          case 3: {
            const data = t.rng.bytes(len);
            await t.write(be, off, data);
            model.write(off, data);
            await t.discard(be, off, len);
            t.modelDiscard(model, s.node, off, len);
            break;
          }
          case 4: {
            const data = new Uint8Array(len);
            data[t.rng.int(len)] = 1 + t.rng.int(255);
            await t.write(be, off, data);
            model.write(off, data);
            break;
          }
          default:
            break; // left as it was
        }
        off += len;
      }
      // Discards and zero writes whose head and tail end inside a block of data: a driver that tracks
      // allocation more finely than it answers must not report such a block as zeroes.
      for (const [x, head, tail] of [
        [alignDown(t.size / 4, g), 100, 700],
        [alignDown(t.size / 2, g), g - 1, 1],
        [alignDown((3 * t.size) / 4, g), 1, g - 1],
      ] as const) {
        const data = t.rng.bytes(5 * g);
        await t.write(be, x - g, data);
        model.write(x - g, data);
        await t.discard(be, x - head, g + head + tail);
        t.modelDiscard(model, s.node, x - head, g + head + tail);
        await t.zero(be, x + 3 * g - head, head + tail, ReqFlag.MAY_UNMAP);
        model.zero(x + 3 * g - head, head + tail);
      }
      const content = await t.read(be, 0, t.size);
      t.expect(model, 0, content, 'content before checking block status');
      for (const wantZero of [true, false]) {
        const answers = await t.statusWalk(be, 0, t.size, wantZero);
        t.checkStatusContent(answers, content, 0, `whole node, wantZero=${wantZero}`);
      }
      for (let i = 0; i < 60; i++) {
        const { offset, bytes } = t.extent();
        const answers = await t.statusWalk(be, offset, offset + bytes, t.rng.bool());
        t.checkStatusContent(answers, content, 0, `[${offset}, +${bytes})`);
      }
    },
  },
  {
    name: 'block status: discarded whole blocks are reported as reading zeroes',
    requires: ['write', 'storesData', 'blockStatus', 'discard', 'discardZeroes'],
    async run(t) {
      const s = await t.open();
      requireDiscardUnmap(t, s.node.common.discard);
      const be = t.backend(s);
      const model = new ByteModel(t.size);
      await fillRandom(t, be, model);
      // 64 KiB blocks at least: filesystems punch holes in whole blocks of up to that size.
      const b = alignUp(Math.max(64 * KiB, t.info.discardGranule), t.info.discardGranule);
      const start = b;
      const len = Math.min(4 * b, t.size - 2 * b);
      await t.discard(be, start, len);
      t.modelDiscard(model, s.node, start, len);
      await t.verify(be, model, `read after discarding [${start}, +${len})`, start, len);
      const answers = await t.statusWalk(be, start, start + len, true);
      for (const a of answers) {
        t.check(a.ret & BlockStatus.ZERO, () =>
          `discarded [${start}, +${len}) reads as zeroes and the driver declares blockStatus and discardZeroes, ` +
            `but block status reports [${a.offset}, +${a.pnum}) as ${statusNames(a.ret)} without ZERO`,
        );
      }
      const content = await t.read(be, 0, t.size);
      t.expect(model, 0, content, 'the whole node');
      t.checkStatusContent(await t.statusWalk(be, 0, t.size, true), content, 0, 'whole node after the discard');
    },
  },
];
