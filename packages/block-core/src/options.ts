import { BlockError } from './errors.js';
import { parseQemuBool, parseQemuInteger, parseQemuSize } from './option-values.js';

/**
 * Driver options are described by a small schema so that every driver rejects unknown or malformed options
 * the same way, with a message naming the option. Values may arrive typed (TypeScript API, JSON) or as strings
 * (`-o key=value`, `--image-opts` dotted keys); strings are converted here.
 */
export type OptionSpec =
  | { type: 'string'; description?: string; required?: boolean; default?: string }
  | { type: 'boolean'; description?: string; required?: boolean; default?: boolean }
  | { type: 'integer'; description?: string; required?: boolean; default?: number; min?: number; max?: number }
  | { type: 'size'; description?: string; required?: boolean; default?: number; min?: number; max?: number }
  | { type: 'enum'; values: readonly string[]; description?: string; required?: boolean; default?: string }
  /** A child reference: a node name or a nested options object (QAPI BlockdevRef). */
  | { type: 'ref'; description?: string; required?: boolean; nullable?: boolean }
  /**
   * A nested object: free-form and validated by the driver itself, or, with `fields`, a group of dotted options
   * (`encrypt.format`, `encrypt.key-secret`) validated here like top-level ones.
   */
  | { type: 'object'; description?: string; required?: boolean; fields?: OptionSchema };

export type OptionSchema = Readonly<Record<string, OptionSpec>>;
export type Options = Record<string, unknown>;

/** `l2-cache-size` → `l2CacheSize`; keys already in camelCase stay as they are. */
export function camelCase(key: string): string {
  return key.replace(/[-_]([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** `l2CacheSize` → `l2-cache-size`: QEMU's spelling, used in messages. */
export function kebabCase(key: string): string {
  return key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

/**
 * Option keys come from users: "toString", "constructor" or "__proto__" are keys like any other, never what
 * Object.prototype has under that name.
 */
function ownValue(o: Options, key: string): unknown {
  return Object.hasOwn(o, key) ? o[key] : undefined;
}

function setOwn(o: Options, key: string, value: unknown): void {
  Object.defineProperty(o, key, { value, writable: true, enumerable: true, configurable: true });
}

/**
 * Turn QEMU-style option objects (kebab-case keys, dotted keys such as `file.filename`) into nested camelCase
 * objects. Works recursively on nested references.
 */
export function normaliseOptions(input: Options): Options {
  const out: Options = {};
  for (const [rawKey, value] of Object.entries(input)) {
    if (value === undefined) continue;
    const path = rawKey.split('.').map(camelCase);
    let target = out;
    for (let i = 0; i < path.length - 1; i++) {
      const k = path[i]!;
      const cur = ownValue(target, k);
      if (cur === undefined || typeof cur !== 'object' || cur === null) {
        if (typeof cur === 'string') {
          throw new BlockError('EINVAL', `Cannot set '${rawKey}': '${kebabCase(path.slice(0, i + 1).join('.'))}' is a node reference`);
        }
        setOwn(target, k, {});
      }
      target = target[k] as Options;
    }
    const last = path[path.length - 1]!;
    const v = value !== null && typeof value === 'object' && !Array.isArray(value) && !(value instanceof Uint8Array)
      ? normaliseOptions(value as Options)
      : value;
    const cur = ownValue(target, last);
    if (typeof cur === 'object' && cur !== null && typeof v === 'object' && v !== null) {
      setOwn(target, last, { ...(cur as Options), ...(v as Options) });
    } else {
      setOwn(target, last, v);
    }
  }
  return out;
}

/** QEMU's size syntax ("64M", "1.5G", "512", "0x10000"; binary units, see parseQemuSize). NaN when malformed. */
export function parseSize(text: string): number {
  const r = parseQemuSize(text);
  return r.ok && r.value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(r.value) : NaN;
}

function parseBool(v: unknown): boolean | undefined {
  if (typeof v === 'boolean') return v;
  return typeof v === 'string' ? parseQemuBool(v) : undefined;
}

function describe(spec: OptionSpec): string {
  switch (spec.type) {
    case 'boolean':
      return "'on' or 'off'";
    case 'integer':
      return 'an integer';
    case 'size':
      return 'a size value';
    case 'enum':
      return spec.values.map((v) => `'${v}'`).join(', ');
    case 'string':
      return 'a string';
    case 'ref':
      return 'a node name or an options object';
    case 'object':
      return 'an object';
  }
}

export function convertOption(
  name: string,
  spec: OptionSpec,
  value: unknown,
  unknown: (key: string) => string = (k) => `Invalid parameter '${k}'`,
): unknown {
  const bad = (): never => {
    throw new BlockError('EINVAL', `Parameter '${kebabCase(name)}' expects ${describe(spec)}`);
  };
  switch (spec.type) {
    case 'string':
      if (typeof value === 'string') return value;
      if (typeof value === 'number') return String(value);
      return bad();
    case 'boolean': {
      const b = parseBool(value);
      return b === undefined ? bad() : b;
    }
    case 'integer':
    case 'size': {
      let n: number;
      if (typeof value === 'number') n = value;
      else if (typeof value === 'string') n = spec.type === 'size' ? parseSize(value) : parseQemuInteger(value);
      else return bad();
      if (!Number.isSafeInteger(n)) return bad();
      if (spec.min !== undefined && n < spec.min) {
        throw new BlockError('EINVAL', `Parameter '${kebabCase(name)}' must be at least ${spec.min}`);
      }
      if (spec.max !== undefined && n > spec.max) {
        throw new BlockError('EINVAL', `Parameter '${kebabCase(name)}' must be at most ${spec.max}`);
      }
      return n;
    }
    case 'enum':
      if (typeof value === 'string' && spec.values.includes(value)) return value;
      if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') {
        throw new BlockError('EINVAL', `Parameter '${kebabCase(name)}' does not accept value '${String(value)}'`);
      }
      return bad();
    case 'ref':
      if (value === null && spec.nullable) return null;
      if (typeof value === 'string' || (typeof value === 'object' && value !== null && !Array.isArray(value))) return value;
      return bad();
    case 'object':
      if (typeof value !== 'object' || value === null) return bad();
      if (!spec.fields) return value;
      if (Array.isArray(value)) return bad();
      return validateFields(spec.fields, value as Options, `${name}.`, unknown);
  }
}

/**
 * Validate `options` against `schema`: convert strings, apply defaults, reject unknown keys and missing
 * required ones. `unknown` words the unknown-option error, e.g. "Block format 'qcow2' does not support the
 * option 'x'" (QEMU's text).
 */
export function validateOptions(
  schema: OptionSchema,
  options: Options,
  unknown: (key: string) => string = (k) => `Invalid parameter '${k}'`,
): Options {
  return validateFields(schema, options, '', unknown);
}

/** validateOptions() for the options under `prefix` (`encrypt.`), named in messages by their dotted path. */
function validateFields(schema: OptionSchema, options: Options, prefix: string, unknown: (key: string) => string): Options {
  const out: Options = {};
  for (const [key, value] of Object.entries(options)) {
    const spec = Object.hasOwn(schema, key) ? schema[key] : undefined;
    if (!spec) throw new BlockError('EINVAL', unknown(kebabCase(prefix + key)));
    if (value === undefined) continue;
    out[key] = convertOption(prefix + key, spec, value, unknown);
  }
  for (const [key, spec] of Object.entries(schema)) {
    if (out[key] !== undefined) continue;
    if ('default' in spec && spec.default !== undefined) out[key] = spec.default;
    else if (spec.required) throw new BlockError('EINVAL', `Parameter '${kebabCase(prefix + key)}' is required`);
  }
  return out;
}
