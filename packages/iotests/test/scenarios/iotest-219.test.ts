/**
 * Port of qemu-iotests 219 "Check using the job-* QMP commands with block jobs" (tests/qemu-iotests/219,
 * 219.out), the mirror part.
 *
 * Ported: test_job_lifecycle() for a mirror job (4 MiB image fully written, speed 256 KiB/s, buf-size 64 KiB,
 * so every iteration copies 64 KiB and takes 250 ms): the exact JOB_STATUS_CHANGE sequence of 219.out; in
 * RUNNING pause/resume work (offset frozen while paused: 65536, 131072, ... as in 219.out) and
 * complete/finalize/dismiss fail with "Job 'job0' in state 'running' cannot accept command verb '...'"; in
 * READY pause/resume work (standby/ready), finalize/dismiss fail, complete moves on to waiting/pending; with
 * auto-finalize=false pause/complete/dismiss fail in PENDING and finalize concludes; with auto-dismiss=false
 * pause/complete/finalize fail in CONCLUDED and dismiss ends the job. QEMU runs the mirror with the default
 * auto-finalize/auto-dismiss only and runs all four combinations with a backup job; blockgraph has no backup
 * job, so the four combinations run with the mirror job (the expected sequences are 219.out's mirror sequence
 * with the PENDING/CONCLUDED stops of its backup sequences).
 *
 * block-job-pause/job-pause and block-job-resume/job-resume are the same calls here (Job.pause()/resume()); the
 * four "Testing X/Y" rounds are kept so that the progress values line up with 219.out.
 *
 * Not ported: the drive-backup runs (no backup job). query-jobs is job.query() (`offset`/`len` are QEMU's
 * current-progress/total-progress).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { startMirror, type MirrorJob } from '@blockgraph/job-mirror';
import { createRaw, device, EventLog, MiB, newGraph, scratch, until, writePattern, type Scratch } from './helpers.js';

const imgSize = 4 * MiB;

function verbError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as Error).message;
  }
  return 'no error';
}

const rejected = (state: string, verb: string): string => `Job 'job0' in state '${state}' cannot accept command verb '${verb}'`;

describe('iotest 219: job verbs across the lifecycle of a mirror job', () => {
  let s: Scratch;
  let g: Graph;
  let events: EventLog;

  beforeEach(async () => {
    s = scratch('219');
    createRaw(s.path('disk.img'), imgSize);
    writePattern(s.path('disk.img'), 0, imgSize, 0x5a); // qemu-io -c 'write 0 4M'
    createRaw(s.path('copy.img'), imgSize);
    g = newGraph();
    events = new EventLog(g);
    await g.addNode({ driver: 'raw', nodeName: 'drive0-node', file: { driver: 'file', filename: s.path('disk.img') } });
    await g.addNode({ driver: 'raw', nodeName: 'copy', file: { driver: 'file', filename: s.path('copy.img') } });
    device(g, 'drive0-node', 'drive0');
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  /** pause_wait(): until query-jobs shows paused or standby. */
  const pauseWait = (job: MirrorJob): Promise<void> => until(() => ['paused', 'standby'].includes(job.status), 'the job to pause', 3000);

  /** test_pause_resume(): the four pause/resume combinations; returns the progress seen at each pause. */
  async function testPauseResume(job: MirrorJob, paused: string, resumed: string): Promise<number[]> {
    const seen: number[] = [];
    for (const combo of ['block-job-pause/block-job-resume', 'block-job-pause/job-resume', 'job-pause/block-job-resume', 'job-pause/job-resume']) {
      job.pause();
      await pauseWait(job);
      expect((await events.wait('JOB_STATUS_CHANGE', { id: 'job0' })).data.status, combo).toBe(paused);
      const q = job.query();
      expect(q.status).toBe(paused);
      const oldProgress = q.offset;
      const totalProgress = q.len;
      seen.push(oldProgress);
      job.resume();
      expect((await events.wait('JOB_STATUS_CHANGE', { id: 'job0' })).data.status, combo).toBe(resumed);
      if (oldProgress < totalProgress) {
        // Wait for the job to advance: by one iteration of 64 KiB.
        await until(() => job.query().offset !== oldProgress, 'progress', 3000, 1);
        expect(job.query().offset).toBe(oldProgress + 65536);
      } else {
        // Already at the end: the job cannot advance.
        expect(job.query().offset).toBe(oldProgress);
      }
      expect(job.query().status).toBe(resumed);
    }
    return seen;
  }

  for (const autoFinalize of [true, false]) {
    for (const autoDismiss of [true, false]) {
      it(`mirror (auto-finalize: ${autoFinalize}; auto-dismiss: ${autoDismiss})`, async () => {
        const job = await startMirror(g, {
          jobId: 'job0',
          device: 'drive0-node',
          target: 'copy',
          sync: 'full',
          speed: 262144,
          bufSize: 65536,
          autoFinalize,
          autoDismiss,
        });
        expect(job.query()).toMatchObject({ id: 'job0', status: 'running', type: 'mirror' });

        // undefined -> created -> running
        expect((await events.wait('JOB_STATUS_CHANGE', { id: 'job0' })).data.status).toBe('created');
        expect((await events.wait('JOB_STATUS_CHANGE', { id: 'job0' })).data.status).toBe('running');

        // Wait for total-progress to stabilize
        await until(() => job.query().len >= imgSize, 'total progress');
        expect(job.query().len).toBe(imgSize);

        // RUNNING state: pause/resume work, complete/finalize/dismiss fail.
        expect(await testPauseResume(job, 'paused', 'running')).toEqual([65536, 131072, 196608, 262144]);
        expect(job.query().offset).toBe(327680);
        for (let i = 0; i < 2; i++) {
          // job-* and then block-job-* commands
          expect(verbError(() => job.complete())).toBe(rejected('running', 'complete'));
          expect(verbError(() => job.finalize())).toBe(rejected('running', 'finalize'));
          expect(verbError(() => job.dismiss())).toBe(rejected('running', 'dismiss'));
        }

        // Let the job transition to READY
        job.setSpeed(0);
        await events.wait('BLOCK_JOB_READY', { device: 'job0' });
        expect((await events.wait('JOB_STATUS_CHANGE', { id: 'job0' })).data.status).toBe('ready');
        expect(job.query()).toMatchObject({ offset: imgSize, len: imgSize, status: 'ready', type: 'mirror' });

        // READY state: pause/resume/complete work, finalize/dismiss fail.
        expect(await testPauseResume(job, 'standby', 'ready')).toEqual([imgSize, imgSize, imgSize, imgSize]);
        for (let i = 0; i < 2; i++) {
          expect(verbError(() => job.finalize())).toBe(rejected('ready', 'finalize'));
          expect(verbError(() => job.dismiss())).toBe(rejected('ready', 'dismiss'));
        }

        // Transition to WAITING
        job.complete();

        // Move to WAITING and PENDING state
        expect((await events.wait('JOB_STATUS_CHANGE', { id: 'job0' })).data.status).toBe('waiting');
        expect((await events.wait('JOB_STATUS_CHANGE', { id: 'job0' })).data.status).toBe('pending');

        if (!autoFinalize) {
          // PENDING state: finalize works, pause/complete/dismiss fail.
          expect(job.query()).toMatchObject({ offset: imgSize, len: imgSize, status: 'pending' });
          expect(events.named('BLOCK_JOB_PENDING').map((e) => e.data)).toEqual([{ type: 'mirror', id: 'job0' }]);
          for (let i = 0; i < 2; i++) {
            expect(verbError(() => job.pause())).toBe(rejected('pending', 'pause'));
            expect(verbError(() => job.complete())).toBe(rejected('pending', 'complete'));
            expect(verbError(() => job.dismiss())).toBe(rejected('pending', 'dismiss'));
          }
          // Transition to CONCLUDED
          job.finalize();
        } else {
          expect(events.named('BLOCK_JOB_PENDING')).toEqual([]);
        }

        // Move to CONCLUDED state
        expect((await events.wait('JOB_STATUS_CHANGE', { id: 'job0' })).data.status).toBe('concluded');

        if (!autoDismiss) {
          // CONCLUDED state: dismiss works, pause/complete/finalize fail.
          expect(job.query()).toMatchObject({ offset: imgSize, len: imgSize, status: 'concluded' });
          for (let i = 0; i < 2; i++) {
            expect(verbError(() => job.pause())).toBe(rejected('concluded', 'pause'));
            expect(verbError(() => job.complete())).toBe(rejected('concluded', 'complete'));
            expect(verbError(() => job.finalize())).toBe(rejected('concluded', 'finalize'));
          }
          // Transition to NULL
          job.dismiss();
        }

        // Move to NULL state
        expect((await events.wait('JOB_STATUS_CHANGE', { id: 'job0' })).data.status).toBe('null');
        expect([...g.jobs.values()]).toEqual([]);

        // The whole sequence, as 219.out.
        expect(events.statuses('job0')).toEqual([
          'created', 'running',
          'paused', 'running', 'paused', 'running', 'paused', 'running', 'paused', 'running',
          'ready',
          'standby', 'ready', 'standby', 'ready', 'standby', 'ready', 'standby', 'ready',
          'waiting', 'pending', 'concluded', 'null',
        ]);
        expect(events.named('BLOCK_JOB_COMPLETED').map((e) => e.data)).toEqual([
          { type: 'mirror', device: 'job0', len: imgSize, offset: imgSize, speed: 0 },
        ]);
      });
    }
  }
});
