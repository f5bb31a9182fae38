/**
 * Every (state, verb) pair of QEMU's JobVerbTable: each reachable state is set up for real, the verb applied,
 * and either its effect checked or QEMU's rejection message.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Graph, Job, JOB_TRANSITIONS, JOB_VERBS, JobTxn, type GraphEvent, type JobStatus, type JobVerb } from '../src/index.js';
import { errorOf, events, gate, record, seq, TestJob, until, within } from './job-helpers.js';

/** QEMU's JobVerbTable, written out here independently of job.ts. */
const QEMU_VERBS: Record<JobVerb, JobStatus[]> = {
  cancel: ['created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending'],
  pause: ['created', 'running', 'paused', 'ready', 'standby'],
  resume: ['created', 'running', 'paused', 'ready', 'standby'],
  'set-speed': ['created', 'running', 'paused', 'ready', 'standby'],
  complete: ['ready', 'standby'],
  finalize: ['pending'],
  dismiss: ['concluded'],
  change: ['created', 'running', 'paused', 'ready', 'standby'],
};

/** QEMU's JobSTT. */
const QEMU_STT: Record<JobStatus, JobStatus[]> = {
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

const VERBS: JobVerb[] = ['cancel', 'pause', 'resume', 'set-speed', 'complete', 'finalize', 'dismiss', 'change'];
const STATES = ['created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending', 'aborting', 'concluded', 'null'] as const;
type State = (typeof STATES)[number];

interface Ctx {
  g: Graph;
  job: TestJob;
  peer?: TestJob;
  ev: GraphEvent[];
  release: () => void;
}

let current: Ctx | undefined;

afterEach(async () => {
  if (!current) return;
  current.release();
  await within(current.g.close(), 5000, 'graph.close()');
  current = undefined;
});

/** Put a job named job0 into `state` for real. */
async function setup(state: State): Promise<Ctx> {
  const g = new Graph();
  const ev = record(g);
  let release = (): void => undefined;
  let job: TestJob;
  let peer: TestJob | undefined;
  switch (state) {
    case 'created':
      job = new TestJob(g);
      break;
    case 'running':
    case 'paused':
      job = new TestJob(g);
      job.start();
      await until(() => job.stepsDone > 0, 'first step');
      if (state === 'paused') {
        job.pause();
        await until(() => job.status === 'paused', 'paused');
      }
      break;
    case 'ready':
    case 'standby':
      job = new TestJob(g, {}, { steps: 2, ready: true });
      job.start();
      await until(() => job.status === 'ready', 'ready');
      if (state === 'standby') {
        job.pause();
        await until(() => job.status === 'standby', 'standby');
      }
      break;
    case 'waiting': {
      // done, but a transaction peer still runs
      const txn = new JobTxn();
      job = new TestJob(g, { txn }, { steps: 1 });
      peer = new TestJob(g, { id: 'job1', txn });
      peer.start();
      job.start();
      await until(() => job.status === 'waiting', 'waiting');
      break;
    }
    case 'pending':
      job = new TestJob(g, { autoFinalize: false }, { steps: 1 });
      job.start();
      await until(() => job.status === 'pending', 'pending');
      break;
    case 'aborting': {
      // job0 failed; its peer is stuck in I/O, so the transaction abort waits for it with job0 in ABORTING
      const txn = new JobTxn();
      const stuck = gate();
      release = stuck.open;
      peer = new TestJob(g, { id: 'job1', txn }, { gate: stuck.promise });
      job = new TestJob(g, { txn }, { failAt: 1 });
      peer.start();
      job.start();
      await until(() => job.status === 'aborting', 'aborting');
      break;
    }
    case 'concluded':
      job = new TestJob(g, { autoDismiss: false }, { steps: 1 });
      job.start();
      await until(() => job.status === 'concluded', 'concluded');
      break;
    case 'null':
      job = new TestJob(g, {}, { steps: 1 });
      job.start();
      await until(() => job.status === 'null', 'null');
      break;
  }
  current = { g, job, peer, ev, release };
  return current;
}

function apply(job: TestJob, verb: JobVerb): void {
  switch (verb) {
    case 'cancel':
      return job.cancel(false);
    case 'pause':
      return job.pause();
    case 'resume':
      return job.resume();
    case 'set-speed':
      return job.setSpeed(1 << 20);
    case 'complete':
      return job.complete();
    case 'finalize':
      return job.finalize();
    case 'dismiss':
      return job.dismiss();
    case 'change':
      // The verb check throws synchronously; what the job does with the change is its own business.
      void job.change({ copyMode: 'write-blocking' }).catch(() => undefined);
      return;
  }
}

describe('job tables', () => {
  it("JOB_VERBS is QEMU's JobVerbTable and JOB_TRANSITIONS is QEMU's JobSTT", () => {
    for (const v of VERBS) expect([...JOB_VERBS[v]].sort()).toEqual([...QEMU_VERBS[v]].sort());
    for (const s of Object.keys(QEMU_STT) as JobStatus[]) expect([...JOB_TRANSITIONS[s]].sort()).toEqual([...QEMU_STT[s]].sort());
  });
});

describe('verbs rejected by the verb table', () => {
  for (const state of STATES) {
    for (const verb of VERBS) {
      if (QEMU_VERBS[verb].includes(state as JobStatus)) continue;
      it(`${verb} in ${state}`, async () => {
        const { job, ev } = await setup(state);
        const before = ev.length;
        const e = errorOf(() => apply(job, verb));
        if (verb === 'resume') {
          // QEMU checks "was it paused" before the verb table
          expect(e.message).toBe("Can't resume a job that was not paused");
        } else {
          expect(e.message).toBe(`Job 'job0' in state '${state}' cannot accept command verb '${verb}'`);
          expect(e.code).toBe('EPERM');
        }
        // nothing happened
        await new Promise((r) => setTimeout(r, 20));
        expect(job.status).toBe(state);
        expect(ev.slice(before).filter((x) => x.data.id === 'job0' || x.data.device === 'job0')).toEqual([]);
      });
    }
  }

  it('resume of a user-paused job in a state that takes no resume: the verb error', async () => {
    // an error with policy "stop" user-pauses the job, but run() returns before another pause point
    class StopThenReturn extends Job {
      protected async run(): Promise<void> {
        this.errorAction('stop', false, 'EIO');
      }
    }
    const g = new Graph();
    const job = new StopThenReturn(g, { id: 'job0', type: 'test', autoFinalize: false });
    current = { g, job: job as unknown as TestJob, ev: [], release: () => undefined };
    job.start();
    await until(() => job.status === 'pending', 'pending');
    expect(job.userPaused).toBe(true);
    expect(errorOf(() => job.resume()).message).toBe("Job 'job0' in state 'pending' cannot accept command verb 'resume'");
  });
});

describe('verbs accepted by the verb table', () => {
  // cancel -----------------------------------------------------------------------------------------------------
  it('cancel in created: aborting → concluded → null at once, no BLOCK_JOB_* event (never started)', async () => {
    const { job, ev } = await setup('created');
    job.cancel(false);
    await until(() => job.status === 'null');
    expect(seq(ev)).toEqual(['created', 'aborting', 'concluded', 'null']);
    expect(job.log).toEqual(['abort', 'clean']);
    expect(() => job.start()).toThrow();
  });

  for (const state of ['running', 'paused'] as const) {
    it(`cancel in ${state}: forced (before READY), BLOCK_JOB_CANCELLED`, async () => {
      const { job, ev } = await setup(state);
      const before = ev.length;
      job.cancel(false);
      await until(() => job.status === 'null');
      const tail = seq(ev.slice(before));
      expect(tail).toEqual(state === 'paused' ? ['running', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null'] : ['aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
      expect(job.isCancelled()).toBe(true);
      expect(job.error?.code).toBe('ECANCELED');
      expect(job.log).toEqual(['abort', 'clean']);
    });
  }

  for (const state of ['ready', 'standby'] as const) {
    it(`soft cancel in ${state}: stays soft, the job ends successfully without pivot (BLOCK_JOB_COMPLETED)`, async () => {
      const { job, ev } = await setup(state);
      const before = ev.length;
      job.cancel(false);
      await until(() => job.status === 'null');
      const tail = seq(ev.slice(before));
      expect(tail).toEqual([...(state === 'standby' ? ['ready'] : []), 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
      expect(events(ev, 'BLOCK_JOB_COMPLETED')[0]).not.toHaveProperty('error');
      expect(job.isCancelled()).toBe(false);
      expect(job.cancelRequested()).toBe(true);
      expect(job.log).toEqual(['prepare', 'commit', 'clean']);
      expect(job.pivoted).toBe(false);
    });
  }

  it('cancel in waiting: forced, the whole transaction is cancelled', async () => {
    const { job, peer, ev } = await setup('waiting');
    job.cancel(false);
    await until(() => job.status === 'null' && peer!.status === 'null');
    expect(seq(ev, 'job0')).toEqual(['created', 'running', 'waiting', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect(seq(ev, 'job1')).toEqual(['created', 'running', 'aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect(job.log).toEqual(['abort', 'clean']);
    expect(peer!.log).toEqual(['abort', 'clean']);
  });

  it('cancel in pending: aborting, BLOCK_JOB_CANCELLED, prepare never runs', async () => {
    const { job, ev } = await setup('pending');
    const before = ev.length;
    job.cancel(false);
    await until(() => job.status === 'null');
    expect(seq(ev.slice(before))).toEqual(['aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']);
    expect(job.log).toEqual(['abort', 'clean']);
  });

  // pause ------------------------------------------------------------------------------------------------------
  it('pause in created: the job parks at its first pause point when started', async () => {
    const { job, ev } = await setup('created');
    job.pause();
    expect(job.status).toBe('created');
    expect(job.userPaused).toBe(true);
    job.start();
    await until(() => job.status === 'paused');
    await new Promise((r) => setTimeout(r, 40));
    expect(job.stepsDone).toBe(0);
    expect(seq(ev)).toEqual(['created', 'running', 'paused']);
    job.resume();
    await until(() => job.stepsDone > 0);
    expect(job.status).toBe('running');
  });

  it('pause in running → paused; progress stops', async () => {
    const { job, ev } = await setup('running');
    job.pause();
    await until(() => job.status === 'paused');
    const n = job.stepsDone;
    await new Promise((r) => setTimeout(r, 50));
    expect(job.stepsDone).toBe(n);
    expect(job.query()).toMatchObject({ status: 'paused', paused: true, busy: false });
    expect(seq(ev).slice(-1)).toEqual(['paused']);
  });

  it('pause in ready → standby', async () => {
    const { job, ev } = await setup('ready');
    job.pause();
    await until(() => job.status === 'standby');
    expect(job.isReady()).toBe(true);
    expect(job.query()).toMatchObject({ status: 'standby', ready: true, paused: true });
    expect(seq(ev).slice(-1)).toEqual(['standby']);
  });

  for (const state of ['paused', 'standby'] as const) {
    it(`pause in ${state}: "Job is already paused"`, async () => {
      const { job } = await setup(state);
      expect(errorOf(() => job.pause()).message).toBe('Job is already paused');
      expect(job.status).toBe(state);
    });
  }

  // resume -----------------------------------------------------------------------------------------------------
  for (const state of ['created', 'running', 'ready'] as const) {
    it(`resume in ${state} (not paused): "Can't resume a job that was not paused"`, async () => {
      const { job } = await setup(state);
      expect(errorOf(() => job.resume()).message).toBe("Can't resume a job that was not paused");
      expect(job.status).toBe(state);
    });
  }

  it('resume in paused → running; progress goes on', async () => {
    const { job, ev } = await setup('paused');
    const n = job.stepsDone;
    job.resume();
    await until(() => job.stepsDone > n);
    expect(job.status).toBe('running');
    expect(job.userPaused).toBe(false);
    expect(seq(ev).slice(-2)).toEqual(['paused', 'running']);
  });

  it('resume in standby → ready', async () => {
    const { job, ev } = await setup('standby');
    job.resume();
    await until(() => job.status === 'ready');
    expect(seq(ev).slice(-2)).toEqual(['standby', 'ready']);
  });

  // set-speed --------------------------------------------------------------------------------------------------
  for (const state of QEMU_VERBS['set-speed']) {
    it(`set-speed in ${state}`, async () => {
      const { job } = await setup(state as State);
      job.setSpeed(1 << 20);
      expect(job.speed).toBe(1 << 20);
      expect(job.query().speed).toBe(1 << 20);
      expect(job.speeds).toEqual([1 << 20]);
      expect(job.status).toBe(state);
      expect(errorOf(() => job.setSpeed(-1)).message).toBe("Parameter 'speed' expects a non-negative value");
      expect(job.speed).toBe(1 << 20);
    });
  }

  // complete ---------------------------------------------------------------------------------------------------
  it('complete in ready: the job finishes with the pivot (BLOCK_JOB_COMPLETED)', async () => {
    const { job, ev } = await setup('ready');
    const before = ev.length;
    job.complete();
    await until(() => job.status === 'null');
    expect(seq(ev.slice(before))).toEqual(['waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(job.pivoted).toBe(true);
    expect(job.log).toEqual(['prepare', 'commit', 'clean']);
  });

  it('complete in standby: accepted, takes effect when resumed', async () => {
    const { job, ev } = await setup('standby');
    job.complete();
    expect(job.shouldComplete).toBe(true);
    await new Promise((r) => setTimeout(r, 40));
    expect(job.status).toBe('standby');
    job.resume();
    await until(() => job.status === 'null');
    expect(seq(ev).slice(-6)).toEqual(['ready', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(job.pivoted).toBe(true);
  });

  // finalize / dismiss -----------------------------------------------------------------------------------------
  it('finalize in pending → concluded → null', async () => {
    const { job, ev } = await setup('pending');
    const before = ev.length;
    job.finalize();
    await until(() => job.status === 'null');
    expect(seq(ev.slice(before))).toEqual(['BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    expect(job.log).toEqual(['prepare', 'commit', 'clean']);
  });

  it('dismiss in concluded → null', async () => {
    const { g, job, ev } = await setup('concluded');
    expect(g.jobs.get('job0')).toBe(job);
    job.dismiss();
    expect(job.status).toBe('null');
    expect(g.jobs.has('job0')).toBe(false);
    expect(seq(ev).slice(-2)).toEqual(['concluded', 'null']);
  });

  // change -----------------------------------------------------------------------------------------------------
  for (const state of QEMU_VERBS.change) {
    it(`change in ${state}`, async () => {
      const { job } = await setup(state as State);
      job.change({ copyMode: 'write-blocking' });
      expect(job.changes).toEqual([{ copyMode: 'write-blocking' }]);
      expect(job.status).toBe(state);
    });
  }
});
