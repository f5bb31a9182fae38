/**
 * bdrv_co_truncate()'s flags: growing a node over a longer backing file asks its driver for ZERO_WRITE (the grown
 * area must not show the backing file's data), and a driver that does not declare a flag it is asked for is
 * refused with QEMU's message.
 */
import { describe, expect, it } from 'vitest';
import {
  ChildRole,
  defineBlockDriver,
  Graph,
  NO_CAPABILITIES,
  Perm,
  ReqFlag,
  truncateFlags,
  type BlockDriver,
  type ReqFlags,
} from '../src/index.js';
import { testDrivers } from './drivers.js';

/** The flags each truncate() of a `test-resizing-cow` node received. */
const received: ReqFlags[] = [];

/** A format with a backing child that only resizes, declaring ZERO_WRITE support when `zeroWrite` says so. */
const resizingCow: BlockDriver = defineBlockDriver({
  name: 'test-resizing-cow',
  kind: 'format',
  capabilities: { ...NO_CAPABILITIES, write: true, resize: true, backing: true },
  options: {
    file: { type: 'ref', required: true },
    backing: { type: 'ref', nullable: true },
    size: { type: 'size', required: true },
    zeroWrite: { type: 'boolean', default: false },
  },
  async open(ctx, o) {
    await ctx.openChild('file', o.file, ChildRole.DATA | ChildRole.PRIMARY);
    await ctx.openChild('backing', o.backing, ChildRole.COW, { optional: true });
    let size = o.size as number;
    return {
      supportedTruncateFlags: o.zeroWrite ? ReqFlag.ZERO_WRITE : 0,
      getLength: () => size,
      async truncate(offset: number, _exact: boolean, _prealloc: string, flags: ReqFlags) {
        received.push(flags);
        size = offset;
      },
    };
  },
});

const MiB = 1 << 20;

async function overlay(zeroWrite: boolean, backingSize: number) {
  const g = new Graph({ drivers: [...testDrivers, resizingCow] });
  await g.addNode({ driver: 'test-mem', nodeName: 'data', size: 8 * MiB });
  await g.addNode({ driver: 'test-mem', nodeName: 'base', size: backingSize });
  const top = await g.addNode({ driver: 'test-resizing-cow', nodeName: 'top', file: 'data', backing: 'base', size: 2 * MiB, zeroWrite });
  const be = g.backend(top, { perm: Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE, shared: Perm.CONSISTENT_READ });
  return { g, top, be };
}

describe('truncate flags', () => {
  it('growing over a longer backing file asks for ZERO_WRITE; growing past it or shrinking does not', async () => {
    const { g, top, be } = await overlay(true, 4 * MiB);
    expect(truncateFlags(top, 3 * MiB, 0)).toBe(ReqFlag.ZERO_WRITE);
    received.length = 0;
    await be.truncate(3 * MiB);
    await be.truncate(2 * MiB);
    await g.close();

    const short = await overlay(true, 1 * MiB);
    expect(truncateFlags(short.top, 3 * MiB, 0)).toBe(0);
    await short.be.truncate(3 * MiB);
    await short.g.close();
    expect(received).toEqual([ReqFlag.ZERO_WRITE, 0, 0]);
  });

  it('a driver that does not declare ZERO_WRITE cannot grow over a longer backing file', async () => {
    const { g, top, be } = await overlay(false, 4 * MiB);
    received.length = 0;
    await expect(be.truncate(3 * MiB)).rejects.toMatchObject({ code: 'ENOTSUP', message: 'Block driver does not support requested flags' });
    expect(received).toEqual([]);
    expect(top.totalBytes).toBe(2 * MiB);
    // Shrinking asks for nothing.
    await be.truncate(1 * MiB);
    expect(received).toEqual([0]);
    await g.close();
  });
});
