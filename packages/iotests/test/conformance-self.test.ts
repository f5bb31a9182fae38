/**
 * The suite run against block-core's own test drivers (all must pass), against drivers with few capabilities
 * (only the applicable checks are registered), and against broken drivers (the suite must catch each one).
 */
import { describe, expect, it } from 'vitest';
import type { DriverCapabilities } from '@blockgraph/block-core';
import { conformanceTests, runDriverConformance, type ConformanceOptions } from '../src/index.js';
import {
  buggyDrivers,
  cowFactory,
  filterFactory,
  memFactory,
  nullFactory,
  readOnlyFactory,
  type Factory,
} from './subjects.js';

// --- the suite itself, with vitest as the runner ----------------------------------------------------------------

runDriverConformance({ name: 'test-mem (alignment 1)', describe, test: it, factory: memFactory(1) });
runDriverConformance({ name: 'test-mem (alignment 512)', describe, test: it, factory: memFactory(512) });
runDriverConformance({ name: 'test-mem (alignment 4096)', describe, test: it, factory: memFactory(4096) });
runDriverConformance({ name: 'test-mem (alignment 4096, max transfer 64 KiB)', describe, test: it, factory: memFactory(4096, { maxTransfer: 65536 }) });
// Random per-request latency, so that requests in flight really interleave.
runDriverConformance({ name: 'test-mem (alignment 512, random latency)', describe, test: it, factory: memFactory(512, { latencyMs: 2 }) });
runDriverConformance({ name: 'test-filter over test-mem', describe, test: it, factory: filterFactory });
runDriverConformance({ name: 'test-cow over test-mem (no backing)', describe, test: it, factory: cowFactory() });
runDriverConformance({ name: 'test-cow over test-mem (no backing, random latency)', describe, test: it, factory: cowFactory(2) });
runDriverConformance({ name: 'read-only driver', describe, test: it, factory: readOnlyFactory });
runDriverConformance({ name: 'null driver (stores nothing)', describe, test: it, factory: nullFactory });

// --- a capturing fake runner ------------------------------------------------------------------------------------

interface Registered {
  name: string;
  fn: () => Promise<void> | void;
  timeoutMs: number | undefined;
}

/** Register the suite with a fake runner that records the tests instead of running them. */
async function collect(name: string, factory: Factory): Promise<Registered[]> {
  const tests: Registered[] = [];
  const pending: Promise<unknown>[] = [];
  const opts: ConformanceOptions = {
    name,
    factory,
    describe: (_n, fn) => {
      const r: unknown = fn();
      if (r instanceof Promise) pending.push(r);
    },
    test: (n, fn, timeoutMs) => void tests.push({ name: n, fn, timeoutMs }),
  };
  runDriverConformance(opts);
  await Promise.all(pending);
  return tests;
}

async function runAll(tests: Registered[]): Promise<{ name: string; error?: Error }[]> {
  const out: { name: string; error?: Error }[] = [];
  for (const t of tests) {
    try {
      await t.fn();
      out.push({ name: t.name });
    } catch (e) {
      out.push({ name: t.name, error: e as Error });
    }
  }
  return out;
}

async function capsOf(factory: Factory): Promise<DriverCapabilities> {
  const s = await factory({ size: 1 << 20 });
  const caps = { ...s.node.capabilities };
  await s.graph.close();
  return caps;
}

describe('conformance suite: registration by capabilities', () => {
  it('registers every check for test-mem and only the applicable ones elsewhere', async () => {
    const all = conformanceTests().map((t) => t.name);
    const mem = (await collect('mem', memFactory(512))).map((t) => t.name);
    // test-mem declares everything but backing and flush; only the "not" checks are missing.
    expect(mem).toEqual(conformanceTests(await capsOf(memFactory(512))).map((t) => t.name));
    expect(all.filter((n) => !mem.includes(n))).toEqual([
      'write: every kind of request succeeds on a node that does not store data',
      'resize: truncate fails without the resize capability and the size stays',
    ]);

    const cow = (await collect('cow', cowFactory())).map((t) => t.name);
    expect(cow).toContain('resize: truncate fails without the resize capability and the size stays');
    expect(cow.some((n) => n.startsWith('resize: truncate grows'))).toBe(false);
    expect(cow.some((n) => n.startsWith('grow on write'))).toBe(false);

    const ro = (await collect('ro', readOnlyFactory)).map((t) => t.name);
    expect(ro.every((n) => /^(manifest|open|read|flush|read-only|close):|^block status: consecutive /.test(n))).toBe(true);
    expect(ro).toContain('read-only: writes, zero writes, discards, truncate and writers are refused; content unchanged');
    expect(ro.some((n) => n.startsWith('write:'))).toBe(false);

    const nul = (await collect('null', nullFactory)).map((t) => t.name);
    expect(nul).toContain('write: every kind of request succeeds on a node that does not store data');
    expect(nul.some((n) => n.startsWith('concurrency:') || n.startsWith('discard:'))).toBe(false);
  });

  it('every registered check passes its timeout to the runner', async () => {
    const tests = await collect('mem', memFactory(1));
    expect(tests.length).toBeGreaterThan(20);
    for (const t of tests) expect(t.timeoutMs).toBeGreaterThan(0);
  });

  it('a factory that throws becomes one failing test with the cause', async () => {
    const tests = await collect('broken-factory', async () => {
      throw new Error('no such image');
    });
    expect(tests.map((t) => t.name)).toEqual(['factory: opens a node']);
    const [r] = await runAll(tests);
    expect(r!.error?.message).toMatch(/factory\(\{ size \}\) failed.*no such image/);
  });
});

// --- the suite must catch broken drivers --------------------------------------------------------------------------

describe('conformance suite: catches broken drivers', () => {
  const expectations: Record<string, RegExp> = {
    'buggy-drop-writes': /^write: data written reads back/,
    'buggy-stale-reads': /^write: data written reads back/,
    'buggy-discard-overrun': /^discard: each discarded byte keeps its data/,
    'buggy-status': /^block status: after writes/,
    'buggy-iovec': /^read: the whole node and random unaligned ranges/,
    'buggy-unstable-manifest': /^manifest: /,
  };
  for (const driver of buggyDrivers) {
    it(`${driver.name}: at least one check fails, with the seed in the message`, async () => {
      const tests = await collect(driver.name, memFactory(1, { driver: driver.name, drivers: [driver] }));
      expect(tests.length).toBeGreaterThan(20);
      const results = await runAll(tests);
      const failed = results.filter((r) => r.error);
      expect(failed.length).toBeGreaterThan(0);
      expect(failed.map((f) => f.name).some((n) => expectations[driver.name]!.test(n))).toBe(true);
      for (const f of failed) {
        expect(f.error!.name).toBe('ConformanceError');
        expect(f.error!.message).toMatch(/seed 0x[0-9a-f]{8} \(reproduce with BLOCKGRAPH_IOTESTS_SEED=0x[0-9a-f]{8}\)/);
        expect(f.error!.message).toContain(`driver '${driver.name}'`);
      }
    }, 120_000);
  }
});
