import { BlockError } from './errors.js';
import { normaliseOptions, type Options } from './options.js';

/** QEMU's `json:{...}` pseudo-filename: the options object of the node to open. Null if not one. */
export function parseJsonFilename(filename: string): Options | null {
  if (!filename.startsWith('json:')) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(filename.slice(5));
  } catch (e) {
    throw new BlockError('EINVAL', `Could not parse the JSON options: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new BlockError('EINVAL', 'Invalid JSON object given');
  }
  // QEMU flattens then re-nests dotted keys; normaliseOptions does both.
  return normaliseOptions(parsed as Options);
}

/** path_combine(): a backing file name is relative to the directory of the image that names it. */
export function resolveRelativeFilename(base: string, name: string): string {
  if (name.startsWith('/') || /^[a-z][a-z0-9+.-]*:/i.test(name)) return name;
  const slash = base.lastIndexOf('/');
  if (slash < 0) return name;
  return base.slice(0, slash + 1) + name;
}
