import { BlockError } from './errors.js';
import { BLOCK_DRIVER_SPEC_VERSION, type BlockDriver } from './spec.js';

/** Drivers by name. Plugins register into it; the graph looks drivers up here when opening nodes. */
export class DriverRegistry {
  private readonly drivers = new Map<string, BlockDriver>();

  register(...drivers: BlockDriver[]): this {
    for (const d of drivers) {
      if ((d.specVersion as number) !== BLOCK_DRIVER_SPEC_VERSION) {
        throw new BlockError('ENOTSUP', `Driver '${d.name}' implements driver spec version ${String(d.specVersion)}, this block-core supports ${BLOCK_DRIVER_SPEC_VERSION}`);
      }
      const existing = this.drivers.get(d.name);
      if (existing && existing !== d) throw new BlockError('EEXIST', `Driver '${d.name}' is already registered`);
      this.drivers.set(d.name, d);
    }
    return this;
  }

  get(name: string): BlockDriver {
    const d = this.drivers.get(name);
    if (!d) throw new BlockError('EINVAL', `Unknown driver '${name}'`);
    return d;
  }

  has(name: string): boolean {
    return this.drivers.has(name);
  }

  list(): BlockDriver[] {
    return [...this.drivers.values()];
  }

  /** Best format for an image's first bytes (QEMU's bdrv_probe: highest score wins, raw scores 1). */
  probe(head: Uint8Array, filename?: string): BlockDriver | undefined {
    let best: BlockDriver | undefined;
    let bestScore = 0;
    for (const d of this.drivers.values()) {
      if (d.kind !== 'format' || !d.probe) continue;
      const score = d.probe(head, filename);
      if (score > bestScore) {
        best = d;
        bestScore = score;
      }
    }
    return best;
  }
}
