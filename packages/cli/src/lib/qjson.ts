/**
 * QEMU's JSON output, byte for byte. QEMU builds a QDict (a 512-bucket hash table) and prints it in bucket
 * order, newest entry first within a bucket; so qemu-img's keys come out in a fixed but scrambled order
 * ("backing-filename-format" before "virtual-size"). Objects given here are inserted in their JS key order,
 * which callers keep equal to QEMU's QAPI field order. Pretty printing is QEMU's JSONWriter: four spaces per
 * level, `"key": value`, empty containers as "{\n<indent>}".
 */

export type QValue = string | number | boolean | bigint | null | readonly QValue[] | { readonly [key: string]: QValue | undefined };

const QDICT_BUCKET_MAX = 512;

/** qdict.c tdb_hash(). */
export function qdictHash(name: string): number {
  const bytes = new TextEncoder().encode(name);
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    value = (value + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  }
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/** Keys of an object in the order QEMU's qdict_first()/qdict_next() visits them. */
export function qdictOrder(keys: readonly string[]): string[] {
  const buckets = keys.map((k, i) => ({ k, i, b: qdictHash(k) % QDICT_BUCKET_MAX }));
  buckets.sort((x, y) => x.b - y.b || y.i - x.i);
  return buckets.map((x) => x.k);
}

function quoted(str: string): string {
  let out = '"';
  for (const ch of str) {
    const cp = ch.codePointAt(0)!;
    switch (ch) {
      case '"':
        out += '\\"';
        break;
      case '\\':
        out += '\\\\';
        break;
      case '\b':
        out += '\\b';
        break;
      case '\f':
        out += '\\f';
        break;
      case '\n':
        out += '\\n';
        break;
      case '\r':
        out += '\\r';
        break;
      case '\t':
        out += '\\t';
        break;
      default:
        if (cp > 0xffff) {
          const hi = 0xd800 + ((cp - 0x10000) >> 10);
          const lo = 0xdc00 + ((cp - 0x10000) & 0x3ff);
          out += `\\u${hi.toString(16).toUpperCase().padStart(4, '0')}\\u${lo.toString(16).toUpperCase().padStart(4, '0')}`;
        } else if (cp < 0x20 || cp >= 0x7f) {
          out += `\\u${cp.toString(16).toUpperCase().padStart(4, '0')}`;
        } else {
          out += ch;
        }
    }
  }
  return out + '"';
}

function scalar(v: QValue): string | undefined {
  if (v === null) return 'null';
  if (typeof v === 'string') return quoted(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') {
    if (Number.isInteger(v)) return String(v);
    return String(v);
  }
  return undefined;
}

function entries(obj: { readonly [key: string]: QValue | undefined }): [string, QValue][] {
  const present = Object.keys(obj).filter((k) => obj[k] !== undefined);
  return qdictOrder(present).map((k) => [k, obj[k] as QValue]);
}

/** qobject_to_json_pretty(). */
export function toQemuJsonPretty(value: QValue): string {
  let out = '';
  const write = (v: QValue, depth: number): void => {
    const s = scalar(v);
    if (s !== undefined) {
      out += s;
      return;
    }
    const nl = (d: number) => `\n${' '.repeat(d * 4)}`;
    if (Array.isArray(v)) {
      out += '[';
      v.forEach((item, i) => {
        out += (i ? ',' : '') + nl(depth + 1);
        write(item, depth + 1);
      });
      out += nl(depth) + ']';
      return;
    }
    out += '{';
    entries(v as { [key: string]: QValue }).forEach(([k, item], i) => {
      out += (i ? ',' : '') + nl(depth + 1) + quoted(k) + ': ';
      write(item, depth + 1);
    });
    out += nl(depth) + '}';
  };
  write(value, 0);
  return out;
}

/** qobject_to_json() (compact: ", " and ": " separators), as in json:{...} filenames. */
export function toQemuJson(value: QValue): string {
  const s = scalar(value);
  if (s !== undefined) return s;
  if (Array.isArray(value)) return `[${value.map(toQemuJson).join(', ')}]`;
  return `{${entries(value as { [key: string]: QValue })
    .map(([k, v]) => `${quoted(k)}: ${toQemuJson(v)}`)
    .join(', ')}}`;
}
