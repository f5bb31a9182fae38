import { BlockError } from './errors.js';
import { normaliseOptions, type Options } from './options.js';

/** QEMU's `json:{...}` pseudo-filename: the options object of the node to open. Null if not one. */
export function parseJsonFilename(filename: string): Options | null {
  if (!filename.startsWith('json:')) return null;
  const text = filename.slice(5);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new BlockError('EINVAL', `Could not parse the JSON options: ${jsonErrorText(text, e as Error)}`);
  }
  if (hasDuplicateKey(text)) throw new BlockError('EINVAL', 'Could not parse the JSON options: JSON parse error, duplicate key');
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new BlockError('EINVAL', 'Invalid JSON object given');
  }
  // QEMU flattens then re-nests dotted keys; normaliseOptions does both.
  return normaliseOptions(parsed as Options);
}

/** QEMU's wording where it is simple to tell (no input, input that ends too early); V8's otherwise. */
function jsonErrorText(text: string, e: Error): string {
  if (text.trim() === '') return 'Expecting a JSON value';
  const at = /at position (\d+)/.exec(e.message);
  const premature = /Unexpected end/.test(e.message) || (at !== null && Number(at[1]) >= text.trimEnd().length);
  return premature ? 'JSON parse error, premature EOI' : e.message;
}

/**
 * Does an object in this (valid) JSON text name a key twice? JSON.parse keeps the last one silently; QEMU refuses
 * the input, and a json: filename with two "driver" keys must not open the image as the other format.
 */
function hasDuplicateKey(text: string): boolean {
  const objects: (Set<string> | null)[] = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const top = objects[objects.length - 1];
      if (expectKey && top) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (top.has(key)) return true;
        top.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === '{') {
      objects.push(new Set());
      expectKey = true;
    } else if (c === '[') {
      objects.push(null);
    } else if (c === '}' || c === ']') {
      objects.pop();
    } else if (c === ',') {
      expectKey = objects[objects.length - 1] != null;
    }
  }
  return false;
}

/** path_combine(): a backing file name is relative to the directory of the image that names it. */
export function resolveRelativeFilename(base: string, name: string): string {
  if (name.startsWith('/') || /^[a-z][a-z0-9+.-]*:/i.test(name)) return name;
  const slash = base.lastIndexOf('/');
  if (slash < 0) return name;
  return base.slice(0, slash + 1) + name;
}
