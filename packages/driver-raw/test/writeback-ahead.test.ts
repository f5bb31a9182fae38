import { describe, expect, it } from 'vitest';
import { WritebackAhead } from '../src/node/writeback-ahead.js';

/** A start function that records its calls and settles when told to. */
function recorder() {
  const calls: [number, number][] = [];
  const settle: ((e?: unknown) => void)[] = [];
  const start = (offset: number, length: number) => {
    calls.push([offset, length]);
    return new Promise<void>((res, rej) => settle.push((e) => (e ? rej(e) : res())));
  };
  return { calls, settle, start };
}

const flushMicrotasks = () => new Promise((r) => setImmediate(r));

describe('WritebackAhead', () => {
  it('kicks once the threshold has been written, over the span written since the last kick', () => {
    const r = recorder();
    const w = new WritebackAhead(100, r.start);
    w.written(1000, 40);
    w.written(500, 40);
    expect(r.calls).toEqual([]);
    w.written(2000, 20);
    expect(r.calls).toEqual([[500, 1520]]);
  });

  it('keeps one kick in flight; what is written meanwhile goes into the next one', async () => {
    const r = recorder();
    const w = new WritebackAhead(100, r.start);
    w.written(0, 100);
    w.written(100, 100);
    w.written(200, 100);
    expect(r.calls).toEqual([[0, 100]]);
    r.settle[0]!();
    await flushMicrotasks();
    w.written(300, 1);
    expect(r.calls).toEqual([
      [0, 100],
      [100, 201],
    ]);
  });

  it('settled() waits for the kick in flight and never rejects', async () => {
    const r = recorder();
    const w = new WritebackAhead(10, r.start);
    await expect(w.settled()).resolves.toBeUndefined();
    w.written(0, 10);
    let done = false;
    const s = w.settled().then(() => (done = true));
    await flushMicrotasks();
    expect(done).toBe(false);
    r.settle[0]!(Object.assign(new Error('I/O error'), { code: 'EIO' }));
    await s;
    expect(done).toBe(true);
    // An I/O error is left to the next flush to report: kicks go on.
    expect(w.active).toBe(true);
    w.written(10, 10);
    expect(r.calls).toHaveLength(2);
  });

  it('stops when the kernel or the descriptor cannot do it', async () => {
    for (const code of ['ENOSYS', 'EINVAL', 'ESPIPE', 'EBADF']) {
      const r = recorder();
      const w = new WritebackAhead(10, r.start);
      w.written(0, 10);
      r.settle[0]!(Object.assign(new Error(code), { code }));
      await w.settled();
      await flushMicrotasks();
      expect(w.active).toBe(false);
      w.written(10, 100);
      expect(r.calls).toHaveLength(1);
    }
  });

  it('ignores empty writes', () => {
    const r = recorder();
    const w = new WritebackAhead(1, r.start);
    w.written(0, 0);
    expect(r.calls).toEqual([]);
  });
});
