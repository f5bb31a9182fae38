/**
 * The driver conformance suite: `runDriverConformance()` registers, with the caller's own test runner, every
 * check that applies to the driver — decided only by the capabilities the node declares after open.
 */
import type { DriverCapabilities } from '@blockgraph/block-core';
import { ConformanceError, describeError } from '../assert.js';
import { CASES } from './cases/index.js';
import { probeSubject, resolveBaseSeed, TestRun, type SuiteInfo } from './harness.js';
import type { CapabilityName, ConformanceCase, ConformanceOptions } from './types.js';

export type { ConformanceSubject, ConformanceOptions, CapabilityName } from './types.js';

const DEFAULT_TIMEOUT_MS = 60_000;

function applies(c: ConformanceCase, caps: Readonly<DriverCapabilities>): boolean {
  return c.requires.every((k) => caps[k]) && (c.excludes ?? []).every((k) => !caps[k]);
}

/** A conformance check as the README lists it: its name and the capabilities that gate it. */
export interface ConformanceTestInfo {
  readonly name: string;
  readonly requires: readonly CapabilityName[];
  readonly excludes: readonly CapabilityName[];
  readonly timeoutMs: number;
}

/**
 * The checks the suite has, or with `caps` only those it would register for a node declaring them (useful to
 * show a driver's author what will run).
 */
export function conformanceTests(caps?: Readonly<DriverCapabilities>): ConformanceTestInfo[] {
  return CASES.filter((c) => !caps || applies(c, caps)).map((c) => ({
    name: c.name,
    requires: c.requires,
    excludes: c.excludes ?? [],
    timeoutMs: c.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  }));
}

async function runCase(opts: ConformanceOptions, info: SuiteInfo, c: ConformanceCase): Promise<void> {
  const t = new TestRun(opts, info, c.name);
  let err: Error | undefined;
  try {
    await c.run(t);
  } catch (e) {
    err = t.wrap(e);
  }
  try {
    await t.dispose();
  } catch (e) {
    err ??= t.error(`teardown (graph.close() and cleanup) failed: ${describeError(e)}`, e);
  }
  if (err) throw err;
}

/**
 * Register the conformance suite for one driver with the caller's test runner. The runner's `describe` must
 * await an async callback (vitest, node:test and bun:test do): the suite opens one node first to read its
 * capabilities, and registers only the checks those capabilities call for.
 */
export function runDriverConformance(opts: ConformanceOptions): void {
  if (!opts || typeof opts.describe !== 'function' || typeof opts.test !== 'function' || typeof opts.factory !== 'function') {
    throw new TypeError('runDriverConformance: { name, describe, test, factory } are required');
  }
  const baseSeed = resolveBaseSeed();
  const register = async (): Promise<void> => {
    let info: SuiteInfo;
    try {
      info = await probeSubject(opts, baseSeed);
    } catch (e) {
      // Report the broken factory as a failing test instead of a collection error without context.
      opts.test('factory: opens a node', () => {
        throw new ConformanceError(`[${opts.name}] factory({ size }) failed, so no check could be registered: ${describeError(e)}`, { cause: e });
      });
      return;
    }
    for (const c of CASES) {
      if (applies(c, info.caps)) opts.test(c.name, () => runCase(opts, info, c), c.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    }
  };
  opts.describe(opts.name, register);
}
