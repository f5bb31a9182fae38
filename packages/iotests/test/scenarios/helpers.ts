/**
 * What the qemu-iotests ports share: a Graph with the drivers they use, QEMU-style devices, an event log with
 * QEMU's `event_wait()` semantics, image files in a temporary directory and the real QEMU 7.2 tools.
 *
 * QMP → TypeScript: blockdev-add → graph.addNode; -device with drive= → device(); blockdev-mirror → startMirror;
 * block-job-* / job-* → job.complete() / cancel(force) / pause() / resume() / setSpeed() / finalize() /
 * dismiss() / change(); query-block-jobs → job.query(); events → graph.on() (EventLog).
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { describe, it } from 'vitest';
import { Graph, Perm, PERM_ALL, type BlockBackend, type BlockDriver, type BlockNode, type GraphEvent, type Job } from '@blockgraph/block-core';
import { allRawDrivers } from '@blockgraph/driver-raw/file';
import { copyOnReadDriver } from '@blockgraph/filter-cor';
import { blkdebugDriver, testThrottleDriver, type ManualClock } from '../../src/index.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const R = Perm.CONSISTENT_READ;
export const W = Perm.WRITE;
export const WU = Perm.WRITE_UNCHANGED;
export const RS = Perm.RESIZE;

/** In CI a missing prerequisite is a failure, not a skip (DEVELOPERS.md). */
export const IN_CI = process.env.CI === 'true' || process.env.CI === '1';

export function findOnPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return null;
}

export function missingTools(...names: string[]): string[] {
  return names.filter((n) => findOnPath(n) === null);
}

/** `describe` that needs QEMU's tools: skipped (with the reason in its title) without them, failing in CI. */
export function describeWithTools(title: string, tools: string[], body: () => void): void {
  const missing = missingTools(...tools);
  if (missing.length === 0) {
    describe(title, body);
  } else if (IN_CI) {
    describe(title, () => {
      it('has its prerequisites (required when CI is set)', () => {
        throw new Error(`missing: ${missing.join(', ')}`);
      });
    });
  } else {
    describe.skip(`${title} [skipped: missing ${missing.join(', ')}]`, body);
  }
}

export function newGraph(...extraDrivers: BlockDriver[]): Graph {
  return new Graph({ drivers: [...allRawDrivers, blkdebugDriver, testThrottleDriver, copyOnReadDriver, ...extraDrivers] });
}

/**
 * A guest device on `node` (-device virtio-blk,drive=...): blkconf_apply_backend_options() takes consistent read
 * and write and shares consistent read, write unchanged and resize (a resizable device), plus write with
 * share-rw=on.
 */
export function device(g: Graph, node: string | BlockNode, name: string, opts: { shareRw?: boolean; readOnly?: boolean } = {}): BlockBackend {
  return g.backend(node, {
    name,
    perm: R | (opts.readOnly ? 0 : W),
    shared: R | WU | RS | (opts.shareRw ? W : 0),
  });
}

/** Read a node's content without taking or unsharing anything (a mirror target shares no consistent read). */
export async function readNode(g: Graph, node: string | BlockNode, offset = 0, bytes?: number): Promise<Uint8Array> {
  const be = g.backend(node, { perm: 0, shared: PERM_ALL });
  try {
    return await be.read(offset, bytes ?? be.getLength() - offset);
  } finally {
    be.remove();
  }
}

export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

export function pattern(bytes: number, value: number): Uint8Array {
  return new Uint8Array(bytes).fill(value);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * qtest's clock_step in a loop: step `clock` by `stepMs` (without it, to its last pending timer) until `cond()`
 * holds, letting the event loop run between steps as it runs between qtest commands.
 */
export async function stepClockUntil(clock: ManualClock, cond: () => boolean, what: string, stepMs?: number): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i === 10_000) throw new Error(`timed out waiting for ${what}`);
    if (stepMs === undefined) clock.runAllTimers();
    else clock.step(stepMs);
    await sleep(1);
  }
}

/** Poll `cond` every few ms until it holds (QEMU tests' busy loops over query-jobs). */
export async function until(cond: () => boolean, what: string, timeoutMs = 20_000, stepMs = 2): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(stepMs);
  }
}

/**
 * The events a graph emitted, with QEMU's `vm.event_wait()` semantics: `wait()` returns the oldest matching
 * event not returned yet, waiting for it if it has not happened; other events stay available.
 */
export class EventLog {
  readonly events: GraphEvent[] = [];
  private readonly consumed = new Set<GraphEvent>();
  private readonly waiters: { match: (e: GraphEvent) => boolean; resolve: (e: GraphEvent) => void }[] = [];
  readonly stop: () => void;

  constructor(g: Graph) {
    this.stop = g.on((e) => {
      this.events.push(e);
      const i = this.waiters.findIndex((w) => w.match(e));
      if (i >= 0) {
        this.consumed.add(e);
        this.waiters.splice(i, 1)[0]!.resolve(e);
      }
    });
  }

  wait(name: string, data: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<GraphEvent> {
    const match = (e: GraphEvent): boolean => e.event === name && Object.entries(data).every(([k, v]) => e.data[k] === v);
    const old = this.events.find((e) => !this.consumed.has(e) && match(e));
    if (old) {
      this.consumed.add(old);
      return Promise.resolve(old);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${name} ${JSON.stringify(data)}`)), timeoutMs);
      this.waiters.push({
        match,
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e);
        },
      });
    });
  }

  /** Index of the first event after the last clear(). */
  private mark = 0;

  /** Mark everything seen so far as consumed (QEMU tests' "drain status change events"). */
  clear(): void {
    for (const e of this.events) this.consumed.add(e);
    this.mark = this.events.length;
  }

  named(name: string): GraphEvent[] {
    return this.events.filter((e) => e.event === name);
  }

  /** The JOB_STATUS_CHANGE statuses of job `id`, in order. */
  statuses(id: string): string[] {
    return this.events.filter((e) => e.event === 'JOB_STATUS_CHANGE' && e.data.id === id).map((e) => String(e.data.status));
  }

  /** Event names (JOB_STATUS_CHANGE as `status:<s>`) in order, for sequence assertions; since the last clear(). */
  sequence(id: string): string[] {
    return this.events
      .slice(this.mark)
      .filter((e) => e.data.id === id || e.data.device === id)
      .map((e) => (e.event === 'JOB_STATUS_CHANGE' ? `status:${String(e.data.status)}` : e.event));
  }
}

/** query-block-jobs' "remaining" (len - offset). */
export function remaining(job: Job): number {
  const q = job.query();
  return q.len - q.offset;
}

// --- image files and QEMU's tools ----------------------------------------------------------------------------

export interface Scratch {
  dir: string;
  path(name: string): string;
  cleanup(): void;
}

export function scratch(prefix: string): Scratch {
  const dir = mkdtempSync(join(tmpdir(), `blockgraph-iotest-${prefix}-`));
  return { dir, path: (n) => join(dir, n), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** `qemu-img create -f raw path size`, without needing qemu-img: a sparse file. */
export function createRaw(path: string, size: number): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
}

/** `qemu-io -c 'write -P value offset bytes'` on a raw file that nobody has open. */
export function writePattern(path: string, offset: number, bytes: number, value: number): void {
  const fd = openSync(path, 'r+');
  try {
    const chunk = new Uint8Array(Math.min(bytes, MiB)).fill(value);
    for (let done = 0; done < bytes; ) {
      const n = Math.min(chunk.length, bytes - done);
      writeSync(fd, chunk, 0, n, offset + done);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
}

export interface ToolResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function runTool(command: string, args: string[], timeoutMs = 30_000): ToolResult {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: timeoutMs });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** iotests.compare_images(): `qemu-img compare` of two raw images; true when identical. */
export function compareImages(a: string, b: string): boolean {
  const r = runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', a, b]);
  if (r.status !== 0 && r.status !== 1) throw new Error(`qemu-img compare failed (${r.status}): ${r.stderr}`);
  return r.status === 0;
}

/** iotests.create_image(): a fully allocated raw image whose sectors hold their own number. */
export function createImage(path: string, size: number): void {
  const fd = openSync(path, 'w');
  try {
    const buf = new Uint8Array(Math.min(Math.max(size, 512), MiB));
    const dv = new DataView(buf.buffer);
    for (let off = 0; off < size; off += buf.length) {
      const n = Math.min(buf.length, size - off);
      for (let i = 0; i < n; i += 512) {
        dv.setInt32(i, (off + i) / 512);
        dv.setInt32(i + 508, (off + i) / 512);
      }
      writeSync(fd, buf, 0, n, off);
    }
  } finally {
    closeSync(fd);
  }
}
