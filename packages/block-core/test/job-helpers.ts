/**
 * A small job for the job tests: it loops doing one progress step per iteration and a sleep (or a rate-limited
 * sleep), like a copy job. Optionally it reaches READY after its steps and waits there for `complete` or a
 * cancel, mirror-style: a soft cancel in READY stays soft and ends the job successfully without the "pivot"
 * that `complete` does; before READY every cancel is forced.
 */
import {
  BlockError,
  Job,
  type BlockErrorCode,
  type ErrorAction,
  type Graph,
  type GraphEvent,
  type JobOptions,
  type OnError,
} from '../src/index.js';

export interface TestJobConfig {
  /** Progress steps before finishing (or before READY). Default: until `finish()`. */
  steps?: number;
  /** Bytes of progress per step. */
  chunk?: number;
  /** Reach READY after the steps and wait for complete/cancel. */
  ready?: boolean;
  sleepMs?: number;
  /** Throw a BlockError at this step (1-based). */
  failAt?: number;
  failCode?: BlockErrorCode;
  /** Awaited at the top of every iteration: a job stuck in I/O that does not react to enter(). */
  gate?: Promise<void>;
  /** Awaited by prepare(); a rejection fails prepare. */
  prepare?: () => Promise<void> | void;
  /** Account each step with ratelimitProcessed() and sleep with ratelimitSleep(). */
  rateLimited?: boolean;
  /** Simulate an I/O error at a step and apply the error policy. */
  ioError?: { at: number; onError: OnError; code: BlockErrorCode; isRead?: boolean; times?: number };
}

export class TestJob extends Job {
  readonly log: string[] = [];
  readonly changes: Record<string, unknown>[] = [];
  readonly actions: ErrorAction[] = [];
  readonly speeds: number[] = [];
  shouldComplete = false;
  finishRequested = false;
  /** commit() ran after `complete` (mirror would replace the source by the target here). */
  pivoted = false;
  stepsDone = 0;
  pauses = 0;
  resumes = 0;
  /** The delay (ms) of every sleep() the job asked for, in order. */
  readonly sleeps: number[] = [];
  readonly cfg: TestJobConfig;

  constructor(graph: Graph, opts: Partial<JobOptions> = {}, cfg: TestJobConfig = {}) {
    super(graph, { id: 'job0', type: 'test', ...opts });
    this.cfg = cfg;
  }

  override sleep(ms: number): Promise<void> {
    this.sleeps.push(ms);
    return super.sleep(ms);
  }

  /** Let a job without a step limit finish (or go READY). */
  finish(): void {
    this.finishRequested = true;
    this.enter();
  }

  protected async run(): Promise<void> {
    const c = this.cfg;
    const chunk = c.chunk ?? 65536;
    const steps = c.steps ?? Infinity;
    if (Number.isFinite(steps)) this.progressSetRemaining(steps * chunk);
    let errorsLeft = c.ioError?.times ?? 1;
    for (;;) {
      if (c.gate) await c.gate;
      if (this.isCancelled()) return;
      if (this.isReady()) {
        if (this.shouldComplete || this.cancelRequested()) return;
      } else if (this.stepsDone >= steps || this.finishRequested) {
        if (!c.ready) return;
        this.transitionToReady();
        continue;
      } else {
        const next = this.stepsDone + 1;
        if (c.failAt === next) throw new BlockError(c.failCode ?? 'EIO');
        if (c.ioError && c.ioError.at === next && errorsLeft > 0) {
          errorsLeft--;
          const action = this.errorAction(c.ioError.onError, c.ioError.isRead ?? false, c.ioError.code);
          this.actions.push(action);
          if (action === 'report') throw new BlockError(c.ioError.code);
          if (action === 'stop') {
            // retry the step once the user resumes the job
            await this.pausePoint();
            continue;
          }
        }
        this.stepsDone = next;
        this.progressUpdate(chunk);
        if (c.rateLimited) {
          this.ratelimitProcessed(chunk);
          await this.ratelimitSleep();
          continue;
        }
      }
      await this.sleep(c.sleepMs ?? 10);
    }
  }

  protected override async prepare(): Promise<void> {
    this.log.push('prepare');
    await this.cfg.prepare?.();
  }

  protected override commit(): void {
    this.log.push('commit');
    this.pivoted = this.shouldComplete;
  }

  protected override abort(): void {
    this.log.push('abort');
  }

  protected override clean(): void {
    this.log.push('clean');
  }

  protected override onPause(): void {
    this.pauses++;
  }

  protected override onResume(): void {
    this.resumes++;
  }

  protected override onComplete(): void {
    this.shouldComplete = true;
    this.enter();
  }

  protected override onCancel(force: boolean): boolean {
    return force || !this.isReady();
  }

  protected override onSetSpeed(speed: number): void {
    this.speeds.push(speed);
  }

  protected override onChange(opts: Record<string, unknown>): void {
    this.changes.push(opts);
  }
}

/** A job that goes READY at once and waits to be cancelled; it implements neither complete nor change. */
export class PlainJob extends Job {
  constructor(graph: Graph, opts: Partial<JobOptions> = {}) {
    super(graph, { id: 'job0', type: 'plain', ...opts });
  }

  protected async run(): Promise<void> {
    this.transitionToReady();
    while (!this.cancelRequested()) await this.sleep(10);
  }
}

export function record(g: Graph): GraphEvent[] {
  const ev: GraphEvent[] = [];
  g.on((e) => ev.push(e));
  return ev;
}

/**
 * The event stream in a compact form: a JOB_STATUS_CHANGE becomes its status, other events their name;
 * with `id`, only that job's events.
 */
export function seq(ev: readonly GraphEvent[], id?: string): string[] {
  return ev
    .filter((e) => id === undefined || e.data.id === id || e.data.device === id)
    .map((e) => (e.event === 'JOB_STATUS_CHANGE' ? String(e.data.status) : e.event));
}

/** Like seq() for several jobs: "job0:running", "job1:BLOCK_JOB_CANCELLED". */
export function seqAll(ev: readonly GraphEvent[]): string[] {
  return ev.map((e) => `${String(e.data.id ?? e.data.device)}:${e.event === 'JOB_STATUS_CHANGE' ? String(e.data.status) : e.event}`);
}

export function events(ev: readonly GraphEvent[], name: string, id?: string): Record<string, unknown>[] {
  return ev.filter((e) => e.event === name && (id === undefined || e.data.id === id || e.data.device === id)).map((e) => e.data);
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll until `cond` holds; fail (instead of hanging) after `timeoutMs`. */
export async function until(cond: () => boolean, what = 'condition', timeoutMs = 5000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await delay(2);
  }
}

/** Resolve with `p`, or fail after `ms` (so a hang is a failure). */
export async function within<T>(p: Promise<T>, ms: number, what = 'operation'): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/** A promise with its resolve function. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

export function errorOf(fn: () => unknown): BlockError {
  try {
    fn();
  } catch (e) {
    if (e instanceof BlockError) return e;
    throw e;
  }
  throw new Error('expected a BlockError');
}
