import { defineBlockDriver, NO_CAPABILITIES, type BlockDriver, type OptionSchema } from '@blockgraph/block-core';
import type { CodecTable } from '../codec.js';
import { QCOW_MAGIC } from '../format/index.js';
import { QCOW2_CREATE_OPTIONS, createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { QCOW2_RUNTIME_OPTIONS } from './options.js';
import { QCOW2_AMEND_OPTIONS } from './amend.js';
import { measureQcow2 } from './measure.js';

export interface Qcow2DriverOptions {
  /**
   * Compression codecs by compression type (0 zlib, 1 zstd), or a function returning them (called once, on the
   * first open). The package entry uses platform-neutral codecs (pako, zstd on WebAssembly); the `/node` entry
   * Node's native zlib.
   */
  codecs: CodecTable | (() => Promise<CodecTable>);
}

/** bdrv_qcow2.bdrv_probe: the magic and a version we know. */
export function probeQcow2(head: Uint8Array): number {
  if (head.length < 8) return 0;
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
  return v.getUint32(0) === QCOW_MAGIC && v.getUint32(4) >= 2 ? 100 : 0;
}

/** A qcow2 driver using the given codecs. */
export function createQcow2Driver(opts: Qcow2DriverOptions): BlockDriver {
  let table: Promise<CodecTable> | null = null;
  const codecs = (): Promise<CodecTable> => {
    if (!table) {
      const c = opts.codecs;
      table = typeof c === 'function' ? c() : Promise.resolve(c);
      table.catch(() => (table = null));
    }
    return table;
  };
  const driver: BlockDriver = defineBlockDriver({
    name: 'qcow2',
    kind: 'format',
    description: 'qcow2 (QEMU copy-on-write v2/v3), byte-compatible with QEMU 7.2',
    capabilities: {
      ...NO_CAPABILITIES,
      write: true,
      storesData: true,
      zeroWrite: true,
      discard: true,
      discardZeroes: true,
      blockStatus: true,
      flush: true,
      resize: true,
      shrink: true,
      growOnWrite: false,
      backing: true,
      reopen: true,
      create: true,
      check: true,
      snapshots: true,
      compressedWrite: true,
    },
    options: QCOW2_RUNTIME_OPTIONS,
    createOptions: QCOW2_CREATE_OPTIONS as unknown as OptionSchema,
    amendOptions: QCOW2_AMEND_OPTIONS,
    measure: (o, source) => measureQcow2(o, source),
    probe: probeQcow2,
    open: (ctx, o) => openQcow2(ctx, o, codecs),
    create: (graph, o) => createQcow2(graph, o, driver.name),
  });
  return driver;
}
