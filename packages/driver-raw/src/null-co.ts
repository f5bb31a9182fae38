/**
 * The `null-co` protocol (QEMU's block/null.c): a disk that drops writes and, unless `read-zeroes=on`,
 * leaves read buffers untouched. For benchmarks of the layers above and for tests. Options as QEMU 7.2:
 * `size` (default 1 GiB), `read-zeroes` (default off), `latency-ns` (default 0: complete at once).
 * Block status reports OFFSET_VALID only (nothing is allocated), plus ZERO with read-zeroes.
 */
import {
  BlockError,
  BlockStatus,
  defineBlockDriver,
  NO_CAPABILITIES,
  ReqFlag,
  sleep,
  type BlockDriver,
  type BlockDriverInstance,
  type BlockNode,
  type BlockStatusReply,
  type DriverCapabilities,
  type IOVector,
} from '@blockgraph/block-core';

/** QEMU: qemu_opt_get_size(opts, BLOCK_OPT_SIZE, 1 << 30). */
export const NULL_CO_DEFAULT_SIZE = 2 ** 30;

class NullInstance implements BlockDriverInstance {
  readonly filename = 'null-co://';
  readonly supportedWriteFlags = ReqFlag.FUA;
  readonly capabilities: Partial<DriverCapabilities>;
  private readonly latencyMs: number;

  constructor(
    readonly size: number,
    readonly readZeroes: boolean,
    latencyNs: number,
    readonly node: BlockNode,
  ) {
    this.latencyMs = latencyNs / 1e6;
    this.capabilities = { blockStatus: readZeroes };
  }

  getLength(): number {
    return this.size;
  }

  /** null_co_common(): wait the configured latency. */
  private common(): Promise<void> {
    return this.latencyMs > 0 ? sleep(this.latencyMs) : Promise.resolve();
  }

  preadv(_offset: number, bytes: number, qiov: IOVector): Promise<void> {
    if (this.readZeroes) qiov.fill(0, 0, bytes);
    return this.common();
  }

  pwritev(): Promise<void> {
    return this.common();
  }

  flushToDisk(): Promise<void> {
    return this.common();
  }

  blockStatus(_wantZero: boolean, offset: number, bytes: number): BlockStatusReply {
    return {
      status: BlockStatus.OFFSET_VALID | (this.readZeroes ? BlockStatus.ZERO : 0),
      pnum: bytes,
      map: offset,
      file: this.node,
    };
  }

  async getAllocatedFileSize(): Promise<number> {
    return 0;
  }

  async reopenPrepare(): Promise<void> {
    // null_reopen_prepare(): nothing to change
  }
}

export const nullCoDriver: BlockDriver = defineBlockDriver({
  name: 'null-co',
  kind: 'protocol',
  description: 'Null disk: writes are dropped, reads return zeroes only with read-zeroes=on',
  capabilities: { ...NO_CAPABILITIES, write: true, reopen: true },
  options: {
    filename: { type: 'string', description: "only 'null-co://'" },
    size: { type: 'size', default: NULL_CO_DEFAULT_SIZE, description: 'size of the null block' },
    latencyNs: { type: 'integer', default: 0, description: 'nanoseconds (approximated) to wait before completing request' },
    readZeroes: { type: 'boolean', default: false, description: 'return zeroes when read' },
  },
  async open(ctx, o) {
    if (o.filename !== undefined && o.filename !== 'null-co://') {
      throw new BlockError('EINVAL', "The only allowed filename for this driver is 'null-co://'");
    }
    const latency = o.latencyNs as number;
    if (latency < 0) throw new BlockError('EINVAL', 'latency-ns is invalid');
    return new NullInstance(o.size as number, o.readZeroes as boolean, latency, ctx.node);
  },
});
