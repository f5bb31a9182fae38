/**
 * A queue of waiting async functions, the equivalent of QEMU's CoQueue: `wait()` parks the caller until
 * somebody calls `wakeAll()` / `wakeOne()`. Nothing runs between two awaits in JS, so no lock is needed.
 */
export class WaitQueue {
  private waiters: (() => void)[] = [];

  wait(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  wakeAll(): void {
    if (this.waiters.length === 0) return;
    const w = this.waiters;
    this.waiters = [];
    for (const resolve of w) resolve();
  }

  wakeOne(): boolean {
    const resolve = this.waiters.shift();
    if (!resolve) return false;
    resolve();
    return true;
  }

  get length(): number {
    return this.waiters.length;
  }
}

/**
 * AIO_WAIT_WHILE: callers wait until a condition turns false; anything that may change such a condition
 * (a request finishing, a job changing state) calls `kick()`. Cheap when nobody waits.
 */
export class ConditionWaiter {
  private pending: { cond: () => boolean; resolve: () => void }[] = [];

  async waitWhile(cond: () => boolean): Promise<void> {
    if (!cond()) return;
    await new Promise<void>((resolve) => this.pending.push({ cond, resolve }));
  }

  kick(): void {
    if (this.pending.length === 0) return;
    const still: typeof this.pending = [];
    for (const p of this.pending) {
      if (p.cond()) still.push(p);
      else p.resolve();
    }
    this.pending = still;
  }

  get waiting(): boolean {
    return this.pending.length > 0;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
