/**
 * snapshotLoadTmp / snapshotLoadTmpByIdOrName: the checks block/snapshot.c makes before a driver's
 * bdrv_snapshot_load_tmp, and the id-then-name retry of `qemu-img convert -l NAME`.
 */
import { describe, expect, it } from 'vitest';
import { BlockError, ChildRole, defineBlockDriver, Graph, NO_CAPABILITIES, snapshotLoadTmp, snapshotLoadTmpByIdOrName, type BlockNode, type IOVector } from '../src/index.js';
import { testDrivers } from './drivers.js';

/** A format over test-mem whose snapshots are {id: '1', name: 'one'} and {id: '2', name: '1'}; records loads. */
const loads: string[] = [];
const snapDriver = defineBlockDriver({
  name: 'test-snap',
  kind: 'format',
  capabilities: { ...NO_CAPABILITIES, write: true, snapshots: true },
  options: { file: { type: 'ref', required: true } },
  async open(ctx, o) {
    const file = (await ctx.openChild('file', o.file, ChildRole.IMAGE))!;
    const snapshots = [
      { id: '1', name: 'one' },
      { id: '2', name: '1' },
      { id: '3', name: 'bad', invalid: true },
    ];
    return {
      getLength: () => file.node.totalBytes,
      async preadv(offset: number, bytes: number, qiov: IOVector) {
        await file.preadv(offset, bytes, qiov);
      },
      async pwritev(offset: number, bytes: number, qiov: IOVector) {
        await file.pwritev(offset, bytes, qiov);
      },
      async snapshotLoadTmp(id: string | undefined, name: string | undefined) {
        const sn = snapshots.find((s) => (id === undefined || s.id === id) && (name === undefined || s.name === name));
        if (!sn) throw new BlockError('ENOENT', "Can't find snapshot");
        if (sn.invalid) throw new BlockError('EINVAL', 'Snapshot L1 table offset invalid');
        loads.push(sn.id);
      },
    };
  },
});

async function open(driver: 'test-snap' | 'test-mem', readOnly: boolean): Promise<{ g: Graph; node: BlockNode }> {
  const g = new Graph({ drivers: [...testDrivers, snapDriver] });
  const mem = await g.addNode({ driver: 'test-mem', nodeName: 'mem', size: 65536, readOnly });
  const node = driver === 'test-mem' ? mem : await g.addNode({ driver: 'test-snap', nodeName: 'fmt', file: 'mem', readOnly });
  return { g, node };
}

describe('snapshotLoadTmp', () => {
  it('refuses a node that is not read-only, before the driver sees it', async () => {
    loads.length = 0;
    const { g, node } = await open('test-snap', false);
    await expect(snapshotLoadTmp(node, '1', undefined)).rejects.toMatchObject({ code: 'EINVAL', message: 'Device is not readonly' });
    expect(loads).toEqual([]);
    await g.close();
  });

  it('needs an id or a name', async () => {
    const { g, node } = await open('test-snap', true);
    await expect(snapshotLoadTmp(node, undefined, undefined)).rejects.toMatchObject({ code: 'EINVAL', message: 'snapshot_id and name are both NULL' });
    await g.close();
  });

  it('names the format and the device of a driver without temporary snapshot loading', async () => {
    const { g, node } = await open('test-mem', true);
    const msg = "Block format 'test-mem' used by device '' does not support temporarily loading internal snapshots";
    await expect(snapshotLoadTmp(node, '1', undefined)).rejects.toMatchObject({ code: 'ENOTSUP', message: msg });
    g.backend(node, { name: 'disk0' });
    await expect(snapshotLoadTmpByIdOrName(node, '1')).rejects.toMatchObject({ code: 'ENOTSUP', message: msg.replace("''", "'disk0'") });
    await g.close();
  });

  it('matches id and name together when both are given', async () => {
    loads.length = 0;
    const { g, node } = await open('test-snap', true);
    await snapshotLoadTmp(node, '2', '1');
    await expect(snapshotLoadTmp(node, '1', '1')).rejects.toMatchObject({ code: 'ENOENT' });
    expect(loads).toEqual(['2']);
    await g.close();
  });
});

describe('snapshotLoadTmpByIdOrName', () => {
  it('takes the id first, then the name; an EINVAL from the id lookup also falls back to the name', async () => {
    loads.length = 0;
    const { g, node } = await open('test-snap', true);
    await snapshotLoadTmpByIdOrName(node, '1');
    await snapshotLoadTmpByIdOrName(node, 'one');
    await expect(snapshotLoadTmpByIdOrName(node, '3')).rejects.toMatchObject({ code: 'ENOENT', message: "Can't find snapshot" });
    await expect(snapshotLoadTmpByIdOrName(node, 'bad')).rejects.toMatchObject({ code: 'EINVAL', message: 'Snapshot L1 table offset invalid' });
    await expect(snapshotLoadTmpByIdOrName(node, 'nosuch')).rejects.toMatchObject({ code: 'ENOENT' });
    expect(loads).toEqual(['1', '1']);
    await g.close();
  });
});
