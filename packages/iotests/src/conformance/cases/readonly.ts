/** A read-only node refuses every change, whatever the driver. */
import { Perm } from '@blockgraph/block-core';
import { ByteModel } from '../../model.js';
import type { TestRun } from '../harness.js';
import type { ConformanceCase, ConformanceSubject } from '../types.js';

/** Every changing request through `be` on the read-only subject fails with EPERM/EACCES; nothing changes. */
export async function expectReadOnly(t: TestRun, s: ConformanceSubject, model: ByteModel | null): Promise<void> {
  const be = t.backend(s);
  const n = t.size;
  const codes = ['EPERM', 'EACCES'] as const;
  for (let i = 0; i < 4; i++) {
    const { offset, bytes } = t.extent();
    await t.rejects(`write [${offset}, +${bytes}) on a read-only node`, () => be.pwrite(offset, t.rng.bytes(bytes)), codes);
    await t.rejects(`write zeroes [${offset}, +${bytes}) on a read-only node`, () => be.pwriteZeroes(offset, bytes), codes);
    await t.rejects(`discard [${offset}, +${bytes}) on a read-only node`, () => be.pdiscard(offset, bytes), codes);
  }
  await t.rejects(`truncate to ${n * 2} on a read-only node`, () => be.truncate(n * 2), codes);
  await t.rejects(`truncate to ${n / 2} on a read-only node`, () => be.truncate(n / 2), codes);
  await t.rejects(
    'attaching a writer (a backend with the write permission) to a read-only node',
    async () => {
      const w = t.backend(s, { perm: Perm.CONSISTENT_READ | Perm.WRITE });
      t.release(w);
    },
    codes,
  );
  await t.flush(be);
  t.check(s.node.totalBytes === n, `read-only node changed size to ${s.node.totalBytes}`);
  t.check(s.node.readOnly, 'node is no longer read-only');
  if (model) await t.verify(be, model, 'content of the read-only node after refused changes');
  t.release(be);
}

export const readOnlyCases: ConformanceCase[] = [
  {
    name: 'read-only: writes, zero writes, discards, truncate and writers are refused; content unchanged',
    requires: [],
    async run(t) {
      const s = await t.open({ readOnly: true });
      await expectReadOnly(t, s, t.caps.storesData ? new ByteModel(t.size) : null);
    },
  },
];
