import { describe, expect, it } from 'vitest';
import { Graph } from '../src/index.js';
import { testDrivers } from './drivers.js';

describe('smoke', () => {
  it('reads back what was written through a filter at alignment 512', async () => {
    const g = new Graph({ drivers: testDrivers });
    const mem = await g.addNode({ driver: 'test-mem', nodeName: 'mem', size: 65536, alignment: 512 });
    const f = await g.addNode({ driver: 'test-filter', nodeName: 'f', file: 'mem' });
    const be = g.backend(f);
    const buf = new Uint8Array(1000).fill(7);
    await be.pwrite(100, buf);
    const out = await be.read(0, 2048);
    expect(out[99]).toBe(0);
    expect(out[100]).toBe(7);
    expect(out[1099]).toBe(7);
    expect(out[1100]).toBe(0);
    expect(mem.parents.length).toBe(1);
    await g.close();
  });
});
