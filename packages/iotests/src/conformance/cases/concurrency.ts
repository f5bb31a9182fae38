/**
 * Many requests in flight at once. Guaranteed, and checked: non-overlapping requests do not disturb each other;
 * overlapping writes in flight together leave each byte equal to one of them (the order in which they complete
 * is not specified); a read racing writes sees, per byte, the old data or one of the writes' data.
 */
import type { BlockBackend } from '@blockgraph/block-core';
import { describeError, within } from '../../assert.js';
import { ByteModel, describeMismatch, type ModelWrite } from '../../model.js';
import { HANG_MS, KiB, type TestRun } from '../harness.js';
import type { ConformanceCase } from '../types.js';
import { fillRandom } from './write.js';

interface Op {
  kind: 'write' | 'zero' | 'read';
  offset: number;
  bytes: number;
  data?: Uint8Array;
  result?: Uint8Array;
}

function describeOp(o: Op): string {
  return `${o.kind === 'zero' ? 'write zeroes' : o.kind} [${o.offset}, +${o.bytes})`;
}

/** Issue every op without waiting, then wait for all (hang-guarded); any failure fails the test. */
async function runConcurrently(t: TestRun, be: BlockBackend, ops: Op[], what: string): Promise<void> {
  const ps = ops.map((o) => {
    t.log(`issue ${describeOp(o)}`);
    let p: Promise<unknown>;
    if (o.kind === 'write') p = be.pwritev(o.offset, o.bytes, t.iov(o.data!, t.rng.bool(0.3) ? 3 : 1));
    else if (o.kind === 'zero') p = be.pwriteZeroes(o.offset, o.bytes);
    else {
      const buf = new Uint8Array(o.bytes).fill(0xa5);
      o.result = buf;
      p = be.preadv(o.offset, o.bytes, t.iov(buf, t.rng.bool(0.3) ? 3 : 1));
    }
    p.catch(() => undefined);
    return p;
  });
  const settled = await within(HANG_MS, Promise.allSettled(ps), `${ops.length} concurrent requests (${what})`).catch((e: unknown) =>
    t.fail(describeError(e)),
  );
  settled.forEach((r, i) => {
    if (r.status === 'rejected') t.fail(`${describeOp(ops[i]!)}, one of ${ops.length} in flight (${what}), failed: ${describeError(r.reason)}`, r.reason);
  });
}

export const concurrencyCases: ConformanceCase[] = [
  {
    name: 'concurrency: many non-overlapping writes and reads in flight at once',
    requires: ['write', 'storesData'],
    timeoutMs: 120_000,
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = new ByteModel(t.size);
      await fillRandom(t, be, model);
      for (let round = 0; round < 4; round++) {
        // Random cut points split the node into disjoint, unaligned extents.
        const cuts = new Set<number>([0, t.size]);
        while (cuts.size < 66) cuts.add(t.rng.range(1, t.size - 1));
        const edges = [...cuts].sort((a, b) => a - b);
        const ops: Op[] = [];
        for (let i = 0; i + 1 < edges.length; i++) {
          const offset = edges[i]!;
          const bytes = edges[i + 1]! - offset;
          const k = t.rng.int(20);
          if (k < 9) ops.push({ kind: 'write', offset, bytes, data: t.rng.bytes(bytes) });
          else if (k < 11) ops.push({ kind: 'zero', offset, bytes });
          else if (k < 19) ops.push({ kind: 'read', offset, bytes });
        }
        // Issue in random order.
        for (let i = ops.length - 1; i > 0; i--) {
          const j = t.rng.int(i + 1);
          [ops[i], ops[j]] = [ops[j]!, ops[i]!];
        }
        await runConcurrently(t, be, ops, `round ${round}, non-overlapping`);
        for (const o of ops) if (o.kind === 'read') t.expect(model, o.offset, o.result!, `${describeOp(o)} issued with non-overlapping writes`);
        for (const o of ops) {
          if (o.kind === 'write') model.write(o.offset, o.data!);
          else if (o.kind === 'zero') model.zero(o.offset, o.bytes);
        }
        await t.verify(be, model, `the whole node after round ${round}`);
      }
    },
  },
  {
    name: 'concurrency: overlapping writes leave each byte equal to one of them; racing reads see old or new data',
    requires: ['write', 'storesData'],
    timeoutMs: 120_000,
    async run(t) {
      const s = await t.open();
      const be = t.backend(s);
      const model = new ByteModel(t.size);
      await fillRandom(t, be, model);
      const g = t.info.granule;
      for (let round = 0; round < 6; round++) {
        const win = Math.min(t.size, Math.max(8 * g, 64 * KiB) + t.rng.int(g + 1));
        const winStart = t.rng.int(t.size - win + 1);
        const ops: Op[] = [];
        for (let i = 0; i < 36; i++) {
          const bytes = Math.min(win, t.randomLength(Math.floor(win / 2)));
          const offset = winStart + t.rng.int(win - bytes + 1);
          const k = t.rng.int(3);
          if (k === 0) ops.push({ kind: 'read', offset, bytes });
          else if (k === 1 && t.rng.bool(0.3)) ops.push({ kind: 'zero', offset, bytes });
          else ops.push({ kind: 'write', offset, bytes, data: t.rng.bytes(bytes) });
        }
        const before = model.clone();
        await runConcurrently(t, be, ops, `round ${round}, overlapping in [${winStart}, +${win})`);
        // A read may see, per byte, the old data or the data of any write in flight with it.
        for (const r of ops) {
          if (r.kind !== 'read') continue;
          const m = new ByteModel(r.bytes, before.expected(r.offset, r.bytes));
          for (const w of ops) {
            if (w.kind === 'read') continue;
            const a = Math.max(r.offset, w.offset);
            const b = Math.min(r.offset + r.bytes, w.offset + w.bytes);
            if (a >= b) continue;
            if (w.kind === 'zero') m.maybe(a - r.offset, 0, b - a);
            else m.maybe(a - r.offset, w.data!.subarray(a - w.offset, b - w.offset));
          }
          const mm = m.check(0, r.result!, false);
          if (mm) {
            t.fail(
              `${describeOp(r)}, racing overlapping writes, returned data that is neither the old content nor any write's: ` +
                describeMismatch({ ...mm, offset: mm.offset + r.offset, lastOffset: mm.lastOffset + r.offset }),
            );
          }
        }
        const writes: ModelWrite[] = ops
          .filter((o) => o.kind !== 'read')
          .map((o) => (o.kind === 'zero' ? { offset: o.offset, zero: o.bytes } : { offset: o.offset, data: o.data! }));
        model.concurrentWrites(writes);
        await t.verify(be, model, `after overlapping writes in round ${round} (each byte must equal one of the writes covering it)`, winStart, win);
        await t.verify(be, model, `the whole node after round ${round}`);
      }
    },
  },
];
