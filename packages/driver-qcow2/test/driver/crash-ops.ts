import { prng, randInt } from './helpers-prng.js';

export type CrashOp =
  | { kind: 'write'; offset: number; bytes: number; pattern: number }
  | { kind: 'zero'; offset: number; bytes: number }
  | { kind: 'discard'; offset: number; bytes: number }
  | { kind: 'compressed'; offset: number; bytes: number; pattern: number }
  | { kind: 'flush' };

/** The deterministic workload of one crash run (the parent regenerates it to know what was acknowledged). */
export function crashOps(seed: number, size: number, clusterSize: number, count: number): CrashOp[] {
  const r = prng(seed);
  const ops: CrashOp[] = [];
  const clusters = size / clusterSize;
  for (let i = 0; i < count; i++) {
    const k = r();
    const pattern = randInt(r, 1, 256);
    if (k < 0.1) {
      ops.push({ kind: 'flush' });
    } else if (k < 0.7) {
      const offset = randInt(r, 0, size - 1);
      const bytes = Math.min(size - offset, randInt(r, 1, 3 * clusterSize));
      ops.push({ kind: 'write', offset, bytes, pattern });
    } else if (k < 0.8) {
      const c = randInt(r, 0, clusters);
      ops.push({ kind: 'zero', offset: c * clusterSize, bytes: Math.min(size - c * clusterSize, randInt(r, 1, 3) * clusterSize) });
    } else if (k < 0.9) {
      const c = randInt(r, 0, clusters);
      ops.push({ kind: 'discard', offset: c * clusterSize, bytes: Math.min(size - c * clusterSize, randInt(r, 1, 3) * clusterSize) });
    } else {
      const c = randInt(r, 0, clusters);
      ops.push({ kind: 'compressed', offset: c * clusterSize, bytes: clusterSize, pattern });
    }
  }
  return ops;
}
