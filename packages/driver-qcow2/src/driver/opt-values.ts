/**
 * Values of the create options that `amend` and `measure` read themselves (qemu_opt_get_bool/number/size), with
 * the messages QemuOpts gives for malformed ones. Typed values pass; text is read as QEMU reads it.
 */
import { BlockError, parseQemuBool, parseQemuInteger, parseSize } from '@blockgraph/block-core';

export function optBool(name: string, v: unknown): boolean {
  const b = typeof v === 'boolean' ? v : parseQemuBool(String(v));
  if (b === undefined) throw new BlockError('EINVAL', `Parameter '${name}' expects 'on' or 'off'`);
  return b;
}

export function optNumber(name: string, v: unknown): number {
  const n = typeof v === 'number' ? v : parseQemuInteger(String(v));
  if (Number.isNaN(n)) throw new BlockError('EINVAL', `Parameter '${name}' expects a number`);
  return n;
}

export function optSize(name: string, v: unknown): number {
  const n = typeof v === 'number' ? v : parseSize(String(v));
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new BlockError(
      'EINVAL',
      `Parameter '${name}' expects a non-negative number below 2^64 Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta- and exabytes, respectively.`,
    );
  }
  return n;
}
