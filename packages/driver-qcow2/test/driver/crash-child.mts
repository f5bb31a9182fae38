/**
 * Crash-test workload: random allocating writes, zero writes, discards and compressed writes with a few requests
 * in flight, and flushes. After each completed flush it prints `ack <n>`: requests 0..n-1 are durable. The parent
 * kills this process at a random moment. Run as:
 *   node --conditions=@blockgraph/source --import tsx crash-child.mts <image> <seed> <json options>
 */
import { writeSync } from 'node:fs';
import { Graph, IOVector } from '@blockgraph/block-core';
import { allRawDrivers } from '@blockgraph/driver-raw/file';
import { qcow2Driver } from '../../src/node/index.js';
import { crashOps } from './crash-ops.js';

const [image, seedText, optsText] = process.argv.slice(2);
const opts = JSON.parse(optsText ?? '{}') as { clusterSize: number; size: number; qcow2?: Record<string, unknown> };
const graph = new Graph({ drivers: [...allRawDrivers, qcow2Driver] });
const node = await graph.addNode({ driver: 'qcow2', discard: 'unmap', file: { driver: 'file', filename: image! }, ...(opts.qcow2 ?? {}) });
const be = graph.backend(node);
const ops = crashOps(Number(seedText), opts.size, opts.clusterSize, Number(process.env.CRASH_OPS ?? 100000));
// Synchronous writes: a pipe write that is still queued in Node when the process is killed would be lost.
const say = (line: string): void => void writeSync(1, line + '\n');
say('ready');
say(`native ${node.file!.node.capabilities.zeroWrite}`);
let issued = 0;
const inflight = new Map<Promise<void>, [number, number]>();
const drain = async (): Promise<void> => {
  await Promise.all(inflight.keys());
};
for (const op of ops) {
  if (op.kind === 'flush') {
    await drain();
    await be.flush();
    say(`ack ${issued}`);
    continue;
  }
  // Overlapping requests (and compressed writes, whose success depends on what is allocated) are not issued
  // while others are in flight: the parent's model replays them in order.
  const end = op.offset + op.bytes;
  const overlaps = [...inflight.values()].some(([a, b]) => op.offset < b && a < end);
  if (overlaps || op.kind === 'compressed') await drain();
  let p: Promise<void>;
  switch (op.kind) {
    case 'write':
      p = be.pwrite(op.offset, new Uint8Array(op.bytes).fill(op.pattern));
      break;
    case 'zero':
      p = be.pwriteZeroes(op.offset, op.bytes, 0x4);
      break;
    case 'discard':
      p = be.pdiscard(op.offset, op.bytes);
      break;
    case 'compressed':
      p = be.pwritevCompressed(op.offset, op.bytes, IOVector.of(new Uint8Array(op.bytes).fill(op.pattern))).catch(() => undefined);
      break;
  }
  issued++;
  const q: Promise<void> = p.then(
    () => void inflight.delete(q),
    (e: unknown) => {
      say(`error ${String(e)}`);
      process.exit(3);
    },
  );
  inflight.set(q, [op.offset, end]);
  if (op.kind === 'compressed') await drain();
  if (inflight.size >= 4) await Promise.race(inflight.keys());
}
await drain();
await be.flush();
say(`ack ${issued}`);
say('done');
await graph.close();
