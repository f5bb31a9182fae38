/** The random request sequences of the write matrix, for our driver and as qemu-io commands. */
import { prng, randInt } from './helpers-prng.js';

export type Op =
  | { kind: 'write'; offset: number; bytes: number; pattern: number }
  | { kind: 'zero'; offset: number; bytes: number; unmap: boolean }
  | { kind: 'discard'; offset: number; bytes: number }
  | { kind: 'compressed'; offset: number; bytes: number; pattern: number };

export function genOps(seed: number, size: number, clusterSize: number, count: number): Op[] {
  const r = prng(seed);
  const ops: Op[] = [];
  const maxLen = Math.min(3 * clusterSize, 1024 * 1024);
  const place = (): { offset: number; bytes: number } => {
    const aligned = r() < 0.5;
    let offset = randInt(r, 0, size);
    let bytes = randInt(r, 1, maxLen + 1);
    if (aligned) {
      const a = r() < 0.5 ? clusterSize : 512;
      offset -= offset % a;
      bytes = Math.max(a, bytes - (bytes % a));
    }
    bytes = Math.min(bytes, size - offset);
    return { offset, bytes };
  };
  for (let i = 0; i < count; i++) {
    const k = r();
    const pattern = randInt(r, 1, 256);
    if (k < 0.5) {
      ops.push({ kind: 'write', ...place(), pattern });
    } else if (k < 0.65) {
      ops.push({ kind: 'zero', ...place(), unmap: r() < 0.5 });
    } else if (k < 0.8) {
      ops.push({ kind: 'discard', ...place() });
    } else {
      const clusters = Math.floor(size / clusterSize);
      const c = randInt(r, 0, clusters);
      ops.push({ kind: 'compressed', offset: c * clusterSize, bytes: Math.min(clusterSize, size - c * clusterSize), pattern });
    }
  }
  return ops;
}

/**
 * The qemu-io commands for `ops`. With `reopen` (the image's file name), qemu-io closes and reopens the image after
 * every compressed write. That forgets QEMU 7.2's compressed-write position (free_byte_offset), which it keeps
 * using even after the cluster holding it was freed and reallocated as data or metadata, corrupting the twin (see
 * "a freed cluster that held the compressed-write position" in semantics.test.ts). Reopening changes no content,
 * so the twin stays a valid oracle for long sequences.
 */
export function qemuIoCommands(ops: Op[], reopen?: string): string[] {
  return ops.flatMap((op) => (reopen && op.kind === 'compressed' ? [qemuIoCommand(op), 'close', `open -d unmap -o driver=qcow2 ${reopen}`] : [qemuIoCommand(op)]));
}

function qemuIoCommand(op: Op): string {
  switch (op.kind) {
    case 'write':
      return `write -q -P ${op.pattern} ${op.offset} ${op.bytes}`;
    case 'zero':
      return `write -q -z ${op.unmap ? '-u ' : ''}${op.offset} ${op.bytes}`;
    case 'discard':
      return `discard -q ${op.offset} ${op.bytes}`;
    case 'compressed':
      return `write -q -c -P ${op.pattern} ${op.offset} ${op.bytes}`;
  }
}
