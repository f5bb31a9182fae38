import { Graph, Perm, PERM_ALL, type BlockBackend, type GraphEvent } from '@blockgraph/block-core';
import { copyOnReadDriver } from '@blockgraph/filter-cor';
import { testDrivers } from '../../block-core/test/drivers.js';
import { xorshift } from '../../block-core/test/prng.js';

export const R = Perm.CONSISTENT_READ;
export const W = Perm.WRITE;
export const WU = Perm.WRITE_UNCHANGED;
export const RS = Perm.RESIZE;

export interface MirrorSetup {
  g: Graph;
  guest: BlockBackend;
  model: Uint8Array;
  events: GraphEvent[];
  /** Read the target's content (perm 0: the target's user does not share consistent read). */
  readTarget(): Promise<Uint8Array>;
}

export async function setup(
  opts: { size?: number; latencyMs?: number; fill?: 'random' | 'half' | 'none'; targetLatencyMs?: number; guestShared?: number } = {},
): Promise<MirrorSetup> {
  const size = opts.size ?? 4 << 20;
  const g = new Graph({ drivers: [...testDrivers, copyOnReadDriver] });
  await g.addNode({ driver: 'test-mem', nodeName: 'src', size, latencyMs: opts.latencyMs ?? 0, discard: 'unmap' });
  await g.addNode({ driver: 'test-mem', nodeName: 'tgt', size, latencyMs: opts.targetLatencyMs ?? opts.latencyMs ?? 0, discard: 'unmap' });
  const model = new Uint8Array(size);
  const guest = g.backend('src', { name: 'guest', perm: R | W, shared: opts.guestShared ?? R | WU });
  const rnd = xorshift(42);
  if (opts.fill !== 'none') {
    for (let off = 0; off < size; off += 65536) {
      if (opts.fill === 'half' && (off / 65536) % 2) continue;
      const chunk = new Uint8Array(65536);
      for (let i = 0; i < chunk.length; i += 4) chunk[i] = Math.floor(rnd() * 256);
      model.set(chunk, off);
      await guest.pwrite(off, chunk);
    }
  }
  const events: GraphEvent[] = [];
  g.on((e) => events.push(e));
  const readTarget = async () => {
    const be = g.backend('tgt', { perm: 0, shared: PERM_ALL });
    try {
      return await be.read(0, size);
    } finally {
      be.remove();
    }
  };
  return { g, guest, model, events, readTarget };
}

export function statusSequence(events: GraphEvent[], id = 'job0'): string[] {
  return events.filter((e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id).map((e) => String(e.data.status));
}

export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}
