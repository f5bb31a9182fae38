/**
 * Crash consistency: a child process runs random allocating writes, zero writes, discards, compressed writes
 * and flushes, printing after each completed flush what it has acknowledged, and is SIGKILLed at a random
 * moment. Then `qemu-img check` must find no corruption (leaks are allowed) and everything acknowledged before
 * the last completed flush must read back.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { crashOps } from './crash-ops.js';
import { Workdir, hasQemu, newGraph, openQcow2, qemuCheck, prng, randInt } from './helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = dirname(dirname(here));
const RUNS = Number(process.env.QCOW2_CRASH_RUNS ?? 56);

interface Variant {
  name: string;
  create: string[];
  clusterSize: number;
  qcow2?: Record<string, unknown>;
  /** Lazy refcounts: the crashed image is dirty and gets repaired by a read-write open first. */
  repairFirst?: boolean;
}

const VARIANTS: Variant[] = [
  { name: 'defaults', create: [], clusterSize: 65536 },
  { name: '4k clusters, refcount_bits=1, tiny caches', create: ['cluster_size=4k', 'refcount_bits=1'], clusterSize: 4096, qcow2: { l2CacheSize: 8192, refcountCacheSize: 4 * 4096 } },
  { name: '512 B clusters, refcount_bits=64 (refcount table growth)', create: ['cluster_size=512', 'refcount_bits=64'], clusterSize: 512, qcow2: { l2CacheSize: 2048 } },
  { name: 'extended_l2', create: ['extended_l2=on', 'cluster_size=32k'], clusterSize: 32768 },
  { name: 'compat=0.10', create: ['compat=0.10', 'cluster_size=16k'], clusterSize: 16384, qcow2: { l2CacheSize: 32768 } },
  { name: '64k clusters, 4 KiB L2 cache slices', create: [], clusterSize: 65536, qcow2: { l2CacheSize: 8192, l2CacheEntrySize: 4096 } },
  { name: 'lazy refcounts, repaired on read-write open', create: ['lazy_refcounts=on', 'cluster_size=16k'], clusterSize: 16384, repairFirst: true },
];

interface Outcome {
  acked: number;
  stdout: string;
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * The child program. Starting node with tsx costs about a second of CPU per run; a bundle (esbuild, which tsx and
 * tsup bring along) starts in a tenth of that. The bundle lives in a temporary directory that links this
 * package's node_modules (zstd, pako) and driver-raw's native helper where the bundle looks for them.
 */
let bundleDir: string | null = null;
let childArgs: string[] = ['--conditions=@blockgraph/source', '--import', 'tsx', 'test/driver/crash-child.mts'];

function bundleChild(): void {
  const esbuild = join(pkgDir, 'node_modules', '.bin', 'esbuild');
  if (!existsSync(esbuild)) return;
  const dir = mkdtempSync(join(tmpdir(), 'qcow2-crash-child-'));
  try {
    symlinkSync(join(pkgDir, 'node_modules'), join(dir, 'node_modules'));
    symlinkSync(join(pkgDir, '..', 'driver-raw', 'native'), join(dir, 'native'));
    mkdirSync(join(dir, 'bin'));
    const out = join(dir, 'bin', 'crash-child.mjs');
    execFileSync(
      esbuild,
      [join(here, 'crash-child.mts'), '--bundle', '--platform=node', '--format=esm', '--conditions=@blockgraph/source',
        '--external:@bokuweb/zstd-wasm', '--external:pako', `--outfile=${out}`, '--log-level=warning'],
      { cwd: pkgDir, stdio: 'pipe' },
    );
    bundleDir = dir;
    childArgs = [out];
  } catch {
    rmSync(dir, { recursive: true, force: true });
  }
}

function runChild(image: string, seed: number, size: number, v: Variant, killAfterMs: number): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [...childArgs, image, String(seed), JSON.stringify({ clusterSize: v.clusterSize, size, qcow2: v.qcow2 })],
      { cwd: pkgDir, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    let timer: ReturnType<typeof setTimeout> | undefined;
    // Half of the runs count the delay from the start, half from the first acknowledged flush (so that there is
    // acknowledged data to lose even on a loaded machine).
    const startMark = seed % 2 ? 'ready\n' : 'ack ';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (timer === undefined && stdout.includes(startMark)) timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const safety = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      clearTimeout(safety);
      if (!stdout.includes('ready\n')) return reject(new Error(`child failed before starting: ${stderr || stdout}`));
      if (existsSync(join(pkgDir, '..', 'driver-raw', 'native', 'build', 'Release', 'blockgraph_native.node')) && !stdout.includes('native true')) {
        return reject(new Error('the child runs without driver-raw\'s native helper'));
      }
      const acks = [...stdout.matchAll(/^ack (\d+)$/gm)];
      resolve({ acked: acks.length ? Number(acks[acks.length - 1]![1]) : 0, stdout, code, signal });
    });
  });
}

/** Replay the acknowledged requests; bytes the unacknowledged ones may have touched are marked unknown. */
function model(seed: number, size: number, clusterSize: number, acked: number): { data: Uint8Array; unknown: Uint8Array } {
  const ops = crashOps(seed, size, clusterSize, 100000);
  const data = new Uint8Array(size);
  const unknown = new Uint8Array(size);
  const allocated = new Uint8Array(size / clusterSize);
  let issued = 0;
  let i = 0;
  for (; i < ops.length && issued < acked; i++) {
    const op = ops[i]!;
    if (op.kind === 'flush') continue;
    issued++;
    const c0 = Math.floor(op.offset / clusterSize);
    const c1 = Math.ceil((op.offset + op.bytes) / clusterSize);
    switch (op.kind) {
      case 'write':
        data.fill(op.pattern, op.offset, op.offset + op.bytes);
        allocated.fill(1, c0, c1);
        break;
      case 'zero':
      case 'discard':
        data.fill(0, op.offset, op.offset + op.bytes);
        allocated.fill(0, c0, c1);
        break;
      case 'compressed':
        if (!allocated[c0]) {
          data.fill(op.pattern, op.offset, op.offset + op.bytes);
          allocated[c0] = 1;
        }
        break;
    }
  }
  // Requests issued after the last acknowledged flush, up to the next flush.
  while (i < ops.length && ops[i]!.kind === 'flush') i++;
  for (; i < ops.length; i++) {
    const op = ops[i]!;
    if (op.kind === 'flush') break;
    unknown.fill(1, op.offset, op.offset + op.bytes);
  }
  return { data, unknown };
}

describe.skipIf(!hasQemu)('crash consistency (SIGKILL during random I/O)', () => {
  beforeAll(bundleChild);
  afterAll(() => {
    if (bundleDir) rmSync(bundleDir, { recursive: true, force: true });
  });

  test(
    `${RUNS} killed runs: qemu-img check finds no corruption, acknowledged data reads back`,
    async () => {
      const w = new Workdir();
      const r = prng(0xdead);
      const size = 4 * 1024 * 1024;
      const failures: string[] = [];
      let totalAcked = 0;
      try {
        const runOne = async (i: number): Promise<void> => {
          const v = VARIANTS[i % VARIANTS.length]!;
          const seed = 1000 + i;
          const image = `crash${i}.qcow2`;
          w.create(image, String(size), v.create);
          const killAfter = randInt(r, 20, 300);
          const out = await runChild(w.path(image), seed, size, v, killAfter);
          if (out.signal !== 'SIGKILL') {
            failures.push(`run ${i} (${v.name}): child ended with ${out.code ?? out.signal}: ${out.stdout.slice(-500)}`);
            return;
          }
          totalAcked += out.acked;
          if (v.repairFirst) {
            const g = newGraph();
            await openQcow2(g, w.path(image));
            await g.close();
          }
          const chk = qemuCheck(w.path(image));
          if ((chk.status !== 0 && chk.status !== 3) || /ERROR/.test(chk.out)) {
            failures.push(`run ${i} (${v.name}, seed ${seed}, killed after ${killAfter} ms): qemu-img check: ${chk.out}`);
            return;
          }
          const m = model(seed, size, v.clusterSize, out.acked);
          // Read cluster by cluster: a compressed cluster freed and reused by unacknowledged requests may not
          // decompress any more (as in QEMU); that is only acceptable where nothing acknowledged lives.
          const graph = newGraph();
          try {
            const { be } = await openQcow2(graph, w.path(image), { readOnly: true });
            // Big reads first; cluster by cluster only where a big read fails.
            const chunk = 256 * 1024;
            const whole = new Uint8Array(size);
            const bad: number[] = [];
            for (let off = 0; off < size; off += chunk) {
              try {
                await be.pread(off, whole.subarray(off, off + chunk));
              } catch {
                bad.push(off);
              }
            }
            const cs = v.clusterSize;
            for (let off = 0; off < size; off += cs) {
              let content: Uint8Array;
              try {
                content = bad.includes(off - (off % chunk)) ? await be.read(off, cs) : whole.subarray(off, off + cs);
              } catch (e) {
                if (m.unknown.subarray(off, off + cs).every((x) => x === 1)) continue;
                failures.push(`run ${i} (${v.name}, seed ${seed}): reading cluster at ${off} failed: ${String(e)}`);
                return;
              }
              for (let b = 0; b < cs; b++) {
                if (!m.unknown[off + b] && content[b] !== m.data[off + b]) {
                  failures.push(`run ${i} (${v.name}, seed ${seed}, ${out.acked} acked): byte ${off + b} is ${content[b]}, expected ${m.data[off + b]}`);
                  return;
                }
              }
            }
          } finally {
            await graph.close();
          }
        };
        const parallel = 6;
        for (let i = 0; i < RUNS; i += parallel) {
          await Promise.all(Array.from({ length: Math.min(parallel, RUNS - i) }, (_, k) => runOne(i + k)));
        }
      } finally {
        w.cleanup();
      }
      expect(failures).toEqual([]);
      expect(totalAcked).toBeGreaterThan(0);
    },
    300_000,
  );
});
