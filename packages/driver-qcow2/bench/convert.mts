/**
 * In-process counterpart of `qemu-img convert -f qcow2 -O qcow2 src dst` (no compression): the target is
 * created with our create, data extents (from block status) are copied in 2 MiB requests, 8 in flight like
 * qemu-img's default coroutines, zero/unallocated extents are skipped (the target reads as zeroes).
 *   node --conditions=@blockgraph/source --import tsx bench/convert.mts <src> <dst>
 * Prints the elapsed seconds (creation included).
 */
import { BlockStatus, Graph, IOVector, Perm, PERM_ALL } from '@blockgraph/block-core';
import { allRawDrivers, allocAlignedBuffer } from '@blockgraph/driver-raw/file';
import { qcow2Driver } from '../src/node/index.js';

const [src, dst] = process.argv.slice(2);
const t0 = performance.now();
const mark = (what: string): void => {
  if (process.env.BENCH_VERBOSE) console.error(what, ((performance.now() - t0) / 1000).toFixed(3));
};
const graph = new Graph({ drivers: [...allRawDrivers, qcow2Driver] });
const from = await graph.addNode({ driver: 'qcow2', readOnly: true, file: { driver: 'file', filename: src! } });
const size = from.totalBytes;
await graph.createImage('qcow2', { filename: dst!, size });
const to = await graph.addNode({ driver: 'qcow2', cache: { noFlush: true }, file: { driver: 'file', filename: dst!, cache: { noFlush: true } } });
mark('opened+created');
const rb = graph.backend(from);
const wb = graph.backend(to, { perm: Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE, shared: PERM_ALL });
const CHUNK = 2 * 1024 * 1024;
const jobs: [number, number][] = [];
for (let off = 0; off < size; ) {
  const st = await rb.blockStatus(off, size - off, false);
  const n = st.pnum;
  if (st.ret & BlockStatus.DATA) for (let o = off; o < off + n; o += CHUNK) jobs.push([o, Math.min(CHUNK, off + n - o)]);
  off += n;
}
mark('mapped');
let next = 0;
await Promise.all(
  Array.from({ length: 8 }, async () => {
    const buf = allocAlignedBuffer(CHUNK);
    while (next < jobs.length) {
      const [o, n] = jobs[next++]!;
      const v = IOVector.of(buf.subarray(0, n));
      await rb.preadv(o, n, v);
      await wb.pwritev(o, n, v);
    }
  }),
);
mark('copied');
// qemu-img convert writes its target with cache=unsafe by default: no flush reaches the disk.
await graph.close();
console.log(((performance.now() - t0) / 1000).toFixed(3));
