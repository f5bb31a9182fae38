/**
 * Test helpers: run blockgraph in-process (main() with string streams) or as the real bin, run QEMU's tools,
 * temporary directories, and the rule for missing tools (skip with a reason; fail when CI=true).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../src/index.js';

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

/** `describe` needing QEMU tools: skipped with a printed reason, or a failing test under CI=true. */
export function describeWithQemu(title: string, tools: string[], body: () => void): void {
  const missing = missingTools(...tools);
  if (missing.length === 0) {
    describe(title, body);
  } else if (IN_CI) {
    describe(title, () => {
      it('has the QEMU tools it compares against (required when CI is set)', () => {
        throw new Error(`missing: ${missing.join(', ')}`);
      });
    });
  } else {
    const reason = `[skipped: missing ${missing.join(', ')}]`;
    console.warn(`${title} ${reason}`);
    describe.skip(`${title} ${reason}`, body);
  }
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** blockgraph in-process. */
export async function bg(...argv: string[]): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const status = await main(argv, {
    stdout: { write: (s: string) => (stdout += s), isTTY: false },
    stderr: { write: (s: string) => (stderr += s), isTTY: false },
    env: {},
  });
  return { status, stdout, stderr };
}

export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {}): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 120_000, cwd: opts.cwd, env: opts.env ?? process.env, input: opts.input });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export const qemuImg = (...args: string[]): RunResult => run('qemu-img', args);
export const qemuIo = (...args: string[]): RunResult => run('qemu-io', args);

const here = dirname(fileURLToPath(import.meta.url));
export const CLI_ROOT = join(here, '..');
const DIST_BIN = join(CLI_ROOT, 'dist', 'bin.js');
/** The package's `bin`: sizes libuv's thread pool, then loads dist/bin.js. */
const LAUNCHER = join(CLI_ROOT, 'bin', 'blockgraph.cjs');
const TSX = join(CLI_ROOT, '..', '..', 'node_modules', 'tsx', 'dist', 'esm', 'index.mjs');

function newestMtime(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return t;
}

/**
 * The command line that runs the real `blockgraph` bin: the package's launcher (bin/blockgraph.cjs) when the
 * built dist/bin.js is up to date with the sources, else the source bin through tsx.
 */
export function binCommand(): { cmd: string; args: string[]; kind: 'dist' | 'source' } {
  let fresh = false;
  try {
    fresh = existsSync(DIST_BIN) && statSync(DIST_BIN).mtimeMs >= newestMtime(join(CLI_ROOT, 'src'));
  } catch {
    fresh = false;
  }
  if (fresh) return { cmd: process.execPath, args: [LAUNCHER], kind: 'dist' };
  return { cmd: process.execPath, args: ['--conditions=@blockgraph/source', '--import', TSX, join(CLI_ROOT, 'src', 'bin.ts')], kind: 'source' };
}

export function bgSpawn(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): RunResult {
  const b = binCommand();
  return run(b.cmd, [...b.args, ...args], { ...opts, ...(opts.env ? { env: { ...process.env, ...opts.env } } : {}) });
}

export function tempDir(prefix: string): { dir: string; path: (name: string) => string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `blockgraph-cli-${prefix}-`));
  return { dir, path: (n) => join(dir, n), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** qemu-iotests' _filter_qemu_io timing filter. */
export function filterQemuIo(text: string): string {
  return text.replace(
    /[0-9]* ops; [0-9/:. sec]* \([0-9/.inf]* [EPTGMKiBbytes]*\/sec and [0-9/.inf]* ops\/sec\)/g,
    'X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)',
  );
}

/** A big-endian 64-bit field of an image file (headers, table entries: for damaging images on purpose). */
export function readU64(fd: number, at: number): bigint {
  const b = Buffer.alloc(8);
  readSync(fd, b, 0, 8, at);
  return b.readBigUInt64BE();
}

export function writeU64(fd: number, at: number, v: bigint): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  writeSync(fd, b, 0, 8, at);
}

type TempDir = ReturnType<typeof tempDir>;

/**
 * Twin directories, `q` for QEMU's tools and `b` for blockgraph, each built by `build` before the file's tests and
 * removed after them: for a sequence of steps replayed on both (replayStep()).
 */
export function twinDirs(prefix: string, build: (dir: TempDir) => void): { q: TempDir; b: TempDir } {
  const q = tempDir(`${prefix}-q`);
  const b = tempDir(`${prefix}-b`);
  beforeAll(() => {
    build(q);
    build(b);
  });
  afterAll(() => {
    q.cleanup();
    b.cleanup();
  });
  return { q, b };
}

/**
 * One step on both twins: QEMU's `tool` in `q`, the same command of blockgraph in `b` (file names ending in
 * .qcow2 taken in each directory). blockgraph must end as QEMU did (exit status, stdout, stderr in our form) and
 * leave img.qcow2 byte-identical to QEMU's. The two results, for further checks.
 */
export async function replayStep(
  twins: { q: TempDir; b: TempDir },
  tool: 'qemu-img' | 'qemu-io',
  args: readonly string[],
): Promise<{ qr: RunResult; br: RunResult }> {
  const { q, b } = twins;
  const at = (d: string) => args.map((a) => (a.endsWith('.qcow2') ? join(d, a) : a));
  const qr = run(tool, at(q.dir));
  const br = await bg(...(tool === 'qemu-io' ? ['io'] : []), ...at(b.dir));
  const norm = (text: string, d: string) => filterQemuIo(text.split(d).join('$DIR'));
  expect({ status: br.status, stdout: norm(br.stdout, b.dir) }).toEqual({ status: qr.status, stdout: norm(qr.stdout, q.dir) });
  expect(norm(br.stderr, b.dir)).toBe(normaliseStderr(norm(qr.stderr, q.dir), tool));
  expect(readFileSync(b.path('img.qcow2')).equals(readFileSync(q.path('img.qcow2')))).toBe(true);
  return { qr, br };
}

/** blockgraph (`b`) ended as QEMU's tool (`q`) did: same exit status and stdout, and QEMU's stderr in our form. */
export function expectSameOutput(r: { b: RunResult; q: RunResult }): void {
  expect({ status: r.b.status, stdout: r.b.stdout }).toEqual({ status: r.q.status, stdout: r.q.stdout });
  expect(r.b.stderr).toBe(normaliseStderr(r.q.stderr));
}

/** QEMU's error lines in blockgraph's form: program name swapped, the "Try --help" hint dropped, continuation lines joined. */
export function normaliseStderr(text: string, tool: 'qemu-img' | 'qemu-io' = 'qemu-img'): string {
  const lines = text.split('\n').filter((l) => l !== '' && !l.startsWith(`Try '${tool} --help'`));
  const out: string[] = [];
  for (const l of lines) {
    if (l.startsWith(`${tool}: `)) {
      const msg = l.slice(tool.length + 2);
      // error_report() continuation of a two-line message ("...suffixes for" / "kilobytes, ...").
      const prev = out[out.length - 1];
      if (prev !== undefined && prev.endsWith(' for') && prev.startsWith('blockgraph: ')) out[out.length - 1] = `${prev} ${msg}`;
      else out.push(`blockgraph: ${msg}`);
    } else if (
      out.length &&
      !l.startsWith('blockgraph: ') &&
      // The deprecation warning's "Please use x=on instead" stays a line of its own, in blockgraph as in QEMU.
      !l.startsWith('Please use ') &&
      /^[A-Za-z(]/.test(l) &&
      out[out.length - 1]!.startsWith('blockgraph: ')
    ) {
      out[out.length - 1] = `${out[out.length - 1]} ${l.trim()}`;
    } else {
      out.push(l);
    }
  }
  return out.join('\n') + (out.length ? '\n' : '');
}

/** Is an optional driver package usable right now (its source entry exists)? */
export async function driverAvailable(pkg: string, exportName: string): Promise<boolean> {
  try {
    const spec = pkg;
    const m = (await import(spec)) as Record<string, unknown>;
    return m[exportName] !== undefined;
  } catch {
    return false;
  }
}

export interface Twin {
  qdir: string;
  bdir: string;
  q: RunResult;
  b: RunResult;
  cleanup: () => void;
}

/**
 * Run the same command through QEMU's tool and through blockgraph, each in its own copy of the inputs
 * (`setup` builds them in a directory); the outputs come back with the directory replaced by "$DIR".
 */
export async function twin(
  setup: (dir: string) => void,
  args: (dir: string) => string[],
  tool: 'qemu-img' | 'qemu-io' = 'qemu-img',
  opts: { spawn?: boolean; env?: (dir: string) => NodeJS.ProcessEnv } = {},
): Promise<Twin> {
  const qd = tempDir('q');
  const bd = tempDir('b');
  setup(qd.dir);
  setup(bd.dir);
  const subst = (r: RunResult, dir: string): RunResult => ({
    status: r.status,
    stdout: r.stdout.split(dir).join('$DIR'),
    stderr: r.stderr.split(dir).join('$DIR'),
  });
  const q = subst(run(tool, args(qd.dir), opts.env ? { env: { ...process.env, ...opts.env(qd.dir) } } : {}), qd.dir);
  const bargs = [...(tool === 'qemu-io' ? ['io'] : []), ...args(bd.dir)];
  // An environment of its own needs a process of its own.
  const b = subst(opts.spawn || opts.env ? bgSpawn(bargs, opts.env ? { env: opts.env(bd.dir) } : {}) : await bg(...bargs), bd.dir);
  return {
    qdir: qd.dir,
    bdir: bd.dir,
    q,
    b,
    cleanup: () => {
      qd.cleanup();
      bd.cleanup();
    },
  };
}

/**
 * must() in `dir`: file names an image records (data files) stay relative. QEMU 7.2 resolves a relative data file
 * name against the working directory, so tools that open such images run there.
 */
export function mustIn(dir: string, cmd: string, ...args: string[]): void {
  const r = run(cmd, args, { cwd: dir });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
}

/** Run a shell-free sequence of QEMU tool invocations that must succeed (building test inputs). */
export function must(cmd: string, ...args: string[]): string {
  const r = run(cmd, args);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

const templates: string[] = [];
/**
 * A setup function that builds its files once (in a template directory) and copies them for every later
 * use: comparisons run each command in fresh copies without rebuilding the inputs.
 */
export function cachedSetup(build: (dir: string) => void): (dir: string) => void {
  let template: string | undefined;
  return (dir) => {
    if (!template) {
      template = mkdtempSync(join(tmpdir(), 'blockgraph-cli-template-'));
      templates.push(template);
      build(template);
    }
    for (const f of readdirSync(template)) copyFileSync(join(template, f), join(dir, f));
  };
}

afterAll(() => {
  for (const t of templates.splice(0)) rmSync(t, { recursive: true, force: true });
});

/**
 * For tests of qcow2 images against qemu-img: `need(ctx)` at the start of each test skips it when qemu-img,
 * qemu-io or the (optional) qcow2 driver package is missing, and fails it instead under CI=true.
 */
export function qcow2Requirement(): (ctx: { skip: () => void }) => void {
  const missing = missingTools('qemu-img', 'qemu-io');
  let available = false;
  beforeAll(async () => {
    available = await driverAvailable('@blockgraph/driver-qcow2', 'qcow2Driver');
  });
  return (ctx) => {
    if (missing.length === 0 && available) return;
    if (IN_CI) throw new Error(`missing: ${[...missing, ...(available ? [] : ['@blockgraph/driver-qcow2'])].join(', ')}`);
    ctx.skip();
  };
}
