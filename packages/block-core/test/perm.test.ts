import { describe, expect, it } from 'vitest';
import { BlockError, ChildRole, Graph, Perm, PERM_ALL, type BlockNode, type Child } from '../src/index.js';
import { testDrivers } from './drivers.js';

const W = Perm.WRITE;
const R = Perm.CONSISTENT_READ;
const WU = Perm.WRITE_UNCHANGED;
const RS = Perm.RESIZE;

function snapshot(g: Graph): string {
  const edges: string[] = [];
  for (const n of g.nodes.values()) {
    for (const p of n.parents) edges.push(`${p.parent.describeParent()}->${n.nodeName}:${p.name}:${p.perm}/${p.shared}`);
  }
  return edges.sort().join('\n');
}

async function mem(g: Graph, name: string, extra: Record<string, unknown> = {}): Promise<BlockNode> {
  return g.addNode({ driver: 'test-mem', nodeName: name, size: 1 << 20, ...extra });
}

describe('permissions', () => {
  it('refuses a second writer unless the first shares WRITE, naming both users in QEMU format', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'disk');
    g.backend('disk', { name: 'guest', perm: R | W, shared: R | WU });
    let err: unknown;
    try {
      g.backend('disk', { name: 'other', perm: R | W, shared: PERM_ALL });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BlockError);
    expect((err as BlockError).message).toBe(
      "Permission conflict on node 'disk': permissions 'write' are both required by block device 'other' " +
        "(uses node 'disk' as 'root' child) and unshared by block device 'guest' (uses node 'disk' as 'root' child).",
    );
    // The refused backend left nothing behind.
    expect(g.getNode('disk').parents).toHaveLength(1);
  });

  it('allows two writers when both share WRITE', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'disk');
    g.backend('disk', { perm: R | W, shared: R | W | WU });
    g.backend('disk', { perm: R | W, shared: R | W | WU });
    expect(g.getNode('disk').perms.perm & W).toBe(W);
  });

  it('names the asymmetric direction: a reader that unshares WRITE blocks a later writer', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'disk');
    g.backend('disk', { name: 'reader', perm: R, shared: R });
    expect(() => g.backend('disk', { name: 'writer', perm: R | W, shared: PERM_ALL })).toThrow(
      /permissions 'write' are both required by block device 'writer'.*unshared by block device 'reader'/,
    );
  });

  it('a filter passes its parents’ perms and shares through to its child', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'disk');
    const f = await g.addNode({ driver: 'test-filter', nodeName: 'f', file: 'disk' });
    g.backend(f, { perm: R | W | RS, shared: R | WU });
    const edge = f.filteredChild()!;
    expect(edge.perm).toBe(R | W | RS);
    expect(edge.shared).toBe(R | WU);
    expect(() => g.backend('disk', { perm: R | W, shared: PERM_ALL })).toThrow(/unshared by node 'f'/);
  });

  it('a backing child is only read, and shares WRITE only if the overlay’s users do', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'base');
    await mem(g, 'topfile');
    const top = await g.addNode({ driver: 'test-cow', nodeName: 'top', file: 'topfile', backing: 'base', size: 1 << 20 });
    g.backend(top, { perm: R | W, shared: R | WU });
    const backing = top.backing!;
    expect(backing.perm).toBe(R);
    expect(backing.shared & W).toBe(0);
    expect(backing.shared & (R | WU)).toBe(R | WU);
    expect(() => g.backend('base', { perm: W, shared: PERM_ALL })).toThrow(/Permission conflict on node 'base'/);
  });

  it('a backing child shares WRITE and RESIZE when the overlay’s users share WRITE', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'base');
    await mem(g, 'topfile');
    const top = await g.addNode({ driver: 'test-cow', nodeName: 'top', file: 'topfile', backing: 'base', size: 1 << 20 });
    g.backend(top, { perm: R, shared: R | W | WU | RS });
    expect(top.backing!.shared).toBe(R | W | WU | RS);
  });

  it('a format takes WRITE|RESIZE on its storage child and unshares them', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'file');
    const top = await g.addNode({ driver: 'test-cow', nodeName: 'fmt', file: 'file', size: 1 << 20 });
    const file = top.file!;
    expect(file.perm & (W | RS | R)).toBe(W | RS | R);
    expect(file.shared & (W | RS)).toBe(0);
    expect(() => g.backend('file', { perm: R | W, shared: PERM_ALL })).toThrow(
      "Permission conflict on node 'file': permissions 'write' are both required by unnamed block device (uses node 'file' as 'root' child) and unshared by node 'fmt' (uses node 'file' as 'file' child).",
    );
  });

  it('read-only nodes refuse writers; force-share lets read-only users share everything', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'ro', { readOnly: true });
    expect(() => g.backend('ro', { perm: R | W, shared: R })).toThrow("Read-only block node 'ro' cannot support read-write users");
    await mem(g, 'fs', { readOnly: true, forceShare: true });
    g.backend('fs', { perm: R, shared: R });
    // An edge onto a force-share node shares everything, so the reader does not block anyone.
    expect(g.getNode('fs').perms.shared).toBe(PERM_ALL);
    await expect(mem(g, 'bad', { forceShare: true })).rejects.toThrow('force-share=on can only be used with read-only images');
  });

  it('a refused graph change leaves every edge exactly as before', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'disk');
    await mem(g, 'other');
    const f = await g.addNode({ driver: 'test-filter', nodeName: 'f', file: 'disk' });
    g.backend(f, { name: 'guest', perm: R | W | RS, shared: R | WU });
    g.backend('other', { name: 'writer', perm: R | W, shared: PERM_ALL });
    const before = snapshot(g);
    // Moving the writer's edge under the guest's filter conflicts: nothing may move.
    await expect(g.replaceNode('other', 'disk')).rejects.toThrow(/Permission conflict on node 'disk'/);
    expect(snapshot(g)).toBe(before);
    // A backend permission upgrade that conflicts changes nothing either.
    const reader = g.backend('disk', { perm: R, shared: R | W | WU | RS });
    const snap2 = snapshot(g);
    expect(() => reader.setPerm(R | W, R)).toThrow(/Permission conflict/);
    expect(snapshot(g)).toBe(snap2);
    expect(reader.perm).toBe(R);
  });

  it('driver perm hooks: check may refuse, and exactly one of set/abort follows a successful check', async () => {
    const calls: string[] = [];
    const g = new Graph({ drivers: testDrivers });
    const a = await mem(g, 'a');
    const orig = a.impl;
    let refuse = false;
    a.impl = {
      ...orig,
      checkPerm: (p) => {
        calls.push(`check ${p}`);
        if (refuse && p & W) throw new BlockError('EAGAIN', 'Failed to get "write" lock');
      },
      setPerm: (p) => calls.push(`set ${p}`),
      abortPermUpdate: () => calls.push('abort'),
    };
    const be = g.backend('a', { perm: R, shared: PERM_ALL });
    expect(calls).toEqual([`check ${R}`, `set ${R}`]);
    calls.length = 0;
    refuse = true;
    expect(() => be.setPerm(R | W, PERM_ALL)).toThrow('Failed to get "write" lock');
    expect(calls).toEqual([`check ${R | W}`]);
    calls.length = 0;
    // A failure further down aborts the hook of a node that already passed its check.
    refuse = false;
    const f = await g.addNode({ driver: 'test-filter', nodeName: 'f2', file: 'a' });
    f.impl = { ...f.impl, checkPerm: () => undefined, abortPermUpdate: () => calls.push('f-abort'), setPerm: () => calls.push('f-set') };
    g.backend('a', { name: 'blocker', perm: 0, shared: R });
    calls.length = 0;
    expect(() => g.backend(f, { perm: R | W, shared: PERM_ALL })).toThrow(/Permission conflict on node 'a'/);
    expect(calls).toContain('f-abort');
    expect(calls).not.toContain('f-set');
  });

  it('edge roles: IMAGE children get storage perms, COW children read-only perms', () => {
    expect(ChildRole.IMAGE).toBe(ChildRole.DATA | ChildRole.METADATA | ChildRole.PRIMARY);
  });
});

describe('graph changes', () => {
  it('refuses cycles', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'disk');
    const f1 = await g.addNode({ driver: 'test-filter', nodeName: 'f1', file: 'disk' });
    await g.addNode({ driver: 'test-filter', nodeName: 'f2', file: 'f1' });
    // Putting f2 under f1 would make f1 → f2 → f1.
    await expect(g.replaceNode('disk', 'f2')).rejects.toThrow(/would create a cycle/);
    expect(f1.filteredChild()!.node.nodeName).toBe('disk');
  });

  it('deletes only unused, named nodes', async () => {
    const g = new Graph({ drivers: testDrivers });
    const d = await mem(g, 'disk');
    const be = g.backend(d);
    await expect(g.deleteNode('disk')).rejects.toThrow('Node disk is in use');
    const f = await g.addNode({ driver: 'test-filter', nodeName: 'f', file: { driver: 'test-mem', size: 4096 } });
    const implicitName = f.filteredChild()!.node.nodeName;
    expect(implicitName.startsWith('#block')).toBe(true);
    await expect(g.deleteNode(implicitName)).rejects.toThrow(`Node ${implicitName} is not owned by the monitor`);
    await g.deleteNode('f');
    // The implicit child went with its only parent.
    expect(g.findNode(implicitName)).toBeUndefined();
    be.remove();
    await g.deleteNode('disk');
    expect(g.findNode('disk')).toBeUndefined();
  });

  it('inserts a filter above a node with parents and removes it again, moving every parent', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'disk');
    const guest = g.backend('disk', { name: 'guest', perm: R | W, shared: R | WU });
    await guest.pwrite(0, new Uint8Array(512).fill(3));
    const f = await g.insertFilter({ driver: 'test-filter', nodeName: 'flt', file: 'disk' });
    expect(guest.root!.node).toBe(f);
    expect(g.getNode('disk').parents.map((p) => p.parent.describeParent())).toEqual(["node 'flt'"]);
    expect((await guest.read(0, 512))[0]).toBe(3);
    await g.removeFilter('flt');
    expect(guest.root!.node.nodeName).toBe('disk');
    expect(g.findNode('flt')).toBeUndefined();
  });

  it('refuses to insert a filter whose needs conflict, and leaves the graph as it was', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'disk');
    g.backend('disk', { name: 'guest', perm: R | W, shared: R });
    const before = snapshot(g);
    // A filter carrying a writer of its own would need WRITE shared by the guest.
    await expect(
      (async () => {
        const f = await g.addNode({ driver: 'test-filter', nodeName: 'flt', file: 'disk' });
        g.backend(f, { perm: R | W, shared: PERM_ALL });
      })(),
    ).rejects.toThrow(/Permission conflict on node 'disk'/);
    await g.deleteNode('flt');
    expect(snapshot(g)).toBe(before);
  });

  it('refuses to change frozen links', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'disk');
    await mem(g, 'disk2');
    const f = await g.addNode({ driver: 'test-filter', nodeName: 'f', file: 'disk' });
    g.freezeChain(f, undefined);
    await expect(g.replaceNode('disk', 'disk2')).rejects.toThrow("Cannot change 'file' link from 'f' to 'disk'");
    g.unfreezeChain(f, undefined);
    await g.replaceNode('disk', 'disk2');
    expect(f.filteredChild()!.node.nodeName).toBe('disk2');
  });

  it('reopens read-only and back, refusing read-only while a writer exists', async () => {
    const g = new Graph({ drivers: testDrivers });
    const d = await mem(g, 'disk');
    const w = g.backend(d, { perm: R | W, shared: R | WU });
    await expect(g.reopen('disk', { readOnly: true })).rejects.toThrow("Read-only block node 'disk' cannot support read-write users");
    expect(d.readOnly).toBe(false);
    w.remove();
    await g.reopen('disk', { readOnly: true });
    expect(d.readOnly).toBe(true);
    const r = g.backend(d, { perm: R, shared: PERM_ALL });
    await expect(r.pwrite(0, new Uint8Array(1))).rejects.toThrow(BlockError);
    r.remove();
    await g.reopen('disk', { readOnly: false });
    const w2 = g.backend(d, { perm: R | W, shared: R | WU });
    await w2.pwrite(0, new Uint8Array([9]));
    expect((await w2.read(0, 1))[0]).toBe(9);
  });

  it('a write through an edge without WRITE is refused', async () => {
    const g = new Graph({ drivers: testDrivers });
    const d = await mem(g, 'disk');
    const be = g.backend(d, { perm: R, shared: PERM_ALL });
    const err = await be.pwrite(0, new Uint8Array(16)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlockError);
    expect((err as BlockError).code).toBe('EPERM');
    expect((err as BlockError).message).toMatch(/without 'write' permission/);
    const child = be.root as Child;
    await expect(child.pdiscard(0, 512)).rejects.toThrow(/without 'write' permission/);
  });
});

describe('external snapshots and backing changes', () => {
  it('blockdev-snapshot puts an overlay above a node in use; reads fall through to it', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'base');
    const guest = g.backend('base', { name: 'guest', perm: R | W, shared: R | WU });
    await guest.pwrite(0, new Uint8Array(8192).fill(4));
    await mem(g, 'ovlfile');
    const ovl = await g.addNode({ driver: 'test-cow', nodeName: 'ovl', file: 'ovlfile', size: 1 << 20 });
    await g.snapshot('base', 'ovl');
    expect(guest.root!.node).toBe(ovl);
    expect(ovl.backing!.node.nodeName).toBe('base');
    expect((await guest.read(0, 1))[0]).toBe(4);
    await guest.pwrite(0, new Uint8Array(4096).fill(5));
    expect((await guest.read(0, 1))[0]).toBe(5);
    expect((await guest.read(4096, 1))[0]).toBe(4);
    // The base is now a backing file: nobody may write it any more.
    expect(() => g.backend('base', { perm: R | W, shared: PERM_ALL })).toThrow(/Permission conflict on node 'base'/);
    await expect(g.snapshot('ovl', 'ovl')).rejects.toThrow('The overlay already has a backing image');
  });

  it('setBacking replaces or drops a backing file and refuses frozen links', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'b1');
    await mem(g, 'b2');
    await mem(g, 'tf');
    const b2 = g.backend('b2', { perm: R | W, shared: PERM_ALL });
    await b2.pwrite(0, new Uint8Array([8]));
    b2.remove();
    const top = await g.addNode({ driver: 'test-cow', nodeName: 'top', file: 'tf', backing: 'b1', size: 1 << 20 });
    const r = g.backend(top, { perm: R, shared: PERM_ALL });
    expect((await r.read(0, 1))[0]).toBe(0);
    await g.setBacking('top', 'b2');
    expect((await r.read(0, 1))[0]).toBe(8);
    expect(g.getNode('b1').parents).toHaveLength(0);
    g.freezeChain(top, undefined);
    await expect(g.setBacking('top', null)).rejects.toThrow("Cannot change 'backing' link from 'top' to 'b2'");
    g.unfreezeChain(top, undefined);
    await g.setBacking('top', null);
    expect(top.backing).toBeUndefined();
  });

  it('blockdev-snapshot accepts an overlay in use by write-only parents (a mirror target), not by readers', async () => {
    const g = new Graph({ drivers: testDrivers });
    await mem(g, 'base');
    const b = g.backend('base', { perm: R | W, shared: PERM_ALL });
    await b.pwrite(0, new Uint8Array([9]));
    b.remove();
    await mem(g, 'ovlfile');
    const ovl = await g.addNode({ driver: 'test-cow', nodeName: 'ovl', file: 'ovlfile', size: 1 << 20 });
    const reader = g.backend(ovl, { perm: R, shared: PERM_ALL });
    await expect(g.snapshot('base', 'ovl')).rejects.toThrow('The overlay is already in use');
    expect(ovl.backing).toBeUndefined();
    reader.remove();
    // QEMU 5.0+ (iotest 155 TestBlockdevMirrorSnapshot): only consistent read counts as "in use".
    const writer = g.backend(ovl, { perm: W, shared: WU });
    await g.snapshot('base', 'ovl');
    expect(ovl.backing!.node.nodeName).toBe('base');
    expect(writer.root!.node).toBe(ovl);
    writer.remove();
    expect((await g.backend(ovl, { perm: R, shared: PERM_ALL }).read(0, 1))[0]).toBe(9);
  });
});
