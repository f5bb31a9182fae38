/**
 * `test-throttle`: a stand-in for QEMU's `throttle` filter (block/throttle.c with a throttle-group) for scenario
 * tests that need a slow node: the limits are the filter's own options instead of a throttle-group object.
 *
 * Limits: `bps-total`, `bps-read`, `bps-write`, `iops-total`, `iops-read`, `iops-write` (0 = none). Requests are
 * served in arrival order: each one reserves the next free slot of every bucket that applies to it (a leaky
 * bucket per limit, starting empty, so the first request of an idle node goes at once) and waits for it. Flushes
 * and block status are not throttled.
 *
 * As QEMU's throttle node, a drained node throttles nothing: draining releases every waiting request at once and
 * new requests pass until the drained section ends (QEMU's `throttle_group_restart_tgm()` on drain). This is
 * what lets a job on a heavily throttled node be cancelled quickly (iotest 218).
 *
 * `testThrottleDriver` waits in real time; `createTestThrottleDriver({ clock })` builds one on a `ManualClock`, so
 * a test decides when throttled requests go (qtest's `clock_step`). Platform-neutral.
 */
import { ChildRole, defineBlockDriver, type BlockDriver, type Child, type IOVector, type ReqFlags } from '@blockgraph/block-core';
import { childCapabilities, childWriteFlags, childZeroFlags, PASSTHROUGH_FILTER_CAPABILITIES } from '../child-passthrough.js';
import { realTimeClock, type ScenarioClock } from './clock.js';

/** blockdev-add options of a test-throttle node (kebab-case keys are accepted as well). */
export interface ThrottleOptions {
  driver: 'test-throttle';
  nodeName?: string;
  file: string | Record<string, unknown>;
  bpsTotal?: number;
  bpsRead?: number;
  bpsWrite?: number;
  iopsTotal?: number;
  iopsRead?: number;
  iopsWrite?: number;
  [common: string]: unknown;
}

const LIMITS = ['bpsTotal', 'bpsRead', 'bpsWrite', 'iopsTotal', 'iopsRead', 'iopsWrite'] as const;
type Limit = (typeof LIMITS)[number];

/** How a test-throttle driver is made: its name, and the clock its slots are counted on. */
export interface TestThrottleDriverOptions {
  /** The driver name nodes use (default `test-throttle`); one graph can hold drivers on different clocks. */
  name?: string;
  /** Default: real time. A `ManualClock` holds every throttled request until the test steps it. */
  clock?: ScenarioClock;
}

/** A test-throttle driver on its own clock (QEMU's qtest builds throttle on the virtual clock). */
export function createTestThrottleDriver(opts: TestThrottleDriverOptions = {}): BlockDriver {
  const clock = opts.clock ?? realTimeClock;
  return defineBlockDriver({
    name: opts.name ?? 'test-throttle',
    kind: 'filter',
    description: 'Rate-limiting filter for tests (a stand-in for QEMU\'s throttle filter)',
    capabilities: PASSTHROUGH_FILTER_CAPABILITIES,
    options: Object.fromEntries([
      ['file', { type: 'ref', required: true }],
      ...LIMITS.map((l) => [l, { type: 'integer', min: 0, default: 0 }]),
    ]),
    async open(ctx, o) {
      const file = (await ctx.openChild('file', o.file, ChildRole.FILTERED | ChildRole.PRIMARY)) as Child;
      const rate = Object.fromEntries(LIMITS.map((l) => [l, o[l] as number])) as Record<Limit, number>;
      /** When each bucket is free again (ms, on the driver's clock). */
      const free = Object.fromEntries(LIMITS.map((l) => [l, 0])) as Record<Limit, number>;
      const waiting = new Set<{ timer: unknown; resolve: () => void }>();
      let disabled = 0;

      const throttle = async (write: boolean, bytes: number): Promise<void> => {
        if (disabled) return;
        const t = clock.now();
        const buckets: [Limit, number][] = [
          ['bpsTotal', bytes],
          [write ? 'bpsWrite' : 'bpsRead', bytes],
          ['iopsTotal', 1],
          [write ? 'iopsWrite' : 'iopsRead', 1],
        ];
        let start = t;
        for (const [l] of buckets) if (rate[l]) start = Math.max(start, free[l]);
        for (const [l, cost] of buckets) if (rate[l]) free[l] = Math.max(free[l], start) + (cost * 1000) / rate[l];
        const wait = start - t;
        if (wait <= 0) return;
        await new Promise<void>((resolve) => {
          const w = {
            timer: clock.setTimer(() => {
              waiting.delete(w);
              resolve();
            }, wait),
            resolve,
          };
          waiting.add(w);
        });
      };

      return {
        getLength: () => file.node.totalBytes,
        get capabilities() {
          return childCapabilities(file);
        },
        get supportedWriteFlags() {
          return childWriteFlags(file);
        },
        get supportedZeroFlags() {
          return childZeroFlags(file);
        },
        async preadv(offset: number, bytes: number, qiov: IOVector, flags: ReqFlags) {
          await throttle(false, bytes);
          await file.preadv(offset, bytes, qiov, flags);
        },
        async pwritev(offset: number, bytes: number, qiov: IOVector, flags: ReqFlags) {
          await throttle(true, bytes);
          await file.pwritev(offset, bytes, qiov, flags);
        },
        async pwriteZeroes(offset: number, bytes: number, flags: ReqFlags) {
          await throttle(true, bytes);
          await file.pwriteZeroes(offset, bytes, flags);
        },
        async pdiscard(offset: number, bytes: number) {
          await throttle(true, bytes);
          await file.pdiscard(offset, bytes);
        },
        passthroughChild(offset: number) {
          return { child: file, offset };
        },
        drainBegin() {
          disabled++;
          for (const w of waiting) {
            clock.clearTimer(w.timer);
            w.resolve();
          }
          waiting.clear();
        },
        drainEnd() {
          disabled--;
          const t = clock.now();
          for (const l of LIMITS) free[l] = Math.min(free[l], t);
        },
        async reopenPrepare() {
          // limits can't change by reopen
        },
      };
    },
  });
}

export const testThrottleDriver: BlockDriver = createTestThrottleDriver();
