/** IoTickets: freed clusters stay quarantined until every data request older than the free has finished. */
import { describe, expect, it } from 'vitest';
import { IoTickets } from '../../src/driver/inflight.js';

describe('IoTickets', () => {
  it('releases a held cluster only when every ticket taken before the hold is back', () => {
    const t = new IoTickets();
    const a = t.enter();
    const b = t.enter();
    t.hold(7);
    const c = t.enter(); // after the hold: does not keep cluster 7
    expect(t.quarantined.has(7)).toBe(true);
    t.leave(b);
    expect(t.release(0, 0, 0)).toBe(-1);
    t.leave(a);
    expect(t.release(0, 0, 0)).toBe(7);
    expect(t.quarantined.has(7)).toBe(false);
    t.hold(9);
    expect(t.release(0, 0, 0)).toBe(-1);
    t.leave(c);
    expect(t.release(0, 0, 0)).toBe(9);
  });

  it('holds nothing when no request is in flight, and ignores tickets returned twice or never taken', () => {
    const t = new IoTickets();
    t.hold(3);
    expect(t.quarantined.size).toBe(0);
    const a = t.enter();
    t.leave(a);
    t.leave(a);
    t.leave(12345);
    t.hold(4);
    expect(t.quarantined.size).toBe(0);
  });

  it('holds a cluster freed inside a pinned range (and only there) until the pin ends', () => {
    const t = new IoTickets();
    const pin = t.pin(10, 14);
    t.hold(12);
    t.hold(20);
    expect([...t.quarantined.keys()]).toEqual([12]);
    expect(t.release(0, 0, 0)).toBe(-1);
    t.unpin(pin);
    expect(t.release(0, 0, 0)).toBe(12);
    expect(t.quarantined.size).toBe(0);
    // A pin and a ticket on the same cluster: free only when both are over.
    const p2 = t.pin(5, 6);
    const ticket = t.enter();
    t.hold(5);
    t.unpin(p2);
    expect(t.release(0, 0, 0)).toBe(-1);
    t.leave(ticket);
    expect(t.release(0, 0, 0)).toBe(5);
  });

  it('keeps track of thousands of tickets out at once, returned in any order', () => {
    const t = new IoTickets();
    const first = t.enter();
    const out: number[] = [];
    for (let i = 0; i < 5000; i++) out.push(t.enter());
    t.hold(1);
    const late = t.enter();
    // Return everything but the first, in a scrambled order: the oldest ticket still blocks the release.
    for (let i = 0; i < out.length; i++) t.leave(out[(i * 2654435761) % out.length]!);
    for (const x of out) t.leave(x);
    expect(t.release(0, 0, 0)).toBe(-1);
    t.leave(first);
    expect(t.release(0, 0, 0)).toBe(1);
    t.hold(2);
    t.leave(late);
    expect(t.release(0, 0, 0)).toBe(2);
  });

  it('holds a cluster freed by an L2 update until a write-back pass started after the free is stable', () => {
    const t = new IoTickets();
    t.holdUntilL2Stable(5, 3);
    // Pass 3 has not completed: held, whatever the file has flushed.
    expect(t.release(2, 10, 10)).toBe(-1);
    expect(t.quarantined.has(5)).toBe(true);
    // Pass 3 is written (the file's write generation is 12 now), but no flush has covered it yet.
    expect(t.release(3, 12, 11)).toBe(-1);
    // A flush that started later covered generation 12 (further writes since do not matter).
    expect(t.release(3, 14, 12)).toBe(5);
    expect(t.quarantined.size).toBe(0);
  });

  it('keeps a cluster held for both reasons until both are over', () => {
    const t = new IoTickets();
    const a = t.enter();
    t.hold(8);
    t.holdUntilL2Stable(8, 1);
    expect(t.release(1, 4, 4)).toBe(-1);
    expect(t.quarantined.has(8)).toBe(true);
    t.leave(a);
    expect(t.release(1, 4, 4)).toBe(8);
    expect(t.quarantined.has(8)).toBe(false);
  });
});
