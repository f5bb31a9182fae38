/** Switching between read-only and read-write with graph.reopen(). */
import { Perm } from '@blockgraph/block-core';
import { describeError } from '../../assert.js';
import { ByteModel } from '../../model.js';
import type { TestRun } from '../harness.js';
import type { ConformanceCase, ConformanceSubject } from '../types.js';
import { expectReadOnly } from './readonly.js';

async function reopen(t: TestRun, s: ConformanceSubject, readOnly: boolean): Promise<void> {
  const what = `graph.reopen('${s.node.nodeName}', { readOnly: ${readOnly} })`;
  t.log(what);
  try {
    await s.graph.reopen(s.node, { readOnly });
  } catch (e) {
    t.fail(`${what} failed: ${describeError(e)}`, e);
  }
  t.check(s.node.readOnly === readOnly, `after ${what} the node is ${s.node.readOnly ? 'read-only' : 'read-write'}`);
}

export const reopenCases: ConformanceCase[] = [
  {
    name: 'reopen: read-only refuses writes, read-write accepts them again; content survives',
    requires: ['write', 'reopen'],
    async run(t) {
      const s = await t.open();
      const model = t.caps.storesData ? new ByteModel(t.size) : null;
      let be = t.backend(s);
      for (let i = 0; i < 8; i++) {
        const { offset, bytes } = t.extent();
        const data = t.rng.bytes(bytes);
        await t.write(be, offset, data);
        model?.write(offset, data);
      }
      t.release(be);
      await reopen(t, s, true);
      await expectReadOnly(t, s, model);
      await reopen(t, s, false);
      be = t.backend(s);
      if (model) await t.verify(be, model, 'content after reopening read-only and back');
      for (let i = 0; i < 8; i++) {
        const { offset, bytes } = t.extent();
        const data = t.rng.bytes(bytes);
        await t.write(be, offset, data);
        model?.write(offset, data);
      }
      await t.flush(be);
      if (model) await t.verify(be, model, 'content after writing again');
      // And once more, to catch state that only survives one round trip.
      t.release(be);
      await reopen(t, s, true);
      await reopen(t, s, false);
      be = t.backend(s);
      if (model) await t.verify(be, model, 'content after a second round trip');
    },
  },
  {
    name: 'reopen: switching to read-only is refused while a writer is attached; the node stays writable',
    requires: ['write', 'reopen'],
    async run(t) {
      const s = await t.open();
      const model = t.caps.storesData ? new ByteModel(t.size) : null;
      const be = t.backend(s, { perm: Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE });
      const data = t.rng.bytes(10000);
      await t.write(be, 123, data);
      model?.write(123, data);
      await t.rejects('graph.reopen(read-only) with a writer attached', () => s.graph.reopen(s.node, { readOnly: true }));
      t.check(!s.node.readOnly, 'the node became read-only although the reopen failed');
      const more = t.rng.bytes(5000);
      await t.write(be, 20000, more);
      model?.write(20000, more);
      if (model) await t.verify(be, model, 'content after a refused reopen');
    },
  },
];
