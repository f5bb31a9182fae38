/**
 * Discards and zero writes where a qcow2 image has no L2 table yet: QEMU 7.2 allocates one all the same
 * (discard_in_l2_slice() goes through get_cluster_table()), so the files must come out byte-identical to
 * qemu-io's, not merely read the same.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, filterQemuIo, must, qcow2Requirement, twin } from './helpers.js';

const need = qcow2Requirement();

const images = cachedSetup((d) => {
  const create = (name: string, ...opts: string[]) => must('qemu-img', 'create', '-q', '-f', 'qcow2', ...opts, join(d, name), '4M');
  create('v3.qcow2');
  create('v2.qcow2', '-o', 'compat=0.10');
  create('small.qcow2', '-o', 'cluster_size=1k');
  create('el2.qcow2', '-o', 'extended_l2=on');
});

const CASES: [string, string, string[]][] = [
  ['v3 discard', 'v3.qcow2', ['discard 0 64k', 'discard 1M 1M']],
  ['v2 discard and zero write (a discard without a backing file)', 'v2.qcow2', ['discard 0 64k', 'write -z 2M 128k']],
  ['1 KiB clusters: discards spanning many L1 entries', 'small.qcow2', ['discard 0 3M', 'write -P 1 100k 1k', 'discard 64k 128k']],
  ['extended L2', 'el2.qcow2', ['discard 0 128k', 'write -z 256k 64k']],
];

describe('qcow2 discard where no L2 table exists, against qemu-io', () => {
  for (const [name, file, cmds] of CASES) {
    it(name, async (ctx) => {
      need(ctx);
      const t = await twin(images, (dir) => ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), join(dir, file)], 'qemu-io');
      try {
        expect({ status: t.b.status, stdout: filterQemuIo(t.b.stdout) }).toEqual({ status: t.q.status, stdout: filterQemuIo(t.q.stdout) });
        expect(readFileSync(join(t.bdir, file)).equals(readFileSync(join(t.qdir, file)))).toBe(true);
      } finally {
        t.cleanup();
      }
    });
  }
});
