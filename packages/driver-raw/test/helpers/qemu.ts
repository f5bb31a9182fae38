/**
 * Test helpers for running the real QEMU 7.2 tools next to our code: finding them, running them, keeping
 * a qemu-io process alive with an image open, and reading the kernel's view of byte-range locks.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { describe, it } from 'vitest';

/** In CI a missing prerequisite is a failure, not a skip. */
export const IN_CI = process.env.CI === 'true' || process.env.CI === '1';

export function findOnPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return null;
}

/**
 * `describe` that needs something the machine may lack (`missing` lists what is absent). Without CI the
 * suite is skipped and the reason is part of its title; in CI it becomes a failing test.
 */
export function describeRequiring(title: string, missing: string[], body: () => void): void {
  if (missing.length === 0) {
    describe(title, body);
  } else if (IN_CI) {
    describe(title, () => {
      it('has its prerequisites (required when CI is set)', () => {
        throw new Error(`missing: ${missing.join(', ')}`);
      });
    });
  } else {
    const reason = `[skipped: missing ${missing.join(', ')}]`;
    console.warn(`${title} ${reason}`);
    describe.skip(`${title} ${reason}`, body);
  }
}

export function missingTools(...names: string[]): string[] {
  return names.filter((name) => findOnPath(name) === null);
}

export interface ToolResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function runTool(command: string, args: string[]): ToolResult {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: 30_000 });
  if (result.error) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

export function makeTempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `blockgraph-${prefix}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * A qemu-io process with an image open, reading commands from a pipe that stays open, so the image (and
 * its locks) stay held until stop().
 */
export class QemuIoHolder {
  private constructor(private readonly child: ChildProcessWithoutNullStreams) {}

  static start(args: string[]): Promise<QemuIoHolder> {
    const child = spawn('qemu-io', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error(`qemu-io ${args.join(' ')}: no prompt after 10 s`)), 10_000);
      const fail = (error: Error) => {
        clearTimeout(timer);
        child.kill('SIGKILL');
        reject(error);
      };
      child.on('error', fail);
      child.on('exit', (code) => fail(new Error(`qemu-io ${args.join(' ')} exited (${code}): ${stderr}`)));
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        // The prompt comes after the image is open (and its permissions, hence its locks, are taken).
        if (!stdout.includes('qemu-io> ')) return;
        clearTimeout(timer);
        child.removeAllListeners('exit');
        if (stderr !== '') {
          child.kill('SIGKILL');
          reject(new Error(`qemu-io ${args.join(' ')}: ${stderr}`));
        } else {
          resolve(new QemuIoHolder(child));
        }
      });
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.stdin.end('quit\n');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
}

/**
 * Byte offsets of `path` that anyone holds a lock on, from /proc/locks (the kernel's view, independent of
 * the code under test), restricted to QEMU's lock area.
 */
export function lockedBytes(path: string): number[] {
  const inode = statSync(path).ino;
  const held = new Set<number>();
  for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
    // "1: OFDLCK ADVISORY  READ -1 fe:00:2147520 100 101"
    const match = /\s(\S+):(\S+):(\d+)\s+(\d+)\s+(\d+|EOF)\s*$/.exec(line);
    if (!match || Number(match[3]) !== inode) continue;
    const start = Number(match[4]);
    const end = match[5] === 'EOF' ? 299 : Math.min(Number(match[5]), 299);
    for (let byte = start; byte <= end; byte++) held.add(byte);
  }
  return [...held].filter((byte) => byte >= 100 && byte < 300).sort((a, b) => a - b);
}
