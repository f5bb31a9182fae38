/**
 * Test helpers around our own drivers: a Graph with every driver of this package, and a blockgraph process
 * that holds an image open (test/helpers/hold-image.mts) for the cross-process locking tests.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { Graph } from '@blockgraph/block-core';
import { allRawDrivers } from '../../src/node/file.js';

export function newGraph(): Graph {
  return new Graph({ drivers: [...allRawDrivers] });
}

const HOLD_SCRIPT = fileURLToPath(new URL('./hold-image.mts', import.meta.url));
const TSX = createRequire(import.meta.url).resolve('tsx');

export interface HoldJob {
  filename: string;
  format?: 'raw' | 'file';
  readOnly?: boolean;
  perm?: number;
  shared?: number;
  locking?: 'on' | 'off' | 'auto';
}

/** A node process holding an image through blockgraph until stop(). */
export class BlockgraphHolder {
  private constructor(private readonly child: ChildProcessWithoutNullStreams) {}

  /** Resolves once the image is held; rejects with our error message if opening failed. */
  static start(job: HoldJob): Promise<BlockgraphHolder> {
    const child = spawn(process.execPath, ['--conditions=@blockgraph/source', '--import', TSX, HOLD_SCRIPT, JSON.stringify(job)], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    let out = '';
    let err = '';
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error(`holder: no answer after 20 s: ${err}`)), 20_000);
      const fail = (e: Error): void => {
        clearTimeout(timer);
        child.kill('SIGKILL');
        reject(e);
      };
      child.on('error', fail);
      child.stderr.on('data', (c: Buffer) => (err += c.toString()));
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.startsWith('ready\n')) {
          clearTimeout(timer);
          resolve(new BlockgraphHolder(child));
        } else if (out.startsWith('error: ') && out.includes('\n')) {
          clearTimeout(timer);
          reject(new Error(out.slice(7, out.indexOf('\n')).replace(/\\n/g, '\n')));
        }
      });
      child.on('exit', (code) => {
        if (!out.startsWith('ready')) fail(new Error(`holder exited (${code}): ${out}${err}`));
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
