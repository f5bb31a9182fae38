/**
 * QEMU's CoMutex for async functions: the qcow2 metadata lock (s->lock). Handing the lock to the next waiter
 * directly keeps it fair; `tryLock()` lets an uncontended caller take it without a microtask.
 */
export class AsyncMutex {
  private locked = false;
  private readonly waiters: (() => void)[] = [];

  get isLocked(): boolean {
    return this.locked;
  }

  tryLock(): boolean {
    if (this.locked) return false;
    this.locked = true;
    return true;
  }

  lock(): Promise<void> {
    if (!this.locked) {
      this.locked = true;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  unlock(): void {
    const next = this.waiters.shift();
    // The lock passes straight to the next waiter: nobody can slip in between.
    if (next) next();
    else this.locked = false;
  }
}
