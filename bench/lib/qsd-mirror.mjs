#!/usr/bin/env node
/**
 * QEMU's side of the mirror benchmark: qemu-storage-daemon with the source and a target created like
 * `blockgraph mirror` creates it, driven over QMP: blockdev-mirror, wait for READY, block-job-complete, wait for
 * BLOCK_JOB_COMPLETED. Prints "Mirror completed in N seconds." (from blockdev-mirror to completion), as
 * `blockgraph mirror` does.
 *
 *   node bench/lib/qsd-mirror.mjs [-f fmt] [-O fmt] [--copy-mode mode] SRC DST
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Qmp } from './qmp.mjs';

const args = process.argv.slice(2);
let fmt = 'qcow2';
let outFmt;
let copyMode = 'background';
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '-f') fmt = args[++i];
  else if (args[i] === '-O') outFmt = args[++i];
  else if (args[i] === '--copy-mode') copyMode = args[++i];
  else files.push(args[i]);
}
outFmt ??= fmt;
const [src, dst] = files;
if (!src || !dst) {
  console.error('usage: qsd-mirror.mjs [-f fmt] [-O fmt] [--copy-mode mode] SRC DST');
  process.exit(2);
}

const info = JSON.parse(spawnSync('qemu-img', ['info', '-f', fmt, '--output=json', src], { encoding: 'utf8' }).stdout);
const create = spawnSync('qemu-img', ['create', '-q', '-f', outFmt, dst, String(info['virtual-size'])], { encoding: 'utf8' });
if (create.status !== 0) throw new Error(create.stderr);

const dir = mkdtempSync(join(tmpdir(), 'qsd-'));
const sock = join(dir, 'qmp.sock');
const qsd = spawn('qemu-storage-daemon', [
  '--blockdev', `driver=file,node-name=src-file,filename=${src}`,
  '--blockdev', `driver=${fmt},node-name=src,file=src-file`,
  '--blockdev', `driver=file,node-name=dst-file,filename=${dst},discard=unmap`,
  '--blockdev', `driver=${outFmt},node-name=dst,file=dst-file,discard=unmap`,
  '--chardev', `socket,id=qmp,path=${sock},server=on,wait=off`,
  '--monitor', 'chardev=qmp',
], { stdio: ['ignore', 'inherit', 'inherit'] });
try {
  while (!existsSync(sock)) await new Promise((r) => setTimeout(r, 5));
  const qmp = new Qmp(sock);
  await qmp.connect();
  const t0 = process.hrtime.bigint();
  await qmp.execute('blockdev-mirror', { 'job-id': 'mirror', device: 'src', target: 'dst', sync: 'full', 'copy-mode': copyMode });
  await qmp.waitEvent('BLOCK_JOB_READY');
  await qmp.execute('block-job-complete', { device: 'mirror' });
  const done = await qmp.waitEvent('BLOCK_JOB_COMPLETED');
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (done.data.error) throw new Error(done.data.error);
  await qmp.execute('quit').catch(() => undefined);
  qmp.close();
  console.log(`Mirror completed in ${secs.toFixed(3)} seconds.`);
} finally {
  qsd.kill();
  rmSync(dir, { recursive: true, force: true });
}
