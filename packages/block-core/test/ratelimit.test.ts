import { describe, expect, it } from 'vitest';
import { RateLimit } from '../src/index.js';

function clocked(): { rl: RateLimit; clock: { t: number } } {
  const clock = { t: 1000 };
  return { rl: new RateLimit(() => clock.t), clock };
}

describe('RateLimit (QEMU ratelimit.h) with an injected clock', () => {
  it('never delays when the speed is 0 (unlimited)', () => {
    const { rl } = clocked();
    expect(rl.calculateDelay(1e12)).toBe(0);
    rl.setSpeed(0, 100);
    expect(rl.calculateDelay(1e12)).toBe(0);
  });

  it('lets a slice quota through, then delays to the end of the slice', () => {
    const { rl, clock } = clocked();
    rl.setSpeed(1_000_000, 100); // quota 100 000 bytes per 100 ms slice
    expect(rl.calculateDelay(40_000)).toBe(0);
    clock.t += 10;
    expect(rl.calculateDelay(59_999)).toBe(0); // 99 999 < quota
    clock.t += 10;
    // reaching the quota: wait for the rest of the slice (started at t=1000, ends at 1100; now 1020)
    expect(rl.calculateDelay(1)).toBe(80);
    // asking again without sending more: the same slice end
    clock.t += 30;
    expect(rl.calculateDelay(0)).toBe(50);
    // once the slice is over a new one starts with a fresh quota
    clock.t = 1101;
    expect(rl.calculateDelay(0)).toBe(0);
    expect(rl.calculateDelay(99_999)).toBe(0);
  });

  it('extends the slice in proportion to the excess', () => {
    const { rl, clock } = clocked();
    rl.setSpeed(1_000_000, 100);
    // 2.5 quotas at once: the slice stretches to 250 ms
    expect(rl.calculateDelay(250_000)).toBe(250);
    clock.t += 100;
    expect(rl.calculateDelay(0)).toBe(150);
    // more data within the extended slice extends it further
    expect(rl.calculateDelay(50_000)).toBe(200); // 3 quotas: end at 1300, now 1100
    clock.t = 1301;
    expect(rl.calculateDelay(0)).toBe(0);
  });

  it('has a quota of at least one byte per slice', () => {
    const { rl } = clocked();
    rl.setSpeed(1, 100); // 0.1 byte per slice -> 1
    expect(rl.calculateDelay(1)).toBe(100);
  });

  it('keeps the long-run rate at the speed', () => {
    const { rl, clock } = clocked();
    const speed = 256 * 1024;
    rl.setSpeed(speed, 100);
    const chunk = 64 * 1024;
    let sent = 0;
    const start = clock.t;
    // a job loop: send a chunk, sleep for the delay (the clock advances exactly that much), repeat
    while (sent < 4 * 1024 * 1024) {
      const d = rl.calculateDelay(chunk);
      sent += chunk;
      clock.t += d;
      // ratelimit_sleep: re-check until no delay is left
      for (let d2 = rl.calculateDelay(0); d2 > 0; d2 = rl.calculateDelay(0)) clock.t += d2;
      clock.t += 0.001; // a little CPU time per iteration
    }
    const seconds = (clock.t - start) / 1000;
    // 4 MiB at 256 KiB/s = 16 s; the last slice's quota may still be unused
    expect(seconds).toBeGreaterThan(15);
    expect(seconds).toBeLessThan(16.5);
  });

  it('a higher speed takes effect in the current slice', () => {
    const { rl } = clocked();
    rl.setSpeed(100_000, 100); // quota 10 000
    expect(rl.calculateDelay(10_000)).toBe(100);
    rl.setSpeed(1_000_000, 100); // quota 100 000: 10 000 dispatched is well within
    expect(rl.calculateDelay(0)).toBe(0);
    rl.setSpeed(0, 100);
    expect(rl.calculateDelay(1e9)).toBe(0);
  });

  it('rounds the slice quota down to whole bytes', () => {
    const { rl } = clocked();
    rl.setSpeed(1005, 100); // 100.5 bytes per slice -> 100
    expect(rl.calculateDelay(100)).toBe(100);
  });

  it('uses the slice length it is given', () => {
    const { rl } = clocked();
    rl.setSpeed(1000, 1000); // quota 1000 bytes per 1 s slice
    expect(rl.calculateDelay(999)).toBe(0);
    expect(rl.calculateDelay(1)).toBe(1000);
  });
});
