/**
 * Jobs (job.c + blockjob.c): QEMU's state machine and verb table, transactions, auto-finalize/auto-dismiss,
 * events with QEMU's names and payloads, progress, rate limiting in 100 ms slices, pause points and error
 * actions. A job is one async `run()`; it awaits `pausePoint()` / `sleep()` where QEMU yields.
 */
import type { Child, ChildParent } from './child.js';
import { BlockError, toBlockError, type BlockErrorCode } from './errors.js';
import type { Graph } from './graph.js';
import type { BlockNode } from './node.js';
import type { ChildRoles, PermBits } from './perm.js';
import { refreshPerms, setEdgePerms } from './permission.js';
import { RateLimit } from './ratelimit.js';
import { Transaction } from './transaction.js';
import { trace } from './trace.js';

export type JobStatus =
  | 'undefined'
  | 'created'
  | 'running'
  | 'paused'
  | 'ready'
  | 'standby'
  | 'waiting'
  | 'pending'
  | 'aborting'
  | 'concluded'
  | 'null';

export type JobVerb = 'cancel' | 'pause' | 'resume' | 'set-speed' | 'complete' | 'finalize' | 'dismiss' | 'change';

/** JobSTT: allowed transitions. */
export const JOB_TRANSITIONS: Readonly<Record<JobStatus, readonly JobStatus[]>> = {
  undefined: ['created'],
  created: ['running', 'aborting', 'null'],
  running: ['paused', 'ready', 'waiting', 'aborting'],
  paused: ['running'],
  ready: ['standby', 'waiting', 'aborting'],
  standby: ['ready'],
  waiting: ['pending', 'aborting'],
  pending: ['aborting', 'concluded'],
  aborting: ['aborting', 'concluded'],
  concluded: ['null'],
  null: [],
};

/** JobVerbTable: in which states a verb is accepted. */
export const JOB_VERBS: Readonly<Record<JobVerb, readonly JobStatus[]>> = {
  cancel: ['created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending'],
  pause: ['created', 'running', 'paused', 'ready', 'standby'],
  resume: ['created', 'running', 'paused', 'ready', 'standby'],
  'set-speed': ['created', 'running', 'paused', 'ready', 'standby'],
  complete: ['ready', 'standby'],
  finalize: ['pending'],
  dismiss: ['concluded'],
  change: ['created', 'running', 'paused', 'ready', 'standby'],
};

export type OnError = 'report' | 'ignore' | 'stop' | 'enospc' | 'auto';
export type ErrorAction = 'report' | 'ignore' | 'stop';
export type IoStatus = 'ok' | 'failed' | 'nospace';

/** BLOCK_JOB_SLICE_TIME: rate-limit slice and the longest a job runs without yielding. */
export const JOB_SLICE_MS = 100;

const JOB_ID_RE = /^[A-Za-z][A-Za-z0-9_.-]*$/;
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A group of jobs that succeed or fail together. */
export class JobTxn {
  readonly jobs = new Set<Job>();
  aborting = false;
  /** Set while the jobs' prepare() callbacks run (they may await); an abort waits for it. */
  preparing: Promise<void> | null = null;
}

export interface JobOptions {
  id: string;
  type: string;
  autoFinalize?: boolean;
  autoDismiss?: boolean;
  txn?: JobTxn;
  speed?: number;
}

export interface JobInfo {
  type: string;
  device: string;
  id: string;
  len: number;
  offset: number;
  busy: boolean;
  paused: boolean;
  speed: number;
  'io-status': IoStatus;
  ready: boolean;
  status: JobStatus;
  'auto-finalize': boolean;
  'auto-dismiss': boolean;
  error?: string;
  [extra: string]: unknown;
}

export abstract class Job implements ChildParent {
  readonly parentKind = 'job' as const;
  readonly id: string;
  readonly type: string;
  readonly graph: Graph;
  status: JobStatus = 'undefined';
  readonly autoFinalize: boolean;
  readonly autoDismiss: boolean;
  txn: JobTxn;
  /** Reasons to pause (user pause, drained sections); the job parks at its next pause point while > 0. */
  private pauseCount = 1;
  userPaused = false;
  /** Parked at a pause point. */
  paused = false;
  /** Running code (not sleeping or parked). */
  busy = false;
  private cancelled = false;
  private forceCancel = false;
  private started = false;
  private deferredToMainLoop = false;
  private completed = false;
  /** job_finalize_single() ran (commit/abort, events, CONCLUDED). */
  private finalized = false;
  /** The error that ended the job (QEMU's job->err). */
  error: BlockError | null = null;
  readonly progress = { current: 0, total: 0 };
  speed = 0;
  ioStatus: IoStatus = 'ok';
  protected readonly limit = new RateLimit();
  private wakeFn: (() => void) | null = null;
  /** The sleep timer of the current yield (QEMU's job->sleep_timer is pending). */
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly finishedWaiters: (() => void)[] = [];
  /** Edges this job holds on nodes (block_job_add_bdrv). */
  protected readonly edges: Child[] = [];

  constructor(graph: Graph, opts: JobOptions) {
    if (!JOB_ID_RE.test(opts.id)) throw new BlockError('EINVAL', `Invalid job ID '${opts.id}'`);
    if (graph.jobs.has(opts.id)) throw new BlockError('EEXIST', `Job ID '${opts.id}' already in use`);
    if (opts.speed !== undefined && !(Number.isSafeInteger(opts.speed) && opts.speed >= 0)) {
      throw new BlockError('EINVAL', "Parameter 'speed' expects a non-negative value");
    }
    this.graph = graph;
    this.id = opts.id;
    this.type = opts.type;
    this.autoFinalize = opts.autoFinalize ?? true;
    this.autoDismiss = opts.autoDismiss ?? true;
    this.txn = opts.txn ?? new JobTxn();
    this.txn.jobs.add(this);
    this.speed = opts.speed ?? 0;
    this.limit.setSpeed(this.speed, JOB_SLICE_MS);
    graph.jobs.set(this.id, this);
    this.transition('created');
  }

  // --- what a concrete job provides ------------------------------------------------------------------------

  /** The work. Throw to fail; check `isCancelled()` and call `pausePoint()`/`sleep()` regularly. */
  protected abstract run(): Promise<void>;
  /** Graph changes before the job's result is committed; a throw aborts the transaction. */
  protected prepare?(): Promise<void> | void;
  /** May be async (graph changes drain nodes); the job concludes after it settles. */
  protected commit?(): Promise<void> | void;
  protected abort?(): Promise<void> | void;
  protected clean?(): Promise<void> | void;
  /** Called at a pause point before parking (mirror waits for its I/O here). */
  protected onPause?(): Promise<void> | void;
  protected onResume?(): void;
  /** Accept `complete` (only jobs that have a READY phase). */
  protected onComplete?(): void;
  /** Return the effective force (mirror: a soft cancel in READY stays soft). */
  protected onCancel?(force: boolean): boolean;
  protected onSetSpeed?(speed: number): void;
  protected onChange?(opts: Record<string, unknown>): Promise<void> | void;
  /** Extra drain condition: true while the job still has I/O in flight. */
  protected drainedPollExtra?(): boolean;
  /** The device name events report (QEMU reports the job ID). */
  get device(): string {
    return this.id;
  }

  // --- state machine ---------------------------------------------------------------------------------------

  private transition(to: JobStatus): void {
    const from = this.status;
    if (!JOB_TRANSITIONS[from].includes(to)) {
      throw new Error(`job '${this.id}': illegal transition ${from} -> ${to}`);
    }
    this.status = to;
    trace('job.state', { id: this.id, from, to });
    if (from !== to) this.graph.emit('JOB_STATUS_CHANGE', { id: this.id, status: to });
    this.graph.kick();
  }

  /** job_apply_verb(): QEMU's exact rejection message. */
  applyVerb(verb: JobVerb): void {
    if (!JOB_VERBS[verb].includes(this.status)) {
      throw new BlockError('EPERM', `Job '${this.id}' in state '${this.status}' cannot accept command verb '${verb}'`);
    }
  }

  isCancelled(): boolean {
    return this.cancelled && this.forceCancel;
  }

  cancelRequested(): boolean {
    return this.cancelled;
  }

  isReady(): boolean {
    return this.status === 'ready' || this.status === 'standby';
  }

  isCompleted(): boolean {
    return ['waiting', 'pending', 'aborting', 'concluded', 'null'].includes(this.status) || this.completed;
  }

  /** Concluded or gone: nothing more will happen without a user command. */
  isTerminal(): boolean {
    return this.status === 'concluded' || this.status === 'null';
  }

  /** Resolves when the job reaches CONCLUDED or NULL. */
  waitFinished(): Promise<void> {
    if (this.isTerminal()) return Promise.resolve();
    return new Promise((resolve) => this.finishedWaiters.push(resolve));
  }

  /** Resolves when the job reaches `status` (or a terminal state). */
  async waitFor(status: JobStatus): Promise<void> {
    await this.graph.waitWhile(() => this.status !== status && !this.isTerminal());
  }

  // --- lifecycle -------------------------------------------------------------------------------------------

  start(): void {
    if (this.status !== 'created' || this.started) throw new BlockError('EINVAL', `Job '${this.id}' was already started`);
    this.started = true;
    this.pauseCount--;
    this.busy = true;
    this.paused = false;
    this.transition('running');
    void this.entry();
  }

  private async entry(): Promise<void> {
    try {
      await this.pausePoint();
      await this.run();
    } catch (e) {
      this.error = toBlockError(e);
    }
    this.wakeFn = null;
    this.deferredToMainLoop = true;
    this.busy = true;
    // QEMU defers job_exit to the main loop: let whoever triggered the last step finish first.
    await Promise.resolve();
    // job_exit(): not quiescent, but drains started by the completion callbacks must not wait for us.
    this.busy = false;
    this.jobCompleted();
  }

  /** job_completed(): the job's work is over (or it was cancelled before it started). */
  private jobCompleted(): void {
    this.completed = true;
    this.updateRc();
    this.graph.kick();
    if (this.error) this.completedTxnAbort();
    else this.completedTxnSuccess();
  }

  private updateRc(): void {
    if (!this.error && this.isCancelled()) this.error = new BlockError('ECANCELED', 'Operation canceled');
    if (this.error && this.status !== 'aborting') this.transition('aborting');
  }

  private completedTxnSuccess(): void {
    this.transition('waiting');
    for (const j of this.txn.jobs) if (!j.isCompleted()) return;
    for (const j of this.txn.jobs) j.transitionToPending();
    if ([...this.txn.jobs].every((j) => j.autoFinalize)) void this.doFinalize();
  }

  private transitionToPending(): void {
    this.transition('pending');
    if (!this.autoFinalize) this.graph.emit('BLOCK_JOB_PENDING', { type: this.type, id: this.id });
  }

  /**
   * job_completed_txn_abort(): the first failure in a transaction force-cancels every other job (no result
   * matters any more), waits for each to stop and finalizes them all.
   */
  private completedTxnAbort(): void {
    const txn = this.txn;
    if (txn.aborting) return;
    txn.aborting = true;
    for (const j of txn.jobs) if (j !== this) j.cancelAsync(true);
    void (async () => {
      // A prepare() still running (finalize was under way) finishes before anything is aborted.
      if (txn.preparing) await txn.preparing;
      for (;;) {
        const j = txn.jobs.values().next().value as Job | undefined;
        if (!j) break;
        if (!j.isCompleted()) await j.finishSync();
        await j.finalizeSingle();
        txn.jobs.delete(j);
      }
    })();
  }

  /** job_finish_sync() for a cancelled job: wait until its run() has returned. */
  private async finishSync(): Promise<void> {
    if (!this.started) {
      // Never started: nothing to wait for (job_completed() of an unstarted job).
      this.completed = true;
      this.updateRc();
      return;
    }
    this.enterCond();
    await this.graph.waitWhile(() => !this.completed);
  }

  /** job_do_finalize(): prepare every job of the transaction, then commit them all, or abort them all. */
  private async doFinalize(): Promise<void> {
    const txn = this.txn;
    if (txn.preparing || txn.aborting) return; // already finalizing (prepare() may await)
    let failed: Job | null = null;
    let done!: () => void;
    txn.preparing = new Promise<void>((resolve) => (done = resolve));
    try {
      for (const j of [...txn.jobs]) {
        if (!j.error && j.prepare) {
          try {
            await j.prepare();
          } catch (e) {
            j.error = toBlockError(e);
          }
          j.updateRc();
        }
        if (j.error || txn.aborting) {
          failed = j.error ? j : null;
          break;
        }
      }
    } finally {
      txn.preparing = null;
      done();
    }
    // A cancel that arrived during prepare() has started the abort path already.
    if (txn.aborting) return;
    if (failed) {
      failed.completedTxnAbort();
      return;
    }
    for (const j of [...txn.jobs]) await j.finalizeSingle();
  }

  /** job_finalize_single(): commit or abort, clean, events, CONCLUDED (and NULL when auto-dismissed). */
  private async finalizeSingle(): Promise<void> {
    if (this.finalized) return;
    this.finalized = true;
    // Late failures (a transaction peer failed after we finished) still get abort().
    this.updateRc();
    if (!this.error) {
      try {
        await this.commit?.();
      } catch (e) {
        this.error = toBlockError(e);
        this.updateRc();
      }
    } else {
      await this.runHook('abort', () => this.abort?.());
    }
    await this.runHook('clean', () => this.clean?.());
    if (this.started) {
      if (this.isCancelled()) {
        this.graph.emit('BLOCK_JOB_CANCELLED', { type: this.type, device: this.device, len: this.progress.total, offset: this.progress.current, speed: this.speed });
      } else {
        const data: Record<string, unknown> = { type: this.type, device: this.device, len: this.progress.total, offset: this.progress.current, speed: this.speed };
        if (this.error) data.error = this.error.message;
        this.graph.emit('BLOCK_JOB_COMPLETED', data);
      }
    }
    this.txn.jobs.delete(this);
    this.releaseEdges();
    this.transition('concluded');
    if (this.autoDismiss || !this.started) this.doDismiss();
    else this.notifyFinished();
  }

  private async runHook(name: string, fn: () => Promise<void> | void): Promise<void> {
    try {
      await fn();
    } catch (e) {
      // abort()/clean() can't fail the job any more; the job must still conclude.
      trace('job.hook-error', { id: this.id, hook: name, error: String(e) });
    }
  }

  private doDismiss(): void {
    this.busy = false;
    this.paused = false;
    this.deferredToMainLoop = true;
    this.txn.jobs.delete(this);
    this.transition('null');
    this.graph.jobs.delete(this.id);
    this.notifyFinished();
  }

  private notifyFinished(): void {
    for (const w of this.finishedWaiters.splice(0)) w();
  }

  // --- verbs -----------------------------------------------------------------------------------------------

  /** job-cancel / block-job-cancel. `force` false in READY asks for a consistent copy without pivot. */
  cancel(force = false): void {
    this.applyVerb('cancel');
    if (this.status === 'concluded') {
      this.doDismiss();
      return;
    }
    this.cancelAsync(force);
    if (!this.started) {
      // A job that never ran is always cancelled for good.
      this.cancelled = this.forceCancel = true;
      if (!this.completed) this.jobCompleted();
    } else if (this.deferredToMainLoop) {
      // Soft cancel requests of a job that is done were ignored; a forced one aborts the transaction.
      if (this.isCancelled()) this.completedTxnAbort();
    } else {
      this.enterCond();
    }
  }

  /** block-job-cancel refuses a soft cancel of a user-paused job (checked before the verb, as QEMU does). */
  userCancel(force: boolean): void {
    if (this.userPaused && !force) {
      throw new BlockError('EBUSY', `The block job for device '${this.device}' is currently paused`);
    }
    this.cancel(force);
  }

  private cancelAsync(force: boolean): void {
    // No onCancel means the job behaves as if force-cancelled.
    force = this.onCancel ? this.onCancel(force) : true;
    if (this.userPaused) {
      // block_job_user_resume(): a user pause (or an error stop) ends with the cancel; the caller enters the job.
      this.ioStatus = 'ok';
      this.userPaused = false;
      this.pauseCount--;
    }
    // Soft cancel requests after the job is done are ignored.
    if (force || !this.deferredToMainLoop) {
      this.cancelled = true;
      this.forceCancel ||= force;
    }
  }

  pause(): void {
    this.applyVerb('pause');
    if (this.userPaused) throw new BlockError('EBUSY', 'Job is already paused');
    this.userPaused = true;
    this.pauseInternal();
  }

  resume(): void {
    // QEMU checks "was it paused" before the verb table.
    if (!this.userPaused || this.pauseCount <= 0) throw new BlockError('EPERM', "Can't resume a job that was not paused");
    this.applyVerb('resume');
    this.ioStatus = 'ok';
    this.userPaused = false;
    this.resumeInternal();
  }

  /** job_pause(): one more reason to park at the next pause point; a sleeping job is woken to get there. */
  private pauseInternal(): void {
    this.pauseCount++;
    if (!this.paused) this.enterCond();
  }

  /** job_resume(): the last reason gone, re-enter the job unless it sleeps on a timer anyway. */
  private resumeInternal(): void {
    if (this.pauseCount <= 0) return;
    this.pauseCount--;
    if (this.pauseCount) return;
    this.enterCond(() => this.timer === undefined);
  }

  setSpeed(speed: number): void {
    this.applyVerb('set-speed');
    if (!Number.isSafeInteger(speed) || speed < 0) throw new BlockError('EINVAL', "Parameter 'speed' expects a non-negative value");
    const old = this.speed;
    this.limit.setSpeed(speed, JOB_SLICE_MS);
    this.speed = speed;
    this.onSetSpeed?.(speed);
    if (speed && speed <= old) return;
    // Wake a job sleeping because of the old limit (only a sleep with a timer, never a pause point).
    this.enterCond(() => this.timer !== undefined);
  }

  complete(): void {
    this.applyVerb('complete');
    if (this.cancelRequested() || !this.onComplete) {
      throw new BlockError('EPERM', `The active block job '${this.id}' cannot be completed`);
    }
    this.onComplete();
  }

  finalize(): void {
    this.applyVerb('finalize');
    void this.doFinalize();
  }

  dismiss(): void {
    this.applyVerb('dismiss');
    this.doDismiss();
  }

  /** block-job-change. */
  change(opts: Record<string, unknown>): Promise<void> {
    this.applyVerb('change');
    if (!this.onChange) throw new BlockError('ENOTSUP', 'Job type does not support change');
    try {
      return Promise.resolve(this.onChange(opts));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  // --- inside run() ----------------------------------------------------------------------------------------

  private shouldPause(): boolean {
    return this.pauseCount > 0;
  }

  /**
   * Wake the job from a sleep or `yield()`; a job parked at a pause point is only woken with `force`
   * (mirror's complete: "the job is re-entered when it is resumed").
   */
  protected enter(force = false): void {
    if (this.paused && !force) return;
    this.enterCond();
  }

  /** job_enter_cond(): re-enter a started, yielded job if `cond` holds. */
  private enterCond(cond?: () => boolean): void {
    if (!this.started || this.deferredToMainLoop || !this.wakeFn) return;
    if (cond && !cond()) return;
    this.wakeFn();
  }

  /** job_do_yield(): not busy until `enterCond()` or the timer (ms >= 0) re-enters the job. */
  private doYield(ms: number): Promise<void> {
    this.busy = false;
    const done = new Promise<void>((resolve) => {
      this.wakeFn = () => {
        if (this.timer !== undefined) clearTimeout(this.timer);
        this.timer = undefined;
        this.wakeFn = null;
        this.busy = true;
        resolve();
      };
      // Timers can't wait longer than 2^31-1 ms; a longer sleep just ends early (callers re-check and sleep again).
      if (ms >= 0) this.timer = setTimeout(() => this.wakeFn?.(), Math.min(ms, MAX_TIMER_MS));
    });
    this.graph.kick();
    return done;
  }

  /** job_pause_point(): park here while a pause is requested (PAUSED, or STANDBY when READY). */
  async pausePoint(): Promise<void> {
    if (!this.shouldPause() || this.isCancelled()) return;
    await this.onPause?.();
    if (this.shouldPause() && !this.isCancelled()) {
      const status = this.status;
      this.transition(status === 'ready' ? 'standby' : 'paused');
      this.paused = true;
      await this.doYield(-1);
      this.paused = false;
      this.transition(status);
    }
    this.onResume?.();
  }

  /**
   * job_sleep_ns(): sleep, woken early by cancel/pause/set-speed, then a pause point. A force-cancelled job
   * returns at once; with a pause pending it goes straight to the pause point.
   */
  async sleep(ms: number): Promise<void> {
    if (this.isCancelled()) return;
    if (!this.shouldPause()) await this.doYield(Math.max(0, ms));
    await this.pausePoint();
  }

  /** job_yield(): wait for `enter()`, then a pause point. A force-cancelled job returns at once. */
  async yield(): Promise<void> {
    if (this.isCancelled()) return;
    if (!this.shouldPause()) await this.doYield(-1);
    await this.pausePoint();
  }

  /** block_job_ratelimit_processed_bytes(): account `bytes` against the speed limit. */
  ratelimitProcessed(bytes: number): void {
    this.limit.calculateDelay(bytes);
  }

  /**
   * block_job_ratelimit_sleep(): sleep at least once, and until the rate limit allows more; the delay is
   * recomputed after every (possibly interrupted) sleep because set-speed may have changed it.
   */
  async ratelimitSleep(): Promise<void> {
    let delay: number;
    do {
      delay = this.limit.calculateDelay(0);
      await this.sleep(delay);
    } while (delay > 0 && !this.isCancelled());
  }

  transitionToReady(): void {
    this.transition('ready');
    this.graph.emit('BLOCK_JOB_READY', { type: this.type, device: this.device, len: this.progress.total, offset: this.progress.current, speed: this.speed });
  }

  progressUpdate(done: number): void {
    this.progress.current += done;
    if (this.progress.total < this.progress.current) this.progress.total = this.progress.current;
  }

  progressSetRemaining(remaining: number): void {
    this.progress.total = this.progress.current + remaining;
  }

  progressIncreaseRemaining(delta: number): void {
    this.progress.total += delta;
  }

  /**
   * block_job_error_action(): decide, emit BLOCK_JOB_ERROR, and for 'stop' pause the job as if the user had
   * (resume clears the I/O status).
   */
  errorAction(onError: OnError, isRead: boolean, code: BlockErrorCode): ErrorAction {
    let action: ErrorAction;
    switch (onError) {
      case 'enospc':
      case 'auto':
        action = code === 'ENOSPC' ? 'stop' : 'report';
        break;
      case 'stop':
        action = 'stop';
        break;
      case 'report':
        action = 'report';
        break;
      case 'ignore':
        action = 'ignore';
        break;
    }
    this.graph.emit('BLOCK_JOB_ERROR', { device: this.device, operation: isRead ? 'read' : 'write', action });
    if (action === 'stop') {
      if (!this.userPaused) {
        this.pauseInternal();
        this.userPaused = true;
      }
      // block_job_iostatus_set_err(): the first error sticks until resume.
      if (this.ioStatus === 'ok') this.ioStatus = code === 'ENOSPC' ? 'nospace' : 'failed';
    }
    return action;
  }

  /** query-block-jobs entry. */
  query(): JobInfo {
    const info: JobInfo = {
      type: this.type,
      device: this.device,
      id: this.id,
      len: this.progress.total,
      offset: this.progress.current,
      busy: this.busy,
      paused: this.pauseCount > 0,
      speed: this.speed,
      'io-status': this.ioStatus,
      ready: this.isReady(),
      status: this.status,
      'auto-finalize': this.autoFinalize,
      'auto-dismiss': this.autoDismiss,
    };
    if (this.error && this.status !== 'running') info.error = this.error.message;
    return info;
  }

  // --- the job as a parent of its nodes --------------------------------------------------------------------

  describeParent(): string {
    return `${this.type} job '${this.id}'`;
  }

  drainedBegin(): void {
    this.pauseInternal();
  }

  drainedEnd(): void {
    this.resumeInternal();
  }

  drainedPoll(): boolean {
    if (!this.busy || this.isCompleted()) return false;
    return this.drainedPollExtra ? this.drainedPollExtra() : true;
  }

  /** block_job_add_bdrv(): hold `node` with the given perms (stays at the node across replaceNode). */
  addNodeEdge(name: string, node: BlockNode, perm: PermBits, shared: PermBits, role: ChildRoles = 0): Child {
    return Transaction.run((tran) => {
      const c = this.graph.attachEdge(this, node, name, role, tran, { stayAtNode: true });
      setEdgePerms(c, { perm, shared }, tran);
      refreshPerms([node], tran);
      this.edges.push(c);
      return c;
    });
  }

  protected releaseEdges(): void {
    for (const c of this.edges.splice(0)) {
      this.graph.detachEdge(c);
      if (!c.node.closed) Transaction.run((tran) => refreshPerms([c.node], tran));
    }
  }
}
