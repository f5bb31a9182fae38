/**
 * In-process counterpart of `qemu-img bench`: `count` requests of `size` bytes at offsets `i * step` (wrapping at
 * the disk size), `depth` in flight, through a BlockBackend on a qcow2 node over the file driver.
 *   node --conditions=@blockgraph/source --import tsx bench/bench.mts <image> <read|write> <count> <depth> <size> <step>
 * Prints the elapsed seconds.
 */
import { Graph, IOVector } from '@blockgraph/block-core';
import { allRawDrivers, allocAlignedBuffer } from '@blockgraph/driver-raw/file';
import { qcow2Driver } from '../src/node/index.js';

const [image, mode, countT, depthT, sizeT, stepT] = process.argv.slice(2);
const count = Number(countT);
const depth = Number(depthT);
const size = Number(sizeT);
const step = Number(stepT);
const graph = new Graph({ drivers: [...allRawDrivers, qcow2Driver] });
const node = await graph.addNode({ driver: process.env.BENCH_FORMAT ?? 'qcow2', file: { driver: 'file', filename: image! } });
const be = graph.backend(node);
const disk = node.totalBytes;
// Page-aligned buffers, like qemu-img bench's (qemu_blockalign): the kernel copies much faster into them.
const bufs = Array.from({ length: depth }, () => allocAlignedBuffer(size).fill(0xa5));
const write = mode === 'write';
let next = 0;
let offset = 0;
const t0 = performance.now();
async function worker(k: number): Promise<void> {
  const v = IOVector.of(bufs[k]!);
  while (next < count) {
    next++;
    const off = offset;
    offset += step;
    if (offset + size > disk) offset = 0;
    if (write) await be.pwritev(off, size, v);
    else await be.preadv(off, size, v);
  }
}
await Promise.all(Array.from({ length: depth }, (_, k) => worker(k)));
if (write) await be.flush();
const secs = (performance.now() - t0) / 1000;
await graph.close();
console.log(secs.toFixed(3));
