/**
 * Tiny runner-independent assertions: they throw a `ConformanceError` with a plain message, so the suite works
 * under vitest, node:test or anything else that treats a thrown error as a failure.
 */
import type { BlockErrorCode } from '@blockgraph/block-core';

export class ConformanceError extends Error {
  override readonly name = 'ConformanceError';
}

export function fail(message: string, cause?: unknown): never {
  throw new ConformanceError(message, cause === undefined ? undefined : { cause });
}

export function assert(cond: unknown, message: string | (() => string)): asserts cond {
  if (!cond) fail(typeof message === 'function' ? message() : message);
}

export function assertEqual<T>(actual: T, expected: T, what: string): void {
  if (!Object.is(actual, expected)) fail(`${what}: expected ${show(expected)}, got ${show(actual)}`);
}

/**
 * A BlockError, recognised by shape as well as by class so that a second copy of block-core in a driver's
 * node_modules does not make every check fail.
 */
export function isBlockErrorLike(e: unknown, codes?: readonly BlockErrorCode[]): e is Error & { code: BlockErrorCode } {
  if (!(e instanceof Error) || e.name !== 'BlockError') return false;
  const code = (e as { code?: unknown }).code;
  if (typeof code !== 'string') return false;
  return codes === undefined || (codes as readonly string[]).includes(code);
}

export function describeError(e: unknown): string {
  if (isBlockErrorLike(e)) return `BlockError ${e.code}: ${e.message}`;
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return `non-error value ${show(e)}`;
}

/** `p` must reject with a BlockError (with one of `codes`, when given); returns the error. */
export async function assertRejects(
  p: Promise<unknown>,
  codes: readonly BlockErrorCode[] | undefined,
  what: string,
): Promise<Error & { code: BlockErrorCode }> {
  let result: unknown;
  try {
    result = await p;
  } catch (e) {
    if (isBlockErrorLike(e, codes)) return e;
    const want = codes ? `a BlockError with code ${codes.join(' or ')}` : 'a BlockError';
    return fail(`${what}: expected ${want}, got ${describeError(e)}`, e);
  }
  return fail(`${what}: expected it to fail${codes ? ` with ${codes.join(' or ')}` : ''}, but it succeeded (${show(result)})`);
}

export function show(v: unknown): string {
  if (v instanceof Uint8Array) return `Uint8Array(${v.byteLength})`;
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'bigint') return `${v}n`;
  if (v === undefined) return 'undefined';
  try {
    const s = JSON.stringify(v);
    return s === undefined ? String(v) : s.length > 200 ? s.slice(0, 200) + '…' : s;
  } catch {
    return String(v);
  }
}

/**
 * Settle `p` within `ms` or fail with a message naming what hung. The timer is cleared either way, so a passing
 * check leaves nothing behind.
 */
export async function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ConformanceError(`${what} did not settle within ${ms} ms (hang)`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
