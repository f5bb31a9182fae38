/**
 * The clock a scenario filter waits on. Real time by default; a `ManualClock` makes a test's load deterministic
 * the way qtest's virtual clock does for QEMU's iotests (`clock_step`): timers fire only when the test steps the
 * clock, so how many throttled requests have completed at a given point no longer depends on how loaded the
 * machine is. Platform-neutral.
 */

/** What a throttling filter needs of a clock: milliseconds, and one-shot timers on the same time line. */
export interface ScenarioClock {
  now(): number;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(timer: unknown): void;
}

/** The performance clock and the event loop's timers. */
export const realTimeClock: ScenarioClock = {
  now: () => (typeof performance !== 'undefined' ? performance.now() : Date.now()),
  setTimer: (fn, ms) => setTimeout(fn, ms),
  clearTimer: (timer) => clearTimeout(timer as ReturnType<typeof setTimeout>),
};

interface ManualTimer {
  readonly at: number;
  readonly seq: number;
  readonly fn: () => void;
}

/** A clock that only moves when `step()` is called (qtest's `clock_step`). It starts at 0. */
export class ManualClock implements ScenarioClock {
  private time = 0;
  private seq = 0;
  private readonly timers = new Set<ManualTimer>();

  now(): number {
    return this.time;
  }

  setTimer(fn: () => void, ms: number): ManualTimer {
    const timer = { at: this.time + Math.max(0, ms), seq: this.seq++, fn };
    this.timers.add(timer);
    return timer;
  }

  clearTimer(timer: unknown): void {
    this.timers.delete(timer as ManualTimer);
  }

  /** Timers set and not fired or cleared yet. */
  get pendingTimers(): number {
    return this.timers.size;
  }

  /**
   * Move the clock `ms` forward, firing every timer that falls due on the way, in due order (ties in the order
   * they were set), each with the clock at its due time. A timer set by one that fires runs in the same step if
   * it falls due within it.
   */
  step(ms: number): void {
    if (!(ms >= 0)) throw new RangeError(`clock step must be a non-negative number of milliseconds, not ${ms}`);
    const end = this.time + ms;
    for (;;) {
      let next: ManualTimer | undefined;
      for (const t of this.timers) if (t.at <= end && (!next || t.at < next.at || (t.at === next.at && t.seq < next.seq))) next = t;
      if (!next) break;
      this.timers.delete(next);
      this.time = next.at;
      next.fn();
    }
    this.time = end;
  }

  /** Step to the last pending timer, firing it and every one before it (and any they set on the way). */
  runAllTimers(): void {
    while (this.timers.size > 0) {
      let last = this.time;
      for (const t of this.timers) last = Math.max(last, t.at);
      this.step(last - this.time);
    }
  }
}
