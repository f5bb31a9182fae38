/**
 * What the qcow2 mirror ports (041's qcow2 cases, 155, 156, 185) share on top of helpers.ts: a Graph that also
 * has the qcow2 driver, and thin wrappers around QEMU 7.2's qemu-img and qemu-io, which create the images the
 * ports start from and check the images they leave behind (as the QEMU tests do with the same tools).
 */
import { expect } from 'vitest';
import { Graph, type BlockBackend, type BlockNode, type Job } from '@blockgraph/block-core';
import { allRawDrivers } from '@blockgraph/driver-raw/file';
import { qcow2Driver } from '@blockgraph/driver-qcow2/node';
import { copyOnReadDriver } from '@blockgraph/filter-cor';
import { blkdebugDriver, testThrottleDriver } from '../../src/index.js';
import { readNode, runTool, type EventLog } from './helpers.js';

export function newQcow2Graph(): Graph {
  return new Graph({ drivers: [...allRawDrivers, qcow2Driver, blkdebugDriver, testThrottleDriver, copyOnReadDriver] });
}

/** iotests.qemu_img(): run qemu-img, fail with its stderr unless it exits 0; returns stdout. */
export function qemuImg(...args: string[]): string {
  const r = runTool('qemu-img', args);
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} failed (${r.status}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** `qemu-img info --output=json` (with -U: the image may still be open in the graph). */
export function imageInfo(path: string): Record<string, unknown> {
  return JSON.parse(qemuImg('info', '-U', '--output=json', path)) as Record<string, unknown>;
}

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** iotests.qemu_img_map(): `qemu-img map --output=json`. */
export function imageMap(path: string): MapEntry[] {
  return JSON.parse(qemuImg('map', '--output=json', path)) as MapEntry[];
}

/** iotests.compare_images() for qcow2 (or any probed format): `qemu-img compare`; true when identical. */
export function compareQcow2(a: string, b: string): boolean {
  const r = runTool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', a, b]);
  if (r.status !== 0 && r.status !== 1) throw new Error(`qemu-img compare failed (${r.status}): ${r.stderr.trim()}`);
  return r.status === 0;
}

/** `qemu-img check`: the image has no errors and no leaks. */
export function expectCleanImage(path: string): void {
  expect(qemuImg('check', path)).toContain('No errors were found on the image.');
}

/**
 * `qemu-io -c cmd1 -c cmd2 ... image` (image opened with its backing chain), failing on any error or failed pattern
 * verification, as the reference outputs would show it. Returns stdout.
 */
export function qemuIo(path: string, ...cmds: string[]): string {
  const r = runTool('qemu-io', [...cmds.flatMap((c) => ['-c', c]), path]);
  const out = r.stdout + r.stderr;
  if (r.status !== 0 || /Pattern verification failed|error|failed/i.test(out)) {
    throw new Error(`qemu-io ${cmds.join('; ')} on ${path} (${r.status}):\n${out.trim()}`);
  }
  return r.stdout;
}

/** qemu-io `read -P value offset bytes` through the graph: every byte of the range holds `value`. */
export async function expectPattern(g: Graph, where: BlockNode | BlockBackend | string, offset: number, bytes: number, value: number): Promise<void> {
  const data = typeof where !== 'string' && 'read' in where ? await where.read(offset, bytes) : await readNode(g, where, offset, bytes);
  const bad = data.findIndex((b) => b !== value);
  expect(bad, `byte ${bad < 0 ? '' : offset + bad} should be ${value}, is ${bad < 0 ? '' : data[bad]}`).toBe(-1);
}

/** The backing chain of a node as file names, top first (query-named-block-nodes' image/backing-image/...). */
export function backingChain(node: BlockNode): (string | undefined)[] {
  const out: (string | undefined)[] = [];
  for (let n: BlockNode | undefined = node; n; n = n.backing?.node) out.push(n.filename);
  return out;
}

/**
 * iotests' run_job() for a job started with autoFinalize: false: wait for READY, complete (or soft-cancel), wait
 * for PENDING, run `preFinalize` (the test's pre_finalize callback), finalize, wait until the job is gone.
 * Fails unless the job ends with BLOCK_JOB_COMPLETED without an error; returns that event's data.
 */
export async function runJob(
  job: Job,
  events: EventLog,
  preFinalize: () => unknown = () => undefined,
  opts: { cancel?: boolean } = {},
): Promise<Record<string, unknown>> {
  await events.wait('BLOCK_JOB_READY', { device: job.id });
  if (opts.cancel) job.cancel(false);
  else job.complete();
  await events.wait('BLOCK_JOB_PENDING', { id: job.id });
  await preFinalize();
  job.finalize();
  const done = await events.wait('BLOCK_JOB_COMPLETED', { device: job.id });
  expect(done.data.error).toBeUndefined();
  await job.waitFinished();
  return done.data;
}
