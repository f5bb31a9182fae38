/**
 * Job lifecycles with exact event sequences (like QEMU's iotests 218/219 golden outputs), transactions, error
 * policies (229), rate limiting, drain and graph.close() (185/218 "quit while running").
 */
import { afterEach, describe, expect, it } from 'vitest';
import { BlockError, Graph, Job, JobTxn, Perm, PERM_ALL, type GraphEvent, type JobOptions } from '../src/index.js';
import { testDrivers } from './drivers.js';
import { delay, errorOf, events, gate, PlainJob, record, seq, seqAll, TestJob, until, within } from './job-helpers.js';

const graphs: Graph[] = [];
const gates: (() => void)[] = [];

function newGraph(): { g: Graph; ev: GraphEvent[] } {
  const g = new Graph({ drivers: testDrivers });
  graphs.push(g);
  return { g, ev: record(g) };
}

afterEach(async () => {
  for (const open of gates.splice(0)) open();
  for (const g of graphs.splice(0)) await within(g.close(), 5000, 'graph.close()');
});

const payload = (len: number, offset: number, speed = 0): Record<string, unknown> => ({ type: 'test', device: 'job0', len, offset, speed });

describe('event sequences', () => {
  it('complete: created → running → ready → waiting → pending → concluded → null', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 3, ready: true });
    job.start();
    await job.waitFor('ready');
    expect(job.isReady()).toBe(true);
    expect(job.query()).toMatchObject({ status: 'ready', ready: true, len: 196608, offset: 196608 });
    job.complete();
    await within(job.waitFinished(), 2000);
    expect(seq(ev)).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(events(ev, 'BLOCK_JOB_READY')).toEqual([payload(196608, 196608)]);
    expect(events(ev, 'BLOCK_JOB_COMPLETED')).toEqual([payload(196608, 196608)]);
    expect(events(ev, 'JOB_STATUS_CHANGE').every((d) => Object.keys(d).join() === 'id,status' && d.id === 'job0')).toBe(true);
    expect(job.log).toEqual(['prepare', 'commit', 'clean']);
    expect(job.pivoted).toBe(true);
    expect(g.jobs.size).toBe(0);
    // the events carry QEMU-style timestamps
    expect(ev[0]!.timestamp.seconds).toBeGreaterThan(1_600_000_000);
    expect(ev[0]!.timestamp.microseconds).toBeGreaterThanOrEqual(0);
  });

  it('a job without READY phase: running → waiting → pending → concluded → null', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, { speed: 0 }, { steps: 2, chunk: 1000 });
    job.start();
    await within(job.waitFinished(), 2000);
    expect(seq(ev)).toEqual(['created', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(events(ev, 'BLOCK_JOB_COMPLETED')).toEqual([payload(2000, 2000)]);
  });

  it('failure: running → aborting → concluded → null, BLOCK_JOB_COMPLETED with the error', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 3, failAt: 2 });
    job.start();
    await within(job.waitFinished(), 2000);
    expect(seq(ev)).toEqual(['created', 'running', 'aborting', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(events(ev, 'BLOCK_JOB_COMPLETED')).toEqual([{ ...payload(196608, 65536), error: 'Input/output error' }]);
    expect(job.log).toEqual(['abort', 'clean']);
    expect(job.error?.code).toBe('EIO');
  });

  it('failure in prepare(): pending → aborting, abort() instead of commit()', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 1, prepare: () => Promise.reject(new BlockError('ENOSPC')) });
    job.start();
    await within(job.waitFinished(), 2000);
    expect(seq(ev)).toEqual(['created', 'running', 'waiting', 'pending', 'aborting', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(events(ev, 'BLOCK_JOB_COMPLETED')[0]!.error).toBe('No space left on device');
    expect(job.log).toEqual(['prepare', 'abort', 'clean']);
  });

  for (const force of [false, true]) {
    it(`cancel before READY (force=${force}): BLOCK_JOB_CANCELLED (218)`, async () => {
      const { g, ev } = newGraph();
      const job = new TestJob(g, {}, { ready: true });
      job.start();
      await until(() => job.stepsDone >= 2);
      job.cancel(force);
      await within(job.waitFinished(), 2000);
      expect(seq(ev)).toEqual(['created', 'running', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
      const n = job.stepsDone * 65536;
      expect(events(ev, 'BLOCK_JOB_CANCELLED')).toEqual([payload(n, n)]);
      expect(job.log).toEqual(['abort', 'clean']);
    });
  }

  it('soft cancel after READY: BLOCK_JOB_COMPLETED, success without pivot (218)', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 2, ready: true });
    job.start();
    await job.waitFor('ready');
    job.cancel(false);
    // a cancelled job can't be completed any more
    expect(errorOf(() => job.complete()).message).toBe("The active block job 'job0' cannot be completed");
    await within(job.waitFinished(), 2000);
    expect(seq(ev)).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(events(ev, 'BLOCK_JOB_COMPLETED')).toEqual([payload(131072, 131072)]);
    expect(job.log).toEqual(['prepare', 'commit', 'clean']);
    expect(job.pivoted).toBe(false);
    expect(job.error).toBeNull();
  });

  it('forced cancel after READY: BLOCK_JOB_CANCELLED (218)', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 2, ready: true });
    job.start();
    await job.waitFor('ready');
    job.cancel(true);
    await within(job.waitFinished(), 2000);
    expect(seq(ev)).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect(job.log).toEqual(['abort', 'clean']);
  });

  it('a soft cancel followed by a forced one: the force wins', async () => {
    const { g, ev } = newGraph();
    const stuck = gate();
    gates.push(stuck.open);
    const job = new TestJob(g, {}, { steps: 1, ready: true });
    job.start();
    await job.waitFor('ready');
    job.cfg.gate = stuck.promise; // the job is now stuck in "I/O" at its next iteration
    await delay(20);
    job.cancel(false);
    job.cancel(true);
    stuck.open();
    await within(job.waitFinished(), 2000);
    expect(seq(ev).slice(-4)).toEqual(['aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
  });

  it('auto-finalize=false: sits in PENDING with BLOCK_JOB_PENDING until finalize', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, { autoFinalize: false }, { steps: 1, chunk: 512 });
    job.start();
    await job.waitFor('pending');
    await delay(30);
    expect(job.status).toBe('pending');
    expect(seq(ev)).toEqual(['created', 'running', 'waiting', 'pending', 'BLOCK_JOB_PENDING']);
    expect(events(ev, 'BLOCK_JOB_PENDING')).toEqual([{ type: 'test', id: 'job0' }]);
    expect(job.log).toEqual([]);
    expect(job.query()).toMatchObject({ status: 'pending', 'auto-finalize': false, 'auto-dismiss': true });
    job.finalize();
    await within(job.waitFinished(), 2000);
    expect(seq(ev).slice(5)).toEqual(['BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(job.log).toEqual(['prepare', 'commit', 'clean']);
  });

  it('auto-dismiss=false: sits in CONCLUDED until dismiss', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, { autoDismiss: false }, { steps: 1 });
    job.start();
    await within(job.waitFinished(), 2000);
    expect(job.status).toBe('concluded');
    expect(g.jobs.get('job0')).toBe(job);
    expect(seq(ev)).toEqual(['created', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded']);
    expect(job.query()).toMatchObject({ status: 'concluded', 'auto-dismiss': false });
    job.dismiss();
    expect(seq(ev).slice(-1)).toEqual(['null']);
    expect(g.jobs.has('job0')).toBe(false);
  });

  it('auto-finalize=false and auto-dismiss=false with a failure: ABORTING needs no finalize, CONCLUDED keeps the error', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, { autoFinalize: false, autoDismiss: false }, { failAt: 1 });
    job.start();
    await within(job.waitFinished(), 2000);
    expect(seq(ev)).toEqual(['created', 'running', 'aborting', 'BLOCK_JOB_COMPLETED', 'concluded']);
    expect(job.query()).toMatchObject({ status: 'concluded', error: 'Input/output error' });
    job.dismiss();
    expect(job.status).toBe('null');
  });

  it('pause → paused, resume → running; pause in READY → standby, resume → ready (219)', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { ready: true });
    job.start();
    await until(() => job.stepsDone > 0);
    for (let i = 0; i < 2; i++) {
      job.pause();
      await job.waitFor('paused');
      const at = job.progress.current;
      await delay(40);
      expect(job.progress.current).toBe(at);
      job.resume();
      await until(() => job.progress.current > at, 'progress after resume');
    }
    job.finish();
    await job.waitFor('ready');
    for (let i = 0; i < 2; i++) {
      job.pause();
      await job.waitFor('standby');
      job.resume();
      await job.waitFor('ready');
    }
    job.complete();
    await within(job.waitFinished(), 2000);
    expect(seq(ev)).toEqual([
      'created', 'running',
      'paused', 'running', 'paused', 'running',
      'ready', 'BLOCK_JOB_READY',
      'standby', 'ready', 'standby', 'ready',
      'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null',
    ]);
    // the driver's pause/resume hooks ran around each pause
    expect(job.pauses).toBe(4);
    expect(job.resumes).toBe(4);
    // progress never goes backwards and ends at the total
    expect(job.progress.current).toBe(job.progress.total);
  });

  it('mixing pause sources: drain and user pause count separately', async () => {
    const { g } = newGraph();
    const node = await g.addNode({ driver: 'test-mem', nodeName: 'mem', size: 1 << 20 });
    const job = new TestJob(g);
    job.addNodeEdge('source', node, Perm.CONSISTENT_READ, PERM_ALL);
    job.start();
    await until(() => job.stepsDone > 0);
    job.pause();
    await job.waitFor('paused');
    await g.drainedBegin(node);
    job.resume(); // the user's reason is gone, the drain's is not
    await delay(40);
    expect(job.status).toBe('paused');
    g.drainedEnd(node);
    const n = job.stepsDone;
    await until(() => job.stepsDone > n);
    expect(job.status).toBe('running');
  });
});

describe('job creation and other messages', () => {
  it('checks job IDs like QEMU', async () => {
    const { g } = newGraph();
    for (const id of ['1job', 'a b', '', '-x', 'job#1']) {
      expect(errorOf(() => new TestJob(g, { id })).message).toBe(`Invalid job ID '${id}'`);
    }
    const job = new TestJob(g, { id: 'Job_1.a-b' });
    expect(errorOf(() => new TestJob(g, { id: 'Job_1.a-b' })).message).toBe("Job ID 'Job_1.a-b' already in use");
    expect(g.jobs.size).toBe(1);
    job.cancel();
    await job.waitFinished();
    // the ID is free again once the job is gone
    expect(new TestJob(g, { id: 'Job_1.a-b' }).status).toBe('created');
  });

  it('refuses a negative speed at creation and in set-speed', () => {
    const { g } = newGraph();
    expect(errorOf(() => new TestJob(g, { speed: -1 })).message).toBe("Parameter 'speed' expects a non-negative value");
    expect(g.jobs.size).toBe(0);
    const job = new TestJob(g, { speed: 1000 });
    expect(job.query().speed).toBe(1000);
    expect(errorOf(() => job.setSpeed(-5)).message).toBe("Parameter 'speed' expects a non-negative value");
    expect(errorOf(() => job.setSpeed(1.5)).message).toBe("Parameter 'speed' expects a non-negative value");
  });

  it('complete of a job that has no completion: "The active block job ... cannot be completed"', async () => {
    const { g } = newGraph();
    const job = new PlainJob(g);
    job.start();
    await job.waitFor('ready');
    expect(errorOf(() => job.complete()).message).toBe("The active block job 'job0' cannot be completed");
    expect(errorOf(() => job.change({})).message).toBe('Job type does not support change');
    job.cancel(false);
    await within(job.waitFinished(), 2000);
  });

  it('block-job-cancel refuses a soft cancel of a paused job; a forced one works (229)', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { ready: true, steps: 1 });
    job.start();
    await job.waitFor('ready');
    job.pause();
    await job.waitFor('standby');
    const e = errorOf(() => job.userCancel(false));
    expect(e.message).toBe("The block job for device 'job0' is currently paused");
    expect(job.status).toBe('standby');
    job.userCancel(true);
    await within(job.waitFinished(), 2000);
    expect(seq(ev).slice(-5)).toEqual(['ready', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
  });

  it('start twice is refused', () => {
    const { g } = newGraph();
    const job = new TestJob(g);
    job.start();
    expect(() => job.start()).toThrow(BlockError);
  });

  it('query() reports QEMU fields', async () => {
    const { g } = newGraph();
    const job = new TestJob(g, { speed: 4096 }, { steps: 1000 });
    expect(job.query()).toEqual({
      type: 'test',
      device: 'job0',
      id: 'job0',
      len: 0,
      offset: 0,
      busy: false,
      paused: true, // created jobs are paused until started
      speed: 4096,
      'io-status': 'ok',
      ready: false,
      status: 'created',
      'auto-finalize': true,
      'auto-dismiss': true,
    });
    job.start();
    await until(() => job.stepsDone > 0);
    expect(job.query()).toMatchObject({ status: 'running', paused: false, len: 1000 * 65536 });
  });
});

describe('transactions', () => {
  it('one job fails: the other is force-cancelled, both conclude', async () => {
    const { g, ev } = newGraph();
    const txn = new JobTxn();
    const a = new TestJob(g, { id: 'a', txn }, { steps: 5, failAt: 3 });
    const b = new TestJob(g, { id: 'b', txn }, { ready: true, steps: 1 });
    b.start();
    await b.waitFor('ready');
    a.start();
    await within(Promise.all([a.waitFinished(), b.waitFinished()]), 2000);
    expect(seq(ev, 'a')).toEqual(['created', 'running', 'aborting', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    // b was READY, where a soft cancel would complete it; the transaction cancels by force
    expect(seq(ev, 'b')).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect(events(ev, 'BLOCK_JOB_COMPLETED', 'a')[0]!.error).toBe('Input/output error');
    expect(a.log).toEqual(['abort', 'clean']);
    expect(b.log).toEqual(['abort', 'clean']);
    expect(txn.jobs.size).toBe(0);
  });

  it('a job fails after its peer finished: the waiting peer is aborted too', async () => {
    const { g, ev } = newGraph();
    const txn = new JobTxn();
    const a = new TestJob(g, { id: 'a', txn }, { steps: 1 });
    const b = new TestJob(g, { id: 'b', txn }, { steps: 5, failAt: 5 });
    a.start();
    b.start();
    await within(Promise.all([a.waitFinished(), b.waitFinished()]), 2000);
    expect(seq(ev, 'a')).toEqual(['created', 'running', 'waiting', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect(seq(ev, 'b')).toEqual(['created', 'running', 'aborting', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(a.log).toEqual(['abort', 'clean']); // never committed
  });

  it('both succeed: they reach PENDING together and finalize together', async () => {
    const { g, ev } = newGraph();
    const txn = new JobTxn();
    const a = new TestJob(g, { id: 'a', txn }, { steps: 1 });
    const b = new TestJob(g, { id: 'b', txn }, { steps: 4 });
    a.start();
    b.start();
    await within(Promise.all([a.waitFinished(), b.waitFinished()]), 2000);
    const all = seqAll(ev);
    const idx = (s: string): number => all.indexOf(s);
    // a waits for b
    expect(idx('a:waiting')).toBeLessThan(idx('b:waiting'));
    // both move to pending only after b is done, one right after the other
    expect(all.slice(idx('b:waiting'), idx('b:waiting') + 3)).toEqual(['b:waiting', 'a:pending', 'b:pending']);
    // both prepare before either commits
    expect(a.log).toEqual(['prepare', 'commit', 'clean']);
    expect(b.log).toEqual(['prepare', 'commit', 'clean']);
    expect(idx('a:BLOCK_JOB_COMPLETED')).toBeGreaterThan(idx('b:pending'));
    expect(idx('b:BLOCK_JOB_COMPLETED')).toBeGreaterThan(idx('b:pending'));
    expect(seq(ev, 'a').filter((s) => s.startsWith('BLOCK'))).toEqual(['BLOCK_JOB_COMPLETED']);
  });

  it('one manual-finalize job holds the whole transaction in PENDING; one finalize finalizes both', async () => {
    const { g, ev } = newGraph();
    const txn = new JobTxn();
    const a = new TestJob(g, { id: 'a', txn }, { steps: 1 });
    const b = new TestJob(g, { id: 'b', txn, autoFinalize: false }, { steps: 2 });
    a.start();
    b.start();
    await until(() => a.status === 'pending' && b.status === 'pending');
    await delay(30);
    expect([a.status, b.status]).toEqual(['pending', 'pending']);
    expect(events(ev, 'BLOCK_JOB_PENDING')).toEqual([{ type: 'test', id: 'b' }]);
    expect(a.log).toEqual([]);
    b.finalize();
    await within(Promise.all([a.waitFinished(), b.waitFinished()]), 2000);
    expect(a.log).toEqual(['prepare', 'commit', 'clean']);
    expect(b.log).toEqual(['prepare', 'commit', 'clean']);
  });

  it('prepare() of one job fails: every job of the transaction is aborted', async () => {
    const { g, ev } = newGraph();
    const txn = new JobTxn();
    const a = new TestJob(g, { id: 'a', txn }, { steps: 1 });
    const b = new TestJob(g, { id: 'b', txn }, { steps: 1, prepare: () => Promise.reject(new BlockError('EPERM', 'no pivot')) });
    a.start();
    b.start();
    await within(Promise.all([a.waitFinished(), b.waitFinished()]), 2000);
    expect(a.log).toEqual(['prepare', 'abort', 'clean']);
    expect(b.log).toEqual(['prepare', 'abort', 'clean']);
    expect(events(ev, 'BLOCK_JOB_COMPLETED', 'b')[0]!.error).toBe('no pivot');
    expect(seq(ev, 'a').slice(-4)).toEqual(['aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
  });

  it('a cancel while prepare() is running waits for it, then aborts (no double finalize)', async () => {
    const { g, ev } = newGraph();
    const p = gate();
    gates.push(p.open);
    const job = new TestJob(g, { autoFinalize: false }, { steps: 1, prepare: () => p.promise });
    job.start();
    await job.waitFor('pending');
    job.finalize();
    await delay(10);
    expect(job.log).toEqual(['prepare']);
    // a second finalize while the first is still preparing does nothing
    job.finalize();
    job.cancel(true);
    await delay(20);
    expect(job.status).toBe('pending');
    p.open();
    await within(job.waitFinished(), 2000);
    expect(job.log).toEqual(['prepare', 'abort', 'clean']);
    expect(seq(ev).slice(-5)).toEqual(['BLOCK_JOB_PENDING', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
  });

  it('an unstarted job in a failing transaction is cancelled without hanging', async () => {
    const { g, ev } = newGraph();
    const txn = new JobTxn();
    const idle = new TestJob(g, { id: 'idle', txn });
    const a = new TestJob(g, { id: 'a', txn }, { failAt: 1 });
    a.start();
    await within(Promise.all([a.waitFinished(), idle.waitFinished()]), 2000);
    expect(seq(ev, 'idle')).toEqual(['created', 'aborting', 'concluded', 'null']);
    expect(idle.log).toEqual(['abort', 'clean']);
  });
});

describe('error actions (block_job_error_action)', () => {
  it("'stop' pauses the job as a user pause, io-status failed; resume clears it and the job goes on", async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 3, ioError: { at: 2, onError: 'stop', code: 'EIO' } });
    job.start();
    await job.waitFor('paused');
    expect(events(ev, 'BLOCK_JOB_ERROR')).toEqual([{ device: 'job0', operation: 'write', action: 'stop' }]);
    expect(job.userPaused).toBe(true);
    expect(job.query()).toMatchObject({ status: 'paused', paused: true, 'io-status': 'failed' });
    expect(job.stepsDone).toBe(1);
    await delay(30);
    expect(job.status).toBe('paused');
    expect(errorOf(() => job.pause()).message).toBe('Job is already paused');
    job.resume();
    expect(job.query()['io-status']).toBe('ok');
    await within(job.waitFinished(), 2000);
    expect(job.stepsDone).toBe(3);
    expect(seq(ev)).toEqual(['created', 'running', 'BLOCK_JOB_ERROR', 'paused', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(events(ev, 'BLOCK_JOB_COMPLETED')[0]).not.toHaveProperty('error');
  });

  it("'stop' on ENOSPC: io-status nospace; a read error reports operation 'read'", async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 2, ioError: { at: 1, onError: 'stop', code: 'ENOSPC', isRead: true } });
    job.start();
    await job.waitFor('paused');
    expect(events(ev, 'BLOCK_JOB_ERROR')).toEqual([{ device: 'job0', operation: 'read', action: 'stop' }]);
    expect(job.query()['io-status']).toBe('nospace');
    job.resume();
    await within(job.waitFinished(), 2000);
  });

  it("'enospc' stops only on ENOSPC, reports anything else", async () => {
    {
      const { g, ev } = newGraph();
      const job = new TestJob(g, {}, { steps: 2, ioError: { at: 1, onError: 'enospc', code: 'ENOSPC' } });
      job.start();
      await job.waitFor('paused');
      expect(job.actions).toEqual(['stop']);
      expect(events(ev, 'BLOCK_JOB_ERROR')[0]!.action).toBe('stop');
      expect(job.query()['io-status']).toBe('nospace');
      job.resume();
      await within(job.waitFinished(), 2000);
      expect(events(ev, 'BLOCK_JOB_COMPLETED')[0]).not.toHaveProperty('error');
    }
    {
      const { g, ev } = newGraph();
      const job = new TestJob(g, {}, { steps: 2, ioError: { at: 1, onError: 'enospc', code: 'EIO' } });
      job.start();
      await within(job.waitFinished(), 2000);
      expect(job.actions).toEqual(['report']);
      expect(events(ev, 'BLOCK_JOB_ERROR')).toEqual([{ device: 'job0', operation: 'write', action: 'report' }]);
      expect(events(ev, 'BLOCK_JOB_COMPLETED')[0]!.error).toBe('Input/output error');
      expect(seq(ev)).not.toContain('paused');
    }
  });

  it("'auto' behaves like 'enospc'", () => {
    const { g } = newGraph();
    const job = new TestJob(g);
    expect(job.errorAction('auto', false, 'EIO')).toBe('report');
    expect(job.userPaused).toBe(false);
    expect(job.errorAction('auto', false, 'ENOSPC')).toBe('stop');
    expect(job.userPaused).toBe(true);
  });

  it("'ignore' emits the event and the job goes on", async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 3, ioError: { at: 2, onError: 'ignore', code: 'EIO' } });
    job.start();
    await within(job.waitFinished(), 2000);
    expect(events(ev, 'BLOCK_JOB_ERROR')).toEqual([{ device: 'job0', operation: 'write', action: 'ignore' }]);
    expect(seq(ev)).toEqual(['created', 'running', 'BLOCK_JOB_ERROR', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(job.query()['io-status']).toBe('ok');
  });

  it("'report' emits the event and the job fails with the error", async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 3, ioError: { at: 2, onError: 'report', code: 'EIO' } });
    job.start();
    await within(job.waitFinished(), 2000);
    expect(seq(ev)).toEqual(['created', 'running', 'BLOCK_JOB_ERROR', 'aborting', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(events(ev, 'BLOCK_JOB_ERROR')[0]!.action).toBe('report');
    expect(events(ev, 'BLOCK_JOB_COMPLETED')[0]!.error).toBe('Input/output error');
  });

  it('the first error status sticks until resume', () => {
    const { g } = newGraph();
    const job = new TestJob(g);
    job.errorAction('stop', false, 'ENOSPC');
    job.errorAction('stop', false, 'EIO');
    expect(job.query()['io-status']).toBe('nospace');
    job.resume();
    expect(job.query()['io-status']).toBe('ok');
  });

  it('a job stopped on an error can be force-cancelled: BLOCK_JOB_CANCELLED (229)', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 3, ioError: { at: 1, onError: 'stop', code: 'ENOSPC', times: 100 } });
    job.start();
    await job.waitFor('paused');
    job.cancel(true);
    await within(job.waitFinished(), 2000);
    expect(seq(ev)).toEqual(['created', 'running', 'BLOCK_JOB_ERROR', 'paused', 'running', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect(job.status).toBe('null');
  });

  it('an error that keeps coming stops the job again after each resume', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, {}, { steps: 2, ioError: { at: 1, onError: 'stop', code: 'EIO', times: 2 } });
    job.start();
    await job.waitFor('paused');
    job.resume();
    await until(() => events(ev, 'BLOCK_JOB_ERROR').length === 2);
    await job.waitFor('paused');
    expect(job.query()['io-status']).toBe('failed');
    job.resume();
    await within(job.waitFinished(), 2000);
    expect(job.stepsDone).toBe(2);
  });
});

describe('rate limiting', () => {
  it('10 chunks of speed/10 bytes take about a second', async () => {
    const { g } = newGraph();
    const speed = 640 * 1024;
    const job = new TestJob(g, { speed }, { steps: 10, chunk: speed / 10, rateLimited: true });
    const t0 = performance.now();
    job.start();
    await within(job.waitFinished(), 10_000);
    // Only a lower bound: a stalled machine makes it slower, never faster.
    expect(performance.now() - t0).toBeGreaterThanOrEqual(800);
  });

  it('unlimited (speed 0) does not throttle', async () => {
    const { g } = newGraph();
    const job = new TestJob(g, {}, { steps: 10, chunk: 64 * 1024, rateLimited: true });
    job.start();
    await within(job.waitFinished(), 5000);
    // ratelimitSleep() still yields once per step, without a delay.
    expect(job.sleeps).toEqual(new Array(10).fill(0));
  });

  it('set-speed wakes a job sleeping on the old limit; lowering the speed does not', async () => {
    const { g } = newGraph();
    const job = new TestJob(g, { speed: 1000 }, { steps: 3, chunk: 65536, rateLimited: true });
    job.start();
    await until(() => job.stepsDone === 1);
    // 65536 bytes at 1000 B/s: a ~65 s sleep
    await delay(50);
    expect(job.stepsDone).toBe(1);
    expect(job.busy).toBe(false);
    job.setSpeed(500);
    await delay(50);
    expect(job.stepsDone).toBe(1);
    job.setSpeed(100 * 1024 * 1024);
    await within(job.waitFinished(), 2000);
    expect(job.stepsDone).toBe(3);
  });

  it('set-speed 0 lifts the limit', async () => {
    const { g } = newGraph();
    const job = new TestJob(g, { speed: 1 }, { steps: 3, chunk: 65536, rateLimited: true });
    job.start();
    await until(() => job.stepsDone === 1);
    await delay(30);
    expect(job.stepsDone).toBe(1);
    job.setSpeed(0);
    await within(job.waitFinished(), 2000);
  });

  it('a throttled job is cancelled promptly (218: quit while mirroring from a throttled source)', async () => {
    const { g, ev } = newGraph();
    const job = new TestJob(g, { speed: 1 }, { chunk: 65536, rateLimited: true });
    job.start();
    await until(() => job.stepsDone === 1);
    job.cancel(true);
    // At 1 B/s the rate limit asked for a sleep of hours; the cancel ends it.
    expect(job.sleeps.at(-1)).toBeGreaterThan(60_000);
    await within(job.waitFinished(), 10_000);
    expect(seq(ev).slice(-4)).toEqual(['aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
  });
});

describe('drain', () => {
  async function jobOnNode(cfg = {}, opts: Partial<JobOptions> = {}) {
    const { g, ev } = newGraph();
    const node = await g.addNode({ driver: 'test-mem', nodeName: 'mem', size: 1 << 20 });
    const job = new TestJob(g, opts, cfg);
    const edge = job.addNodeEdge('source', node, Perm.CONSISTENT_READ, PERM_ALL);
    return { g, ev, node, job, edge };
  }

  it('a job holding an edge pauses during a drained section and resumes after it', async () => {
    const { g, ev, node, job, edge } = await jobOnNode();
    expect(node.parents).toContain(edge);
    expect(edge.perm).toBe(Perm.CONSISTENT_READ);
    job.start();
    await until(() => job.stepsDone > 0);
    await within(g.drainedBegin(node), 2000, 'drainedBegin');
    // drainedBegin returns once the job is parked
    expect(job.status).toBe('paused');
    expect(job.busy).toBe(false);
    expect(job.userPaused).toBe(false);
    const n = job.stepsDone;
    await delay(40);
    expect(job.stepsDone).toBe(n);
    // a drain is not a user pause
    expect(errorOf(() => job.resume()).message).toBe("Can't resume a job that was not paused");
    g.drainedEnd(node);
    await until(() => job.stepsDone > n);
    expect(job.status).toBe('running');
    expect(seq(ev)).toEqual(['created', 'running', 'paused', 'running']);
  });

  it('a READY job goes to standby while drained', async () => {
    const { g, node, job } = await jobOnNode({ steps: 1, ready: true });
    job.start();
    await job.waitFor('ready');
    await within(g.drainedBegin(node), 2000, 'drainedBegin');
    expect(job.status).toBe('standby');
    g.drainedEnd(node);
    await job.waitFor('ready');
    job.complete();
    await within(job.waitFinished(), 2000);
    expect(node.parents).toHaveLength(0); // the job's edge went with it
  });

  it('a drain before start keeps the job paused at its first pause point', async () => {
    const { g, node, job } = await jobOnNode();
    await g.drainedBegin(node);
    job.start();
    await job.waitFor('paused');
    await delay(30);
    expect(job.stepsDone).toBe(0);
    g.drainedEnd(node);
    await until(() => job.stepsDone > 0);
  });

  it('nested drains: the job runs again after the last drainedEnd', async () => {
    const { g, node, job } = await jobOnNode();
    job.start();
    await until(() => job.stepsDone > 0);
    await g.drainedBegin(node);
    await g.drainedBegin(node);
    g.drainedEnd(node);
    await delay(30);
    expect(job.status).toBe('paused');
    g.drainedEnd(node);
    await job.waitFor('running');
  });
});

describe('job edges (block_job_add_bdrv)', () => {
  it('a node used by a running job cannot be deleted; after the job it can (141)', async () => {
    const { g } = newGraph();
    const node = await g.addNode({ driver: 'test-mem', nodeName: 'src', size: 1 << 20 });
    const job = new TestJob(g, {}, { ready: true, steps: 1 });
    job.addNodeEdge('source', node, Perm.CONSISTENT_READ, PERM_ALL);
    job.start();
    await job.waitFor('ready');
    await expect(g.deleteNode('src')).rejects.toMatchObject({ code: 'EBUSY' });
    expect(g.findNode('src')).toBe(node);
    // like mirror in 141: a cancel of a READY job completes it
    job.cancel(false);
    await within(job.waitFinished(), 2000);
    expect(node.parents).toHaveLength(0);
    await g.deleteNode('src');
    expect(g.findNode('src')).toBeUndefined();
  });

  it('a job edge that conflicts with another user is refused and leaves nothing behind', async () => {
    const { g } = newGraph();
    const node = await g.addNode({ driver: 'test-mem', nodeName: 'src', size: 1 << 20 });
    const be = g.backend(node, { name: 'guest', perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: PERM_ALL });
    const job = new TestJob(g);
    // the job would not share WRITE, which the guest uses
    expect(() => job.addNodeEdge('source', node, Perm.CONSISTENT_READ, Perm.CONSISTENT_READ)).toThrow(BlockError);
    expect(node.parents).toHaveLength(1);
    // a compatible edge works, and goes away with the job
    const edge = job.addNodeEdge('source', node, Perm.CONSISTENT_READ, PERM_ALL);
    expect(node.parents).toEqual([be.root, edge]);
    job.cancel();
    await within(job.waitFinished(), 2000);
    expect(node.parents).toEqual([be.root]);
    be.remove();
  });
});

describe('graph.close()', () => {
  for (const [name, cfg, opts] of [
    ['running', {}, {}],
    ['READY', { steps: 1, ready: true }, {}],
    ['throttled', { rateLimited: true, chunk: 65536 }, { speed: 1 }],
  ] as const) {
    it(`cancels a ${name} job, which reaches null; nothing hangs`, async () => {
      const g = new Graph({ drivers: testDrivers });
      const ev = record(g);
      const node = await g.addNode({ driver: 'test-mem', nodeName: 'mem', size: 1 << 20 });
      const job = new TestJob(g, opts, cfg);
      job.addNodeEdge('source', node, Perm.CONSISTENT_READ, PERM_ALL);
      job.start();
      await until(() => job.stepsDone > 0);
      if (name === 'READY') await job.waitFor('ready');
      await within(g.close(), 2000, 'graph.close()');
      expect(job.status).toBe('null');
      expect(events(ev, 'BLOCK_JOB_CANCELLED')).toHaveLength(1);
      expect(g.jobs.size).toBe(0);
      expect(g.nodes.size).toBe(0);
    });
  }

  it('cancels paused, created and pending jobs too', async () => {
    const g = new Graph();
    const paused = new TestJob(g, { id: 'p' });
    paused.start();
    paused.pause();
    await paused.waitFor('paused');
    const created = new TestJob(g, { id: 'c' });
    const pending = new TestJob(g, { id: 'd', autoFinalize: false }, { steps: 1 });
    pending.start();
    await pending.waitFor('pending');
    await within(g.close(), 2000, 'graph.close()');
    expect([paused.status, created.status, pending.status]).toEqual(['null', 'null', 'null']);
  });
});

describe('sleep and yield', () => {
  /** A job that waits in yield() for someone to enter it. */
  class YieldJob extends Job {
    wakes = 0;
    constructor(g: Graph) {
      super(g, { id: 'job0', type: 'test' });
    }
    kick(): void {
      this.enter();
    }
    protected async run(): Promise<void> {
      while (!this.isCancelled()) {
        await this.yield();
        this.wakes++;
      }
    }
  }

  it('yield() waits for enter(); a forced cancel ends it', async () => {
    const { g } = newGraph();
    const job = new YieldJob(g);
    job.start();
    await delay(30);
    expect(job.wakes).toBe(0);
    job.kick();
    await until(() => job.wakes === 1);
    await delay(30);
    expect(job.wakes).toBe(1);
    // set-speed only wakes a job sleeping on a timer, not one waiting in yield()
    job.setSpeed(1000);
    await delay(20);
    expect(job.wakes).toBe(1);
    job.cancel(true);
    await within(job.waitFinished(), 2000);
  });

  it('yield() pauses instead of waiting when a pause is pending', async () => {
    const { g, ev } = newGraph();
    const job = new YieldJob(g);
    job.start();
    await delay(10);
    job.pause();
    await job.waitFor('paused');
    job.resume();
    await job.waitFor('running');
    expect(seq(ev)).toEqual(['created', 'running', 'paused', 'running']);
    job.cancel(true);
    await within(job.waitFinished(), 2000);
  });

  it('a forced-cancelled job does not sleep any more', async () => {
    const { g } = newGraph();
    let slept = 0;
    class CancelledSleeper extends Job {
      protected async run(): Promise<void> {
        await this.sleep(10_000); // woken by the cancel
        for (let i = 0; i < 3; i++) {
          const t0 = performance.now();
          await this.sleep(10_000);
          await this.yield();
          slept += performance.now() - t0;
        }
      }
    }
    const job = new CancelledSleeper(g, { id: 'job0', type: 'test' });
    job.start();
    await delay(10);
    job.cancel(true);
    await within(job.waitFinished(), 2000);
    // Each sleep asked for 10 s: none of them may wait it out (generous for a stalled machine).
    expect(slept).toBeLessThan(2000);
  });

  it('the first pause point comes before run()', async () => {
    const { g } = newGraph();
    let ran = false;
    class Quick extends Job {
      protected async run(): Promise<void> {
        ran = true;
      }
    }
    const job = new Quick(g, { id: 'job0', type: 'test' });
    job.pause();
    job.start();
    await job.waitFor('paused');
    expect(ran).toBe(false);
    job.resume();
    await within(job.waitFinished(), 2000);
    expect(ran).toBe(true);
  });
});
