/**
 * The drivers the CLI registers: the raw family (always there) plus every optional plugin package that is
 * installed. An optional package that is missing leaves a placeholder driver behind, so that `-f qcow2` or a
 * probed qcow2 image says clearly what is missing instead of being mistaken for raw.
 */
import {
  BlockError,
  defineBlockDriver,
  DriverRegistry,
  Graph,
  NO_CAPABILITIES,
  type BlockDriver,
} from '@blockgraph/block-core';

export interface OptionalDriver {
  /** npm package name. */
  pkg: string;
  /** Entry points to try in order (a Node-specific entry first); default: the package itself. */
  entries?: string[];
  /** Name of the export holding the BlockDriver. */
  exportName: string;
  /** Driver name it registers (format name for -f). */
  name: string;
  kind: 'format' | 'filter' | 'protocol';
  /** Recognises images of this format even without the driver (so they are not probed as raw). */
  magic?: Uint8Array;
}

/**
 * Plugin packages the CLI uses when they are installed. Later packages add themselves here (one line each).
 */
export const OPTIONAL_DRIVERS: readonly OptionalDriver[] = [
  {
    pkg: '@blockgraph/driver-qcow2',
    // The Node entry uses Node's native zlib for compressed clusters.
    entries: ['@blockgraph/driver-qcow2/node', '@blockgraph/driver-qcow2'],
    exportName: 'qcow2Driver',
    name: 'qcow2',
    kind: 'format',
    magic: new Uint8Array([0x51, 0x46, 0x49, 0xfb]),
  },
  { pkg: '@blockgraph/filter-cor', exportName: 'copyOnReadDriver', name: 'copy-on-read', kind: 'filter' },
];

const ascii = (text: string): Uint8Array => Uint8Array.from(text, (c) => c.charCodeAt(0));
const at = (head: Uint8Array, offset: number, bytes: Uint8Array): boolean =>
  head.length >= offset + bytes.length && bytes.every((b, i) => head[offset + i] === b);

/**
 * Formats QEMU reads and blockgraph has no driver for, by the signatures QEMU's probes look for. A probe that
 * finds nothing else would call such an image raw, and a write would then go over its header: these are
 * refused instead (`-f raw` still opens the file as raw data).
 */
const FOREIGN_FORMATS: readonly { name: string; match: (head: Uint8Array) => boolean }[] = [
  { name: 'qcow', match: (h) => at(h, 0, new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1])) },
  { name: 'vmdk', match: (h) => at(h, 0, ascii('KDMV')) || at(h, 0, ascii('COWD')) || at(h, 0, ascii('# Disk DescriptorFile')) },
  { name: 'vdi', match: (h) => at(h, 64, new Uint8Array([0x7f, 0x10, 0xda, 0xbe])) },
  { name: 'qed', match: (h) => at(h, 0, ascii('QED\0')) },
  { name: 'vpc', match: (h) => at(h, 0, ascii('conectix')) },
  { name: 'vhdx', match: (h) => at(h, 0, ascii('vhdxfile')) },
  { name: 'parallels', match: (h) => at(h, 0, ascii('WithoutFreeSpace')) || at(h, 0, ascii('WithouFreSpacExt')) },
  { name: 'bochs', match: (h) => at(h, 0, ascii('Bochs Virtual HD Image')) },
  { name: 'luks', match: (h) => at(h, 0, new Uint8Array([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])) },
];

/** The QEMU format an image's first bytes say it is in, when blockgraph has no driver for it. */
export function foreignFormat(head: Uint8Array): string | undefined {
  return FOREIGN_FORMATS.find((f) => f.match(head))?.name;
}

export function foreignFormatMessage(name: string): string {
  return `Image format '${name}' is not supported by blockgraph (use -f raw to open the file as raw data)`;
}

/** Is this error "the package is not installed" (rather than a broken package)? */
export function isModuleMissing(e: unknown, pkg: string): boolean {
  const code = (e as { code?: string } | null)?.code;
  const msg = String((e as Error | null)?.message ?? '');
  const dir = pkg.replace('@blockgraph/', 'packages/');
  if (code === 'ERR_MODULE_NOT_FOUND' || code === 'ERR_PACKAGE_PATH_NOT_EXPORTED' || code === 'MODULE_NOT_FOUND') {
    return msg.includes(pkg) || msg.includes(dir);
  }
  // Vite's module runner (tests) words it differently.
  return /Failed to (load|resolve)|Could not resolve|Cannot find (module|package)/i.test(msg) && (msg.includes(pkg) || msg.includes(dir));
}

export function notInstalledMessage(d: OptionalDriver): string {
  return `Format '${d.name}' is not supported here: the driver package ${d.pkg} is not installed`;
}

function placeholder(d: OptionalDriver): BlockDriver {
  const fail = (): never => {
    throw new BlockError('ENOTSUP', notInstalledMessage(d));
  };
  const magic = d.magic;
  return defineBlockDriver({
    name: d.name,
    kind: d.kind,
    description: `(not installed: ${d.pkg})`,
    capabilities: { ...NO_CAPABILITIES, write: true },
    options: { file: { type: 'ref' }, backing: { type: 'ref', nullable: true } },
    createOptions: {},
    probe: magic ? (head) => (at(head, 0, magic) ? 100 : 0) : undefined,
    open: async () => fail(),
    create: async () => fail(),
  });
}

/** The drivers that are placeholders (their package is missing). */
export const missingDrivers = new Set<string>();

let loaded: Promise<BlockDriver[]> | undefined;

/**
 * BLOCKGRAPH_WITHOUT=pkg[,pkg]: behave as if those optional packages were not installed (to see, and test, what
 * a minimal install does).
 */
function withheld(pkg: string): boolean {
  return (process.env.BLOCKGRAPH_WITHOUT ?? '').split(',').map((s) => s.trim()).includes(pkg);
}

async function importOptional(d: OptionalDriver): Promise<BlockDriver> {
  if (withheld(d.pkg)) {
    missingDrivers.add(d.name);
    return placeholder(d);
  }
  for (const entry of d.entries ?? [d.pkg]) {
    try {
      // A variable specifier: the package is optional and may not exist at type-check time.
      const mod = (await import(entry)) as Record<string, unknown>;
      const drv = mod[d.exportName] as BlockDriver | undefined;
      if (!drv) throw new Error(`${entry} does not export ${d.exportName}`);
      return drv;
    } catch (e) {
      if (!isModuleMissing(e, d.pkg)) throw e;
    }
  }
  missingDrivers.add(d.name);
  return placeholder(d);
}

/** Every driver the CLI can use, loaded once. */
export function loadDrivers(): Promise<BlockDriver[]> {
  loaded ??= (async () => {
    const [raw, file, ...optional] = await Promise.all([
      import('@blockgraph/driver-raw'),
      import('@blockgraph/driver-raw/file'),
      ...OPTIONAL_DRIVERS.map(importOptional),
    ]);
    return [raw.rawDriver, raw.nullCoDriver, raw.memoryDriver, file.fileDriver, ...(optional as BlockDriver[])];
  })();
  return loaded;
}

export async function createGraph(): Promise<Graph> {
  const registry = new DriverRegistry();
  registry.register(...(await loadDrivers()));
  return new Graph({ registry });
}

export function isAvailable(name: string): boolean {
  return !missingDrivers.has(name);
}
