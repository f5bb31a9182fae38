/** run_block_job(): follow a job until it is READY, complete it, and wait for its end. */
import type { Job } from '@blockgraph/block-core';

/** `onProgress` gets the job's progress in percent every 100 ms while it runs. */
export async function runBlockJob(job: Job, onProgress: (percent: number) => void): Promise<void> {
  const tick = setInterval(() => {
    const { current, total } = job.progress;
    onProgress(total ? (current / total) * 100 : 0);
  }, 100);
  try {
    await job.waitFor('ready');
    if (job.status === 'ready') job.complete();
    await job.waitFinished();
  } finally {
    clearInterval(tick);
  }
}
