/**
 * Image locking against the real QEMU 7.2 tools, both ways: qemu-io holding an image while blockgraph opens
 * it, and a blockgraph process holding an image while qemu-io / qemu-img try.
 */
import { join } from 'node:path';
import { Perm } from '@blockgraph/block-core';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { loadNative } from '../src/node/file.js';
import { QemuIoHolder, describeRequiring, lockedBytes, makeTempDir, missingTools, runTool } from './helpers/qemu.js';
import { BlockgraphHolder, newGraph } from './helpers/holder.js';

const MiB = 1024 * 1024;
const native = loadNative();
const missing = [...missingTools('qemu-img', 'qemu-io'), ...(native && native.lockKind() === 'ofd' ? [] : ['native helper with OFD locks'])];

let tmp: { dir: string; cleanup: () => void };
let seq = 0;
const holders: { stop(): Promise<void> }[] = [];
const graphs: { close(): Promise<void> }[] = [];

beforeAll(() => {
  tmp = makeTempDir('locking');
});
afterAll(() => tmp.cleanup());
afterEach(async () => {
  for (const g of graphs.splice(0)) await g.close();
  for (const h of holders.splice(0)) await h.stop();
});

function image(fmt: 'raw' | 'qcow2' = 'raw'): string {
  const p = join(tmp.dir, `img-${seq++}.${fmt}`);
  const r = runTool('qemu-img', ['create', '-f', fmt, p, '4M']);
  if (r.status !== 0) throw new Error(r.stderr);
  return p;
}

async function qemuIo(args: string[]): Promise<QemuIoHolder> {
  const h = await QemuIoHolder.start(args);
  holders.push(h);
  return h;
}

async function hold(job: Parameters<typeof BlockgraphHolder.start>[0]): Promise<BlockgraphHolder> {
  const h = await BlockgraphHolder.start(job);
  holders.push(h);
  return h;
}

/** Open `p` as raw through blockgraph and attach a backend (this is where perms, hence locks, are taken). */
async function openForWrite(p: string, readOnly = false) {
  const graph = newGraph();
  graphs.push(graph);
  const node = await graph.openImage(p, { format: 'raw', readOnly });
  return graph.backend(node);
}

const lockError = (p: string, what: string) => `Failed to get "${what}" lock\nIs another process using the image [${p}]?`;

describeRequiring('locking: blockgraph against a qemu-io that holds the image', missing, () => {
  it("refuses to write while qemu-io -f qcow2 holds it writable and unshared: 'Failed to get \"write\" lock'", async () => {
    const p = image('qcow2');
    await qemuIo(['-f', 'qcow2', p]);
    expect(lockedBytes(p)).toEqual([100, 101, 103, 201, 203]);
    const err = await openForWrite(p).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'EAGAIN', message: lockError(p, 'write') });
    expect((err as { hint?: string }).hint).toBe(`Is another process using the image [${p}]?`);
    // nothing of ours stayed locked
    expect(lockedBytes(p)).toEqual([100, 101, 103, 201, 203]);
  });

  it('can still read it while sharing writes (a reader that forbids nothing: force-share)', async () => {
    const p = image('qcow2');
    await qemuIo(['-f', 'qcow2', p]);
    const graph = newGraph();
    graphs.push(graph);
    const node = await graph.openImage(p, { format: 'raw', readOnly: true, forceShare: true });
    const be = graph.backend(node);
    expect((await be.read(0, 4)).length).toBe(4);
    // a reader that does not share writes is refused, as qemu-img info without -U is
    be.remove();
    const ro = await openForWrite(p, true).catch((e: unknown) => e);
    expect(ro).toMatchObject({ message: `Failed to get shared "write" lock\nIs another process using the image [${p}]?` });
  });

  it('shares with readers: qemu-io -r holding the image does not stop our writer', async () => {
    const p = image();
    await qemuIo(['-r', '-f', 'raw', p]);
    expect(lockedBytes(p)).toEqual([100]);
    const be = await openForWrite(p);
    await be.pwrite(0, new Uint8Array(512).fill(1));
    expect(lockedBytes(p)).toEqual([100, 101, 103, 201, 203]);
  });

  it('a writable qemu-io -f raw (uses write, shares everything) makes our exclusive writer fail on sharing', async () => {
    const p = image();
    await qemuIo(['-f', 'raw', p]);
    expect(lockedBytes(p)).toEqual([100, 101]);
    // we do not share "write", and qemu-io uses it
    await expect(openForWrite(p)).rejects.toMatchObject({
      message: `Failed to get shared "write" lock\nIs another process using the image [${p}]?`,
    });
    // a writer that shares writes coexists
    const graph = newGraph();
    graphs.push(graph);
    const node = await graph.openImage(p, { format: 'raw' });
    const be = graph.backend(node, { shared: Perm.CONSISTENT_READ | Perm.WRITE | Perm.WRITE_UNCHANGED | Perm.RESIZE });
    await be.pwrite(0, new Uint8Array(16).fill(2));
  });

  it('locking=off ignores the locks (and takes none)', async () => {
    const p = image('qcow2');
    await qemuIo(['-f', 'qcow2', p]);
    const graph = newGraph();
    graphs.push(graph);
    const node = await graph.openImage(p, { format: 'raw', options: { file: { locking: 'off' } } });
    graph.backend(node, { perm: Perm.CONSISTENT_READ, shared: Perm.CONSISTENT_READ });
    expect(lockedBytes(p)).toEqual([100, 101, 103, 201, 203]);
  });

  it('image creation takes the write and resize locks like raw_co_create()', async () => {
    const p = image('qcow2');
    await qemuIo(['-f', 'qcow2', p]);
    const graph = newGraph();
    await expect(graph.createImage('file', { filename: p, size: MiB })).rejects.toMatchObject({ message: lockError(p, 'write') });
  });
});

describeRequiring('locking: qemu tools against a blockgraph process that holds the image', missing, () => {
  it('qemu-io cannot write while blockgraph writes; readers share; qemu-img info -f raw takes no locks', async () => {
    const p = image();
    await hold({ filename: p });
    expect(lockedBytes(p)).toEqual([100, 101, 103, 201, 203]);
    let r = runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 512', p]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(`qemu-io: can't open device ${p}: Failed to get "write" lock`);
    expect(r.stderr).toContain(`Is another process using the image [${p}]?`);
    r = runTool('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 512', p]);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    r = runTool('qemu-img', ['info', '-f', 'raw', p]);
    expect(r.status).toBe(0);
    r = runTool('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', p, `${p}.copy`]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('Failed to get shared "write" lock');
    r = runTool('qemu-img', ['resize', '-f', 'raw', p, '8M']);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(`qemu-img: Could not open '${p}': Failed to get "write" lock`);
  });

  it('a read-only blockgraph user that shares everything lets qemu-io write', async () => {
    const p = image();
    await hold({ filename: p, readOnly: true, perm: Perm.CONSISTENT_READ, shared: 0xf });
    expect(lockedBytes(p)).toEqual([100]);
    const r = runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 512', p]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('two blockgraph processes refuse each other the same way', async () => {
    const p = image();
    await hold({ filename: p });
    await expect(BlockgraphHolder.start({ filename: p })).rejects.toThrow(lockError(p, 'write'));
    // locking=off neither tests nor takes locks
    await hold({ filename: p, locking: 'off' });
    expect(lockedBytes(p)).toEqual([100, 101, 103, 201, 203]);
  });

  it('after the holder quits, the image is free again', async () => {
    const p = image();
    const h = await hold({ filename: p });
    await h.stop();
    expect(lockedBytes(p)).toEqual([]);
    const r = runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 512', p]);
    expect(r.status).toBe(0);
  });
});

describeRequiring('locking: reopen moves the locks to the new fd', missing, () => {
  it('read-only → read-write → read-only, checked in /proc/locks and against qemu-io', async () => {
    const p = image();
    const graph = newGraph();
    graphs.push(graph);
    const node = await graph.openImage(p, { format: 'raw', readOnly: true });
    const ro = graph.backend(node, { shared: 0xf });
    expect(lockedBytes(p)).toEqual([100]);
    ro.remove();
    await graph.reopen(node, { readOnly: false });
    const rw = graph.backend(node);
    expect(lockedBytes(p)).toEqual([100, 101, 103, 201, 203]);
    const r = runTool('qemu-io', ['-f', 'raw', '-c', 'write 0 512', p]);
    expect(r.stderr).toContain('Failed to get "write" lock');
    rw.setPerm(Perm.CONSISTENT_READ, 0xf);
    await graph.reopen(node, { readOnly: true });
    expect(lockedBytes(p)).toEqual([100]);
    expect(runTool('qemu-io', ['-f', 'raw', '-c', 'write 0 512', p]).status).toBe(0);
  });

  it('a refused permission change after a reopen leaves the locks as they were', async () => {
    const p = image();
    const graph = newGraph();
    graphs.push(graph);
    const node = await graph.openImage(p, { format: 'raw', readOnly: true });
    // Perms go with the edge: reopen read-write, then take write perms, conflicting with a qemu-io holder.
    await graph.reopen(node, { readOnly: false });
    await qemuIo(['-f', 'raw', p]);
    expect(lockedBytes(p)).toEqual([100, 101]);
    expect(() => graph.backend(node)).toThrow(`Failed to get shared "write" lock`);
    expect(lockedBytes(p)).toEqual([100, 101]);
    const be = graph.backend(node, { shared: 0xf });
    await be.pwrite(0, new Uint8Array(8).fill(1));
  });
});
