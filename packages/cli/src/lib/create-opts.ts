/**
 * Image creation options the qemu-img way: `-o help` listings (qemu_opts_print_help), the "Formatting ..."
 * line (qemu_opts_print) and the option list handed to the driver's create().
 */
import { camelCase, kebabCase, parseQemuBool, parseQemuSize, parseQemuU64, type BlockDriver, type OptionSchema, type OptionSpec } from '@blockgraph/block-core';
import { CliError } from './context.js';
import { parseQemuOpts } from './qemu-opts.js';

/** `clusterSize` → `cluster_size` (QEMU's create option spelling). */
export function snakeCase(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

function typeName(spec: OptionSpec): string {
  switch (spec.type) {
    case 'boolean':
      return 'bool (on/off)';
    case 'integer':
      return 'num';
    case 'size':
      return 'size';
    default:
      return 'str';
  }
}

/**
 * A driver's options in QEMU's spelling (`cluster_size`; grouped ones as QEMU names them, `encrypt.key-secret`),
 * without the ones the CLI fills in itself.
 */
export function optionList(schema: OptionSchema): [string, OptionSpec][] {
  const list: [string, OptionSpec][] = [];
  for (const [k, spec] of Object.entries(schema)) {
    if (k === 'filename') continue;
    if (spec.type === 'object' && spec.fields) {
      for (const [f, field] of Object.entries(spec.fields)) list.push([`${snakeCase(k)}.${kebabCase(f)}`, field]);
    } else {
      list.push([snakeCase(k), spec]);
    }
  }
  return list;
}

/** Options the driver takes at creation (optionList()). */
export function createOptionList(driver: BlockDriver): [string, OptionSpec][] {
  return optionList(driver.createOptions ?? {});
}

/** qemu_opts_print_help() lines, sorted. */
export function helpLines(list: [string, OptionSpec][]): string[] {
  const seen = new Set<string>();
  const lines: string[] = [];
  for (const [name, spec] of list) {
    if (seen.has(name)) continue;
    seen.add(name);
    let s = `  ${name}=<${typeName(spec)}>`;
    if (spec.description) {
      if (s.length < 24) s += ' '.repeat(24 - s.length);
      s += ` - ${spec.description}`;
    }
    lines.push(s);
  }
  return lines.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** print_block_option_help(): the format's options, plus the protocol's when a file name is given. */
export function blockOptionHelp(format: BlockDriver, protocol: BlockDriver | undefined): string {
  if (!format.createOptions || !format.create) throw new CliError(`Format driver '${format.name}' does not support image creation`);
  const list = createOptionList(format);
  if (protocol) list.push(...createOptionList(protocol));
  let s = protocol ? 'Supported options:\n' : `Supported ${format.name} options:\n`;
  const lines = helpLines(list);
  s += lines.length ? lines.join('\n') + '\n' : '';
  if (!protocol) s += '\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n';
  return s;
}

/**
 * QEMU prints create options in the order of its option lists (format list, then the protocol's), with the
 * defaults that list declares. Known formats carry that order here; other drivers print theirs in schema order.
 */
const PRINT_ORDER: Record<string, { order: string[]; defaults: Record<string, string> }> = {
  raw: { order: ['size', 'nocow', 'preallocation', 'extent_size_hint'], defaults: {} },
  file: { order: ['size', 'nocow', 'preallocation', 'extent_size_hint'], defaults: {} },
  qcow2: {
    order: [
      'encryption',
      'encrypt.format',
      'encrypt.key-secret',
      'encrypt.cipher-alg',
      'encrypt.cipher-mode',
      'encrypt.ivgen-alg',
      'encrypt.ivgen-hash-alg',
      'encrypt.hash-alg',
      'encrypt.iter-time',
      'cluster_size',
      'extended_l2',
      'preallocation',
      'compression_type',
      'size',
      'compat',
      'backing_file',
      'backing_fmt',
      'data_file',
      'data_file_raw',
      'lazy_refcounts',
      'refcount_bits',
      'nocow',
      'extent_size_hint',
    ],
    defaults: { cluster_size: '65536', extended_l2: 'off', compression_type: 'zlib', lazy_refcounts: 'off', refcount_bits: '16' },
  },
};

export interface CreateSpec {
  /** -o entries as given, in QEMU's spelling. */
  entries: { key: string; value: string }[];
}

const SIZE_HINT = 'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.';

/**
 * qemu_opt_parse(): read a -o value by its option's type, as QemuOpts does before any driver sees it, or fail in
 * QEMU's words. Sizes and numbers come back in decimal, the form QEMU prints and hands on ("0x10" is 16, "010"
 * is 8, "63.9999k" is 65536).
 */
export function parseOptValue(key: string, value: string, spec: OptionSpec | undefined): string {
  switch (spec?.type) {
    case 'size': {
      const r = parseQemuSize(value);
      if (r.ok) return r.value.toString();
      if (r.error === 'ERANGE') throw new CliError(`Value '${value}' is out of range for parameter '${key}'`);
      throw new CliError(`Parameter '${key}' expects a non-negative number below 2^64\n${SIZE_HINT}`);
    }
    case 'integer': {
      const r = parseQemuU64(value);
      // QemuOpts keeps a uint64_t and prints it signed; drivers read it as int64 ("-1" stays -1).
      if (r.ok) return BigInt.asIntN(64, r.value).toString();
      if (r.error === 'ERANGE') throw new CliError(`Value '${value}' is too large for parameter '${key}'`);
      throw new CliError(`Parameter '${key}' expects a number`);
    }
    case 'boolean':
      if (parseQemuBool(value) === undefined) throw new CliError(`Parameter '${key}' expects 'on' or 'off'`);
      return value;
    default:
      return value;
  }
}

/**
 * qemu_opts_do_parse(): a -o string into entries, in order: each name must be known (else QEMU's "Invalid
 * parameter 'x'"), each value is read by its option's type; keys come back as the option's own name.
 */
export function parseCreateOptions(text: string | undefined, specs: readonly [string, OptionSpec][]): { key: string; value: string }[] {
  if (text === undefined) return [];
  const entries = parseQemuOpts(text);
  for (const e of entries) {
    // QemuOpts names are exact: `cluster-size` is not `cluster_size`.
    const found = specs.find(([name]) => name === e.key);
    if (!found) throw new CliError(`Invalid parameter '${e.key}'`);
    e.value = parseOptValue(e.key, e.value, found[1]);
    e.key = found[0];
  }
  return entries;
}

function formatValue(value: string): string {
  return value.replace(/,/g, ',,');
}

/** The text after "Formatting 'x', fmt=F " (qemu_opts_print with " " separator). */
export function formatOptionsLine(fmt: string, drivers: BlockDriver[], given: Map<string, string>): string {
  const specs = new Map<string, OptionSpec>();
  for (const d of drivers) for (const [k, s] of createOptionList(d)) if (!specs.has(k)) specs.set(k, s);
  const known = PRINT_ORDER[fmt];
  const order = known ? [...known.order] : [...specs.keys()];
  for (const k of given.keys()) if (!order.includes(k)) order.push(k);
  const parts: string[] = [];
  for (const name of order) {
    const spec = specs.get(name);
    let value = given.get(name);
    if (value === undefined) {
      if (known) value = known.defaults[name];
      else if (spec && 'default' in spec && spec.default !== undefined) value = typeof spec.default === 'boolean' ? (spec.default ? 'on' : 'off') : String(spec.default);
    }
    if (value === undefined) continue;
    parts.push(`${name}=${formatValue(value)}`);
  }
  return parts.join(' ');
}

/** -o entries to the driver's create options object (camelCase keys, dotted keys nested later). */
export function entriesToOptions(entries: { key: string; value: string }[]): Record<string, string> {
  const o: Record<string, string> = {};
  for (const e of entries) o[e.key.split('.').map(camelCase).join('.')] = e.value;
  return o;
}
