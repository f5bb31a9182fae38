/**
 * The blkdebug filter (src/blkdebug.ts) and the test-throttle filter (src/scenarios/throttle.ts): QEMU 7.2's
 * blkdebug semantics (state machine, inject-error rules, breakpoints, child permissions, limits) and the
 * conformance suite over both, so that everything they do not inject passes through unchanged.
 */
import { describe, expect, it, test } from 'vitest';
import { BlockError, Graph, type BlockBackend, type BlockNode } from '@blockgraph/block-core';
import { rawDrivers } from '@blockgraph/driver-raw';
import {
  blkdebugDriver,
  blkdebugOf,
  findBlkdebug,
  parseBlkdebugConfig,
  createTestThrottleDriver,
  ManualClock,
  runDriverConformance,
  testThrottleDriver,
  type BlkdebugInjectError,
  type BlkdebugSetState,
} from '../src/index.js';

const drivers = [...rawDrivers, blkdebugDriver, testThrottleDriver];

async function setup(opts: { injectError?: BlkdebugInjectError[]; setState?: BlkdebugSetState[]; [k: string]: unknown } = {}): Promise<{
  g: Graph;
  dbg: BlockNode;
  be: BlockBackend;
}> {
  const g = new Graph({ drivers });
  await g.addNode({ driver: 'memory', nodeName: 'mem', size: 1 << 20 });
  const dbg = await g.addNode({ driver: 'blkdebug', nodeName: 'dbg', image: 'mem', discard: 'unmap', ...opts });
  const be = g.backend(dbg, { name: 'dev', perm: 0x3, shared: 0xf });
  return { g, dbg, be };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return (e as BlockError).code;
  }
}

describe('blkdebug: inject-error and set-state', () => {
  it('fails requests once the rule is active, with the errno asked for; once removes it', async () => {
    const { g, be } = await setup({ injectError: [{ event: 'read_aio', errno: 28, once: true }] });
    // The rule becomes active with the event of this very read, which then fails.
    expect(await code(be.read(0, 512))).toBe('ENOSPC');
    expect(await code(be.read(0, 512))).toBe('ok');
    await g.close();
  });

  it('an active rule stays active and also fails other request types of its iotype mask', async () => {
    const { g, be } = await setup({ 'inject-error': [{ event: 'write_aio', immediately: true }] });
    expect(await code(be.read(0, 512))).toBe('ok'); // not active yet
    expect(await code(be.pwrite(0, new Uint8Array(512)))).toBe('EIO');
    expect(await code(be.read(0, 512))).toBe('EIO'); // default iotypes: read, write, write-zeroes, discard, flush
    expect(await code(be.pdiscard(0, 512))).toBe('EIO');
    // A failed write counts as a write (QEMU bumps write_gen either way): the flush reaches flush_to_disk.
    expect(await code(be.flush())).toBe('EIO');
    await g.close();
    const f = await setup({ injectError: [{ event: 'read_aio', iotype: 'flush' }] });
    await f.be.read(0, 512);
    expect(await code(f.be.flush())).toBe('ok'); // nothing written since the last flush: no flush_to_disk
    await f.be.pwrite(0, new Uint8Array(512));
    expect(await code(f.be.flush())).toBe('EIO');
    await f.g.close();
  });

  it('iotype and sector restrict the rule; offset is the same in bytes', async () => {
    const { g, be } = await setup({ injectError: [{ event: 'read_aio', iotype: 'read', sector: 8 }] });
    expect(await code(be.read(0, 4096))).toBe('ok'); // sector 8 = byte 4096 is not in [0, 4096)
    expect(await code(be.read(4096, 512))).toBe('EIO');
    expect(await code(be.pwrite(4096, new Uint8Array(512)))).toBe('ok'); // writes are not of the iotype
    await g.close();
    const o = await setup({ injectError: [{ event: 'read_aio', offset: 5000 }] });
    expect(await code(o.be.read(4096, 512))).toBe('ok');
    expect(await code(o.be.read(4608, 512))).toBe('EIO');
    await o.g.close();
  });

  it('runs the state machine of 041s error config: the request covering the sector fails, once', async () => {
    const rules = parseBlkdebugConfig(`
[inject-error]
state = "1"
event = "read_aio"
errno = "5"
immediately = "off"
once = "on"
sector = "1024"

[set-state]
state = "1"
event = "read_aio"
new_state = "2"

[set-state]
state = "2"
event = "read_aio"
new_state = "1"
`);
    expect(rules.injectError).toEqual([{ state: 1, event: 'read_aio', errno: 5, immediately: 'off', once: 'on', sector: 1024 }]);
    expect(rules.setState).toEqual([
      { state: 1, event: 'read_aio', new_state: 2 },
      { state: 2, event: 'read_aio', new_state: 1 },
    ]);
    const { g, dbg, be } = await setup(rules);
    const c = blkdebugOf(dbg);
    expect(c.state).toBe(1);
    expect(await code(be.read(0, 512))).toBe('ok'); // state 1: the rule becomes active; -> state 2
    expect(c.state).toBe(2);
    expect(await code(be.read(0, 512))).toBe('ok'); // -> state 1; the rule stays active
    expect(c.state).toBe(1);
    expect(await code(be.read(1024 * 512, 512))).toBe('EIO'); // covers sector 1024
    expect(await code(be.read(1024 * 512, 512))).toBe('ok'); // once
    await g.close();
  });

  it('set-state takes effect after all rules of the event were processed (mirror-ready-cancel-error)', async () => {
    const { g, dbg, be } = await setup({
      setState: [{ event: 'flush_to_disk', state: 1, new_state: 2 }],
      injectError: [{ event: 'flush_to_disk', state: 2, once: true, immediately: true }],
    });
    await be.pwrite(0, new Uint8Array(512));
    expect(await code(be.flush())).toBe('ok'); // state 1 -> 2; the state-2 rule was not active yet
    expect(blkdebugOf(dbg).state).toBe(2);
    expect(await code(be.flush())).toBe('ok'); // clean: no flush_to_disk event
    await be.pwrite(0, new Uint8Array(512));
    expect(await code(be.flush())).toBe('EIO');
    expect(await code(be.flush())).toBe('ok'); // once; still dirty, so the event fired, but no rule is left
    await g.close();
  });

  it('refuses bad options with QEMU-like messages', async () => {
    const g = new Graph({ drivers });
    await g.addNode({ driver: 'memory', nodeName: 'mem', size: 1 << 20 });
    await expect(g.addNode({ driver: 'blkdebug', image: 'mem', injectError: [{ errno: 5 }] })).rejects.toThrow('Missing event name for rule');
    await expect(g.addNode({ driver: 'blkdebug', image: 'mem', injectError: [{ event: 'nope' }] })).rejects.toThrow("Invalid parameter 'nope'");
    await expect(g.addNode({ driver: 'blkdebug', image: 'mem', align: 3 })).rejects.toThrow('Cannot meet constraints with align 3');
    await expect(g.addNode({ driver: 'blkdebug', image: 'mem', align: 4096, maxTransfer: 1000 })).rejects.toThrow(
      'Cannot meet constraints with max-transfer 1000',
    );
    await expect(g.addNode({ driver: 'blkdebug', image: 'mem', config: '/tmp/x.conf' })).rejects.toThrow(/config files are not supported/);
    await expect(g.addNode({ driver: 'blkdebug', image: 'mem', takeChildPerms: ['everything'] })).rejects.toThrow(
      "Parameter 'take-child-perms' does not accept value 'everything'",
    );
    const n = await g.addNode({ driver: 'blkdebug', image: 'mem', align: 4096, 'max-transfer': 65536 });
    expect(n.limits.requestAlignment).toBe(4096);
    expect(n.limits.maxTransfer).toBe(65536);
    await g.close();
  });
});

describe('blkdebug: breakpoints (qemu-io break / wait_break / resume / remove_break)', () => {
  it('parks a request at a one-shot breakpoint until resumed', async () => {
    const { g, be } = await setup();
    const c = findBlkdebug(be);
    c.break('write_aio', 'A');
    let done = false;
    const w = be.pwrite(0, new Uint8Array(512).fill(1)).then(() => (done = true));
    await c.waitBreak('A');
    expect(c.isSuspended('A')).toBe(true);
    expect(c.suspendedTags()).toEqual(['A']);
    await new Promise((r) => setTimeout(r, 10));
    expect(done).toBe(false);
    // Other requests are not parked; the breakpoint was used up.
    await be.pwrite(4096, new Uint8Array(512));
    c.resume('A');
    await w;
    expect(done).toBe(true);
    expect(c.isSuspended('A')).toBe(false);
    expect(() => c.resume('A')).toThrow("No suspended request with tag 'A'");
    await g.close();
  });

  it('remove_break drops the breakpoint and resumes what it parked', async () => {
    const { g, be } = await setup();
    const c = findBlkdebug(be);
    c.break('read_aio', 'R');
    const r = be.read(0, 512);
    await c.waitBreak('R');
    c.break('read_aio', 'R');
    c.removeBreak('R');
    await r;
    await be.read(0, 512); // the second breakpoint is gone too
    expect(() => c.removeBreak('R')).toThrow(BlockError);
    expect(() => c.break('nope' as 'read_aio', 'X')).toThrow("Invalid parameter 'nope'");
    await g.close();
  });

  it('is found below a format node, as qemu-io finds it below a device', async () => {
    const g = new Graph({ drivers });
    await g.addNode({ driver: 'raw', nodeName: 'disk', file: { driver: 'blkdebug', nodeName: 'dbg', image: { driver: 'memory', size: 65536 } } });
    const be = g.backend('disk', { perm: 0x3, shared: 0xf });
    expect(findBlkdebug(be).node.nodeName).toBe('dbg');
    await g.addNode({ driver: 'memory', nodeName: 'plain', size: 512 });
    expect(() => findBlkdebug(g.getNode('plain'))).toThrow("No blkdebug node below 'plain'");
    expect(() => blkdebugOf(g.getNode('plain'))).toThrow("Node 'plain' is not a blkdebug node");
    await g.close();
  });
});

describe('blkdebug: take-child-perms / unshare-child-perms', () => {
  it('adds and unshares permissions on the child (QEMU 7.2 conflict message)', async () => {
    const g = new Graph({ drivers });
    await g.addNode({ nodeName: 'dest', driver: 'null-co' });
    await g.addNode({ driver: 'blkdebug', nodeName: 'dest-perm', image: 'dest', 'unshare-child-perms': ['consistent-read'] });
    await expect(g.addNode({ driver: 'blkdebug', nodeName: 'src-perm', image: 'dest', takeChildPerms: ['consistent-read'] })).rejects.toThrow(
      "Permission conflict on node 'dest': permissions 'consistent read' are both required by node 'src-perm' (uses node 'dest' as 'image' child) and unshared by node 'dest-perm' (uses node 'dest' as 'image' child).",
    );
    expect(g.findNode('src-perm')).toBeUndefined();
    await g.close();
  });
});

describe('test-throttle', () => {
  it('limits IOPS in arrival order; a drained node lets everything through', async () => {
    const g = new Graph({ drivers });
    await g.addNode({ driver: 'test-throttle', nodeName: 't', iopsTotal: 20, file: { driver: 'memory', size: 1 << 20 } });
    const be = g.backend('t', { perm: 0x3, shared: 0xf });
    const t0 = performance.now();
    await Promise.all([0, 1, 2, 3].map((i) => be.read(i * 512, 512)));
    // The first one goes at once, the next three wait 50 ms each.
    expect(performance.now() - t0).toBeGreaterThanOrEqual(140);
    const slow = Promise.all(Array.from({ length: 100 }, (_, i) => be.read(i * 512, 512)));
    const t1 = performance.now();
    await g.drainedBegin('t');
    await slow;
    expect(performance.now() - t1).toBeLessThan(2500); // throttled, the 100 reads would take 5 s
    g.drainedEnd('t');
    await g.close();
  });

  it('on a manual clock, requests go only when the test steps the clock past their slot', async () => {
    const clock = new ManualClock();
    const g = new Graph({ drivers: [...drivers, createTestThrottleDriver({ name: 'test-throttle-manual', clock })] });
    await g.addNode({ driver: 'test-throttle-manual', nodeName: 't', iopsWrite: 20, file: { driver: 'memory', size: 1 << 20 } });
    const be = g.backend('t', { perm: 0x3, shared: 0xf });
    const done: number[] = [];
    const writes = [0, 1, 2, 3].map((i) => be.pwrite(i * 512, new Uint8Array(512).fill(i + 1)).then(() => done.push(i)));
    // The first write of an idle node goes at once, the others hold 50 ms slots each; reads are not limited here.
    await new Promise((r) => setTimeout(r, 20)); // real time passes, the manual clock does not
    expect(done).toEqual([0]);
    expect([...(await be.read(0, 1024))]).toEqual([...new Uint8Array(512).fill(1), ...new Uint8Array(512)]);
    expect(clock.pendingTimers).toBe(3);
    clock.step(49);
    await new Promise((r) => setTimeout(r, 5));
    expect(done).toEqual([0]);
    clock.step(1);
    await new Promise((r) => setTimeout(r, 5));
    expect(done).toEqual([0, 1]);
    clock.step(100);
    await Promise.all(writes);
    expect(done).toEqual([0, 1, 2, 3]);
    expect(clock.now()).toBe(150);
    expect(clock.pendingTimers).toBe(0);
    expect(() => clock.step(-1)).toThrow(/non-negative/);
    await g.close();
  });

  it('a manual clock fires due timers in due order, ties in the order they were set, with the clock at their time', () => {
    const clock = new ManualClock();
    const fired: [string, number][] = [];
    const at = (name: string) => () => fired.push([name, clock.now()]);
    clock.setTimer(at('c'), 30);
    clock.setTimer(at('a'), 10);
    const cleared = clock.setTimer(at('x'), 10);
    clock.setTimer(() => {
      at('b')();
      clock.setTimer(at('d'), 5); // due at 25, inside this step
    }, 20);
    clock.setTimer(at('a2'), 10);
    clock.clearTimer(cleared);
    clock.step(25);
    expect(fired).toEqual([['a', 10], ['a2', 10], ['b', 20], ['d', 25]]);
    expect(clock.now()).toBe(25);
    clock.setTimer(at('e'), 100);
    clock.runAllTimers();
    expect(fired.slice(4)).toEqual([['c', 30], ['e', 125]]);
    expect(clock.pendingTimers).toBe(0);
  });
});

runDriverConformance({
  name: 'blkdebug (over memory)',
  describe,
  test,
  async factory({ size, readOnly }) {
    const g = new Graph({ drivers });
    await g.addNode({ driver: 'memory', nodeName: 'mem', size, readOnly: !!readOnly, discard: 'unmap' });
    const node = await g.addNode({ driver: 'blkdebug', nodeName: 'dbg', image: 'mem', readOnly: !!readOnly, discard: 'unmap' });
    return { graph: g, node };
  },
});

runDriverConformance({
  name: 'test-throttle (over memory, no limits)',
  describe,
  test,
  async factory({ size, readOnly }) {
    const g = new Graph({ drivers });
    await g.addNode({ driver: 'memory', nodeName: 'mem', size, readOnly: !!readOnly, discard: 'unmap' });
    const node = await g.addNode({ driver: 'test-throttle', nodeName: 't', file: 'mem', readOnly: !!readOnly, discard: 'unmap' });
    return { graph: g, node };
  },
});
