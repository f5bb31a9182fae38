import { describe, expect, it } from 'vitest';
import { TrackedList, TrackedRequest } from '../src/tracked.js';
import type { BlockNode } from '../src/node.js';

const node = {} as BlockNode;
const req = (offset: number) => new TrackedRequest(node, offset, 512, 'read');

describe('TrackedList', () => {
  it('keeps requests oldest first and unlinks from anywhere', () => {
    const list = new TrackedList();
    const [a, b, c, d] = [req(0), req(1), req(2), req(3)];
    for (const r of [a, b, c, d]) list.add(r);
    expect(list.size).toBe(4);
    expect([...list]).toEqual([a, b, c, d]);
    list.delete(b);
    expect([...list]).toEqual([a, c, d]);
    list.delete(a);
    list.delete(d);
    expect([...list]).toEqual([c]);
    expect(list.size).toBe(1);
    list.add(a);
    expect([...list]).toEqual([c, a]);
    list.delete(c);
    list.delete(a);
    expect([...list]).toEqual([]);
    expect(list.size).toBe(0);
  });

  it('ignores a request that is not in it, and lets the current request go while iterating', () => {
    const list = new TrackedList();
    const [a, b, c] = [req(0), req(1), req(2)];
    list.add(a);
    list.delete(b);
    list.delete(a);
    list.delete(a);
    expect(list.size).toBe(0);
    for (const r of [a, b, c]) list.add(r);
    const seen: TrackedRequest[] = [];
    for (const r of list) {
      seen.push(r);
      list.delete(r);
    }
    expect(seen).toEqual([a, b, c]);
    expect(list.size).toBe(0);
  });
});
