/// <reference types="node" />
import { spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, fstatSync, fsyncSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { basename } from 'node:path';
import { expect } from 'vitest';
import type { CheckFix, CheckResult } from '@blockgraph/block-core';
import {
  checkExitCode,
  checkImage,
  formatCheckHuman,
  formatCheckJson,
  type ImageIO,
} from '../../src/check/index.js';

/** ImageIO over a real file (short reads past EOF, like pread). */
export class FileImageIO implements ImageIO {
  private readonly fd: number;
  constructor(path: string) {
    this.fd = openSync(path, 'r+');
  }
  async readAt(offset: number, length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, buf, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  }
  async writeAt(offset: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) done += writeSync(this.fd, data, done, data.length - done, offset + done);
  }
  async flush(): Promise<void> {
    fsyncSync(this.fd);
  }
  async length(): Promise<number> {
    return fstatSync(this.fd).size;
  }
  async truncate(length: number): Promise<void> {
    ftruncateSync(this.fd, length);
  }
  /** Like a punched hole: the range (inside the file) reads as zeros afterwards. */
  async discard(offset: number, length: number): Promise<void> {
    const end = Math.min(offset + length, fstatSync(this.fd).size);
    if (end > offset) await this.writeAt(offset, new Uint8Array(end - offset));
  }
  close(): void {
    closeSync(this.fd);
  }
}

/** An in-memory ImageIO (zero-filled reads past EOF), for tests without files. */
export class MemoryImageIO implements ImageIO {
  flushes = 0;
  constructor(public bytes: Uint8Array) {}
  async readAt(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    out.set(this.bytes.subarray(offset, Math.min(offset + length, this.bytes.length)));
    return out;
  }
  async writeAt(offset: number, data: Uint8Array): Promise<void> {
    if (offset + data.length > this.bytes.length) {
      const grown = new Uint8Array(offset + data.length);
      grown.set(this.bytes);
      this.bytes = grown;
    }
    this.bytes.set(data, offset);
  }
  async flush(): Promise<void> {
    this.flushes++;
  }
  async length(): Promise<number> {
    return this.bytes.length;
  }
}

export async function ourCheck(path: string, fix: CheckFix = 'none'): Promise<CheckResult> {
  const io = new FileImageIO(path);
  try {
    return await checkImage(io, fix);
  } finally {
    io.close();
  }
}

export interface QemuCheck {
  status: number;
  stdout: string;
  /** stderr lines without qemu-img's final "Check failed" line and open-time warnings. */
  lines: string[];
  stderr: string;
}

const OPEN_WARNINGS = [
  /^qemu-img: warning: a program lacking bitmap support modified this file/,
  /^Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix\.$/,
];

export function qemuCheck(path: string, fix: CheckFix = 'none', json = true): QemuCheck {
  const args = ['check', '-f', 'qcow2'];
  if (json) args.push('--output=json');
  if (fix !== 'none') args.push('-r', fix);
  args.push(basename(path));
  const r = spawnSync('qemu-img', args, {
    cwd: path.slice(0, path.length - basename(path).length) || '.',
    encoding: 'utf8',
    maxBuffer: 1 << 28,
  });
  // An open-time warning without a trailing newline runs into the next line; split it off first.
  const stderr = r.stderr.replace(/(on the image file to fix\.)(?=.)/, '$1\n');
  const lines = stderr
    .split('\n')
    .filter((l) => l !== '')
    .filter((l) => !/^qemu-img: Check failed/.test(l))
    .filter((l) => !OPEN_WARNINGS.some((re) => re.test(l)));
  return { status: r.status ?? -1, stdout: r.stdout, lines, stderr: r.stderr };
}

export function copy(from: string, to: string): string {
  copyFileSync(from, to);
  return to;
}

export function cmpFiles(a: string, b: string): boolean {
  return spawnSync('cmp', ['-s', a, b]).status === 0;
}

/**
 * Run our check and `qemu-img check` (JSON and human) with the same repair mode on identical copies of
 * `image` and require the same output, the same stderr lines and the same exit code. Returns the paths of
 * our copy and QEMU's (JSON-run) copy, and our result.
 */
export async function expectParity(
  image: string,
  fix: CheckFix = 'none',
): Promise<{ ours: string; theirs: string; result: CheckResult; qemu: QemuCheck }> {
  const ours = copy(image, image + `.ours-${fix}`);
  const theirs = copy(image, image + `.qemu-${fix}`);
  const theirsHuman = copy(image, image + `.qemuh-${fix}`);
  const result = await ourCheck(ours, fix);
  const qemu = qemuCheck(theirs, fix, true);
  const qemuHuman = qemuCheck(theirsHuman, fix, false);
  const name = basename(theirs);
  expect(result.messages, 'stderr lines').toEqual(qemu.lines);
  expect(formatCheckJson(result, name), 'JSON output').toBe(qemu.stdout);
  expect(formatCheckHuman(result, name), 'human output').toBe(qemuHuman.stdout);
  expect(checkExitCode(result, fix), 'exit code').toBe(qemu.status);
  expect(qemuHuman.status).toBe(qemu.status);
  return { ours, theirs, result, qemu };
}

/**
 * After a repair: QEMU must find our repaired image exactly as it finds its own (with `sameReport: false`
 * only the findings, not the layout figures — for images QEMU changes beyond the repair when it closes
 * them, e.g. by storing persistent bitmaps anew).
 */
export function expectRepairedLike(ours: string, theirs: string, sameReport = true): void {
  const a = qemuCheck(ours);
  const b = qemuCheck(theirs);
  expect(a.status, `qemu-img check of our repaired image: ${a.stdout}${a.stderr}`).toBe(b.status);
  expect(a.lines).toEqual(b.lines);
  if (sameReport) expect(a.stdout.replace(basename(ours), 'X')).toBe(b.stdout.replace(basename(theirs), 'X'));
}
