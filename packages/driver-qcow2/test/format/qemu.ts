/// <reference types="node" />
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * QEMU 7.2 as the oracle: helpers that make images with qemu-img/qemu-io in a temporary directory. Without
 * qemu-img the QEMU-backed tests are skipped locally, but under CI=true the suite must fail rather than pass
 * on nothing.
 */

function probe(): boolean {
  const r = spawnSync('qemu-img', ['--version'], { encoding: 'utf8' });
  return r.status === 0;
}

export const hasQemu = probe();

if (!hasQemu && process.env.CI === 'true') {
  throw new Error('qemu-img is required when CI=true (install qemu-utils)');
}

export class Workdir {
  readonly dir = mkdtempSync(join(tmpdir(), 'qcow2-format-'));

  path(name: string): string {
    return join(this.dir, name);
  }

  qemuImg(...args: string[]): string {
    return execFileSync('qemu-img', args, { cwd: this.dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  }

  qemuIo(image: string, ...commands: string[]): string {
    const args = ['-f', 'qcow2'];
    for (const c of commands) args.push('-c', c);
    args.push(image);
    return execFileSync('qemu-io', args, { cwd: this.dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** qemu-io commands that end the process abnormally (`abort`, to leave an image as a crash would). */
  qemuIoCrash(image: string, ...commands: string[]): void {
    const args = ['-f', 'qcow2'];
    for (const c of commands) args.push('-c', c);
    args.push(image);
    spawnSync('qemu-io', args, { cwd: this.dir, encoding: 'utf8' });
  }

  /** `qemu-img create -f qcow2 [-o opts] name size`; returns the image path. */
  create(name: string, size: string, options: string[] = [], extra: string[] = []): string {
    const args = ['create', '-q', '-f', 'qcow2'];
    if (options.length) args.push('-o', options.join(','));
    args.push(...extra, name, size);
    this.qemuImg(...args);
    return this.path(name);
  }

  /** stderr and status of `qemu-img info` on a file (for error-message parity). */
  infoError(name: string): { status: number | null; stderr: string } {
    const r = spawnSync('qemu-img', ['info', '-f', 'qcow2', '--output=json', name], { cwd: this.dir, encoding: 'utf8' });
    return { status: r.status, stderr: r.stderr.trim() };
  }

  /** stderr and status of a plain `qemu-io` open (read-only unless asked). */
  ioOpenError(name: string, readWrite = false): { status: number | null; stderr: string } {
    const args = readWrite ? ['-f', 'qcow2', '-c', 'quit', name] : ['-r', '-f', 'qcow2', '-c', 'quit', name];
    const r = spawnSync('qemu-io', args, { cwd: this.dir, encoding: 'utf8' });
    return { status: r.status, stderr: r.stderr.trim() };
  }

  read(name: string): Uint8Array {
    return new Uint8Array(readFileSync(this.path(name)));
  }

  write(name: string, bytes: Uint8Array): void {
    writeFileSync(this.path(name), bytes);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The message qemu-img prints after "Could not open '<file>': ". */
export function qemuOpenMessage(stderr: string): string {
  const m = /Could not open '[^']*': (.*)/.exec(stderr) ?? /can't open device [^:]*: (.*)/.exec(stderr);
  return m ? m[1]! : stderr;
}

/** Read a big-endian u64 as a bigint (test-side convenience). */
export function u64At(bytes: Uint8Array, offset: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(offset);
}

export function dataView(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
