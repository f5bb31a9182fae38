#!/usr/bin/env node
'use strict';
/*
 * The floor under any Node.js `convert`: copies the data clusters of a qcow2 image (standard clusters only, as the
 * bench fixtures have) into a new file with the syscalls qemu-img convert makes for them — 2 MiB preads, 8 in
 * flight in libuv's pool sized as `blockgraph` sizes it, and 2 MiB writes in guest order, one after the other at
 * the end of the output as a qcow2 target places them — and nothing else: no block status, no zero scan, no qcow2
 * metadata in the output, no graph. It is not a converter (the output is not an image); it says how fast a convert
 * written in Node.js could be on this machine at best, start-up included.
 *
 * The writes take the fastest way measured here: queued on the native helper's per-file write thread (which
 * `blockgraph` uses too) as soon as their turn comes, without waiting for the write before to finish — a queue
 * that never runs dry. Without a built helper they go through libuv's pool, one at a time. The earlier version of
 * this script (8 reads and writes in flight through the pool, at guest offsets) was 0.01-0.03 s slower.
 *
 * usage: node bench/lib/node-copy-floor.cjs SOURCE.qcow2 OUT
 */
if (!process.env.UV_THREADPOOL_SIZE) {
  process.env.UV_THREADPOOL_SIZE = String(Math.max(2, require('node:os').availableParallelism()));
}
const fs = require('node:fs');
const path = require('node:path');

const MAX_RUN = 2 << 20;
const IN_FLIGHT = 8;
const L2E_OFFSET_MASK = 0x00fffffffffffe00n;
const QCOW_OFLAG_COMPRESSED = 1n << 62n;

function loadHelper() {
  try {
    return require(path.join(__dirname, '../../packages/driver-raw/native/build/Release/blockgraph_native.node'));
  } catch {
    return null;
  }
}

/** Guest-and-host-contiguous runs of allocated data clusters, at most MAX_RUN bytes each, in guest order. */
function dataRuns(fd) {
  const header = Buffer.alloc(48);
  fs.readSync(fd, header, 0, 48, 0);
  if (header.readUInt32BE(0) !== 0x514649fb) throw new Error('not a qcow2 image');
  const clusterSize = 1 << header.readUInt32BE(20);
  const l1Size = header.readUInt32BE(36);
  const l1Offset = Number(header.readBigUInt64BE(40));
  const l1 = Buffer.alloc(l1Size * 8);
  fs.readSync(fd, l1, 0, l1.length, l1Offset);
  const l2 = Buffer.alloc(clusterSize);
  const perL2 = clusterSize / 8;
  const runs = [];
  for (let i = 0; i < l1Size; i++) {
    const l2Offset = Number(l1.readBigUInt64BE(i * 8) & L2E_OFFSET_MASK);
    if (!l2Offset) continue;
    fs.readSync(fd, l2, 0, clusterSize, l2Offset);
    for (let j = 0; j < perL2; j++) {
      const entry = l2.readBigUInt64BE(j * 8);
      if (entry & QCOW_OFLAG_COMPRESSED) throw new Error('compressed clusters are out of scope');
      const host = Number(entry & L2E_OFFSET_MASK);
      if (!host) continue;
      const guest = (i * perL2 + j) * clusterSize;
      const last = runs[runs.length - 1];
      if (last && last.guest + last.length === guest && last.host + last.length === host && last.length < MAX_RUN) {
        last.length += clusterSize;
      } else {
        runs.push({ guest, host, length: clusterSize });
      }
    }
  }
  return runs;
}

function io(method, fd, buf, length, position) {
  return new Promise((resolve, reject) => {
    fs[method](fd, buf, 0, length, position, (err, n) => (err ? reject(err) : n === length ? resolve() : reject(new Error(`short ${method}`))));
  });
}

async function main() {
  const [source, out] = process.argv.slice(2);
  if (!source || !out) throw new Error('usage: node-copy-floor.cjs SOURCE.qcow2 OUT');
  const helper = loadHelper();
  const src = fs.openSync(source, 'r');
  const dst = fs.openSync(out, 'w');
  const runs = dataRuns(src);
  // Writes go out in run order: a run's write is issued once every earlier run's has been.
  let turn = 0;
  let outPos = 0;
  let lastWrite = Promise.resolve();
  const waiting = new Map();
  const issueWrite = (i, buf) => {
    const r = runs[i];
    const data = buf.subarray(0, r.length);
    const at = outPos;
    const written = helper ? helper.pwritevQueued(dst, [data], at) : lastWrite.then(() => io('write', dst, data, r.length, at));
    lastWrite = written;
    outPos += r.length;
    turn++;
    const next = waiting.get(turn);
    if (next) {
      waiting.delete(turn);
      next();
    }
    return written;
  };
  let next = 0;
  const worker = async () => {
    const buf = Buffer.allocUnsafeSlow(MAX_RUN);
    while (next < runs.length) {
      const i = next++;
      await io('read', src, buf, runs[i].length, runs[i].host);
      if (turn !== i) await new Promise((resolve) => waiting.set(i, resolve));
      await issueWrite(i, buf);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  fs.closeSync(dst);
  fs.closeSync(src);
}

main().catch((e) => {
  process.stderr.write(`node-copy-floor: ${e.message}\n`);
  process.exit(1);
});
