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

/** A group of jobs that succeed or fail together. */
export class JobTxn {
  readonly jobs = new Set<Job>();
  aborting = false;
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
  /** The error that ended the job (QEMU's job->err). */
  error: BlockError | null = null;
  readonly progress = { current: 0, total: 0 };
  speed = 0;
  ioStatus: IoStatus = 'ok';
  protected readonly limit = new RateLimit();
  private wakeFn: (() => void) | null = null;
  private readonly finishedWaiters: (() => void)[] = [];
  /** Edges this job holds on nodes (block_job_add_bdrv). */
  protected readonly edges: Child[] = [];

  constructor(graph: Graph, opts: JobOptions) {
    if (!JOB_ID_RE.test(opts.id)) throw new BlockError('EINVAL', `Invalid job ID '${opts.id}'`);
    if (graph.jobs.has(opts.id)) throw new BlockError('EEXIST', `Job ID '${opts.id}' already in use`);
    if (opts.speed !== undefined && opts.speed < 0) throw new BlockError('EINVAL', "Invalid parameter 'speed'");
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
  protected commit?(): void;
  protected abort?(): void;
  protected clean?(): void;
  /** Called at a pause point before parking (mirror waits for its I/O here). */
  protected onPause?(): Promise<void> | void;
  protected onResume?(): void;
  /** Accept `complete` (only jobs that have a READY phase). */
  protected onComplete?(): void;
  /** Return the effective force (mirror: a soft cancel in READY stays soft). */
  protected onCancel?(force: boolean): boolean;
  protected onSetSpeed?(speed: number): void;
  protected onChange?(opts: Record<string, unknown>): void;
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
    this.deferredToMainLoop = true;
    this.busy = true;
    // QEMU defers job_exit to the main loop: let whoever triggered the last step finish first.
    await Promise.resolve();
    this.exit();
  }

  private exit(): void {
    this.completed = true;
    this.busy = false;
    this.updateRc();
    if (this.error) this.completedTxnAbort();
    else this.completedTxnSuccess();
  }

  private updateRc(): void {
    if (!this.error && this.isCancelled()) this.error = new BlockError('ECANCELED', 'Operation canceled');
    if (this.error && this.status !== 'aborting' && this.status !== 'concluded' && this.status !== 'null') {
      this.transition('aborting');
    }
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

  private completedTxnAbort(): void {
    const txn = this.txn;
    if (txn.aborting) return;
    txn.aborting = true;
    for (const j of txn.jobs) if (j !== this) j.cancelAsync(true);
    void (async () => {
      for (const j of [...txn.jobs]) {
        if (!j.isCompleted()) await j.finishSync();
        await j.finalizeSingle();
      }
    })();
  }

  /** Wait until a (cancelled) job's run() has returned. */
  private async finishSync(): Promise<void> {
    this.enter(true);
    await this.graph.waitWhile(() => !this.completed);
  }

  private async doFinalize(): Promise<void> {
    for (const j of this.txn.jobs) {
      if (!j.error && j.prepare) {
        try {
          await j.prepare();
        } catch (e) {
          j.error = toBlockError(e);
        }
        j.updateRc();
      }
      if (j.error) {
        this.completedTxnAbort();
        return;
      }
    }
    for (const j of [...this.txn.jobs]) await j.finalizeSingle();
  }

  private async finalizeSingle(): Promise<void> {
    if (!this.error) this.commit?.();
    else this.abort?.();
    this.clean?.();
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

  private doDismiss(): void {
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
      this.completed = true;
      this.updateRc();
      this.completedTxnAbort();
    } else if (this.deferredToMainLoop) {
      if (this.isCancelled()) this.completedTxnAbort();
    } else {
      this.enter(true);
    }
  }

  /** block-job-cancel refuses a soft cancel of a user-paused job. */
  userCancel(force: boolean): void {
    this.applyVerb('cancel');
    if (this.userPaused && !force) {
      throw new BlockError('EBUSY', `The block job for device '${this.device}' is currently paused`);
    }
    this.cancel(force);
  }

  private cancelAsync(force: boolean): void {
    force = this.onCancel ? this.onCancel(force) : true;
    if (this.userPaused) {
      this.onResume?.();
      this.userPaused = false;
      this.pauseCount--;
    }
    // Soft cancel requests after the job is done are ignored.
    if (!this.deferredToMainLoop) {
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
    this.applyVerb('resume');
    if (!this.userPaused) throw new BlockError('EPERM', "Can't resume a job that was not paused");
    this.ioStatus = 'ok';
    this.userPaused = false;
    this.resumeInternal();
  }

  private pauseInternal(): void {
    this.pauseCount++;
    if (!this.paused) this.enter(false);
  }

  private resumeInternal(): void {
    if (this.pauseCount <= 0) return;
    this.pauseCount--;
    if (this.pauseCount) return;
    this.enter(true);
  }

  setSpeed(speed: number): void {
    this.applyVerb('set-speed');
    if (!Number.isSafeInteger(speed) || speed < 0) throw new BlockError('EINVAL', "Invalid parameter 'speed'");
    const old = this.speed;
    this.onSetSpeed?.(speed);
    this.speed = speed;
    this.limit.setSpeed(speed, JOB_SLICE_MS);
    if (speed && speed <= old) return;
    // Wake a job sleeping because of the old limit.
    if (!this.paused) this.enter(false);
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
  change(opts: Record<string, unknown>): void {
    this.applyVerb('change');
    if (!this.onChange) throw new BlockError('ENOTSUP', 'Job type does not support change');
    this.onChange(opts);
  }

  // --- inside run() ----------------------------------------------------------------------------------------

  private shouldPause(): boolean {
    return this.pauseCount > 0;
  }

  /** Wake the job from a sleep (or, with `force`, from a pause point). */
  protected enter(force: boolean): void {
    if (!this.started || this.deferredToMainLoop || !this.wakeFn) return;
    if (this.paused && !force) return;
    this.wakeFn();
  }

  private doYield(ms: number): Promise<void> {
    this.busy = false;
    this.graph.kick();
    return new Promise<void>((resolve) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      this.wakeFn = () => {
        if (timer !== undefined) clearTimeout(timer);
        this.wakeFn = null;
        this.busy = true;
        resolve();
      };
      if (ms >= 0) timer = setTimeout(() => this.wakeFn?.(), ms);
    });
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

  /** job_sleep_ns(): sleep, woken early by cancel/complete/pause requests, then a pause point. */
  async sleep(ms: number): Promise<void> {
    if (!this.isCancelled()) await this.doYield(ms);
    await this.pausePoint();
  }

  /** job_yield(): wait for `enter()`. */
  async yield(): Promise<void> {
    if (!this.shouldPause()) await this.doYield(-1);
    await this.pausePoint();
  }

  /** block_job_ratelimit_processed_bytes(). */
  ratelimitProcessed(bytes: number): void {
    this.pendingDelay = Math.max(this.pendingDelay, this.limit.calculateDelay(bytes));
  }

  private pendingDelay = 0;

  /** block_job_ratelimit_sleep(): sleep at least once, as long as the rate limit says. */
  async ratelimitSleep(): Promise<void> {
    let delay: number;
    do {
      delay = this.limit.calculateDelay(0);
      this.pendingDelay = 0;
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
      this.ioStatus = code === 'ENOSPC' ? 'nospace' : 'failed';
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
