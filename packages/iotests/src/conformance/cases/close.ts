/** Closing while requests are in flight: every request settles (resolves or fails with a BlockError), nothing hangs. */
import { describeError, isBlockErrorLike, within } from '../../assert.js';
import { HANG_MS, type TestRun } from '../harness.js';
import type { ConformanceCase } from '../types.js';
import type { BlockBackend } from '@blockgraph/block-core';

function issue(t: TestRun, be: BlockBackend, count: number, into: { what: string; p: Promise<unknown> }[]): void {
  for (let i = 0; i < count; i++) {
    const { offset, bytes } = t.extent();
    const k = t.caps.write ? t.rng.int(10) : 9;
    let what: string;
    let p: Promise<unknown>;
    if (k < 4) {
      what = `write [${offset}, +${bytes})`;
      p = be.pwrite(offset, t.rng.bytes(bytes));
    } else if (k < 5) {
      what = `write zeroes [${offset}, +${bytes})`;
      p = be.pwriteZeroes(offset, bytes);
    } else if (k < 6) {
      what = `discard [${offset}, +${bytes})`;
      p = be.pdiscard(offset, bytes);
    } else {
      what = `read [${offset}, +${bytes})`;
      p = be.read(offset, bytes);
    }
    t.log(`issue ${what}`);
    // A handler is attached at once so that no rejection is ever reported as unhandled.
    p.catch(() => undefined);
    into.push({ what, p });
  }
}

async function closeWhileBusy(t: TestRun, how: 'node' | 'graph'): Promise<void> {
  const s = await t.open();
  const be = t.backend(s);
  const reqs: { what: string; p: Promise<unknown> }[] = [];
  issue(t, be, 48, reqs);
  const what = how === 'node' ? `graph.closeNode('${s.node.nodeName}')` : 'graph.close()';
  t.log(`${what} with ${reqs.length} requests in flight`);
  const closing = how === 'node' ? s.graph.closeNode(s.node) : s.graph.close();
  closing.catch(() => undefined);
  issue(t, be, 8, reqs);
  const settled = await within(HANG_MS, Promise.allSettled(reqs.map((r) => r.p)), `requests in flight during ${what}`).catch((e: unknown) =>
    t.fail(describeError(e)),
  );
  try {
    await within(HANG_MS, closing, what);
  } catch (e) {
    t.fail(`${what} with requests in flight failed: ${describeError(e)}`, e);
  }
  settled.forEach((r, i) => {
    if (r.status === 'rejected') {
      t.check(isBlockErrorLike(r.reason), () => `${reqs[i]!.what}, in flight during ${what}, failed with ${describeError(r.reason)} instead of a BlockError`);
    }
  });
  t.check(s.node.closed, `node is not closed after ${what}`);
  await t.rejects(`a read after ${what}`, () => be.read(0, 512));
}

export const closeCases: ConformanceCase[] = [
  {
    name: 'close: requests in flight when the node is closed all settle',
    requires: [],
    run: (t) => closeWhileBusy(t, 'node'),
  },
  {
    name: 'close: requests in flight when the graph is closed all settle',
    requires: [],
    run: (t) => closeWhileBusy(t, 'graph'),
  },
];
