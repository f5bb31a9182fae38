/** Argument helpers shared by the qemu-img style subcommands. */
import { INT64_MAX, parseQemuSize } from '@blockgraph/block-core';
import { CliError, usageError } from './context.js';
import { getopt, GetoptError, type LongOption, type ParsedOption } from './getopt.js';
import type { Ctx } from './context.js';

export function parseArgs(
  argv: readonly string[],
  shortSpec: string,
  longOpts: readonly LongOption[] = [],
): { options: ParsedOption[]; operands: string[] } {
  try {
    return getopt(argv, shortSpec, longOpts);
  } catch (e) {
    if (e instanceof GetoptError) throw usageError(e.message);
    throw e;
  }
}

export const IMAGE_OPTS: LongOption = { name: 'image-opts', arg: 'none', key: 'image-opts' };
export const FORCE_SHARE: LongOption = { name: 'force-share', arg: 'none', key: 'U' };
export const OUTPUT: LongOption = { name: 'output', arg: 'required', key: 'output' };
export const HELP: LongOption = { name: 'help', arg: 'none', key: 'h' };
export const OBJECT: LongOption = { name: 'object', arg: 'required', key: 'object' };

export type OutputFormat = 'human' | 'json';

export function parseOutputFormat(value: string | undefined): OutputFormat {
  if (value === undefined || value === 'human') return 'human';
  if (value === 'json') return 'json';
  throw new CliError('--output must be used with human or json as argument.');
}

/** qemu-img's cvtnum_full() with the value as it is (up to INT64_MAX); the two-part message joined into one line. */
export function cvtnumBig(ctx: Ctx, name: string, value: string, min = 0n, max = INT64_MAX): bigint {
  const r = parseQemuSize(value);
  if (!r.ok && r.error === 'EINVAL') {
    throw new CliError(
      `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`,
    );
  }
  if (!r.ok || r.value > max || r.value < min) {
    throw new CliError(`Invalid ${name} specified. Must be between ${min} and ${max}.`);
  }
  if (r.warning) ctx.warn(r.warning);
  return r.value;
}

/** cvtnum_full() for values used as byte counts here: beyond 2^53 they are refused with a message saying so. */
export function cvtnum(ctx: Ctx, name: string, value: string, min = 0n, max = INT64_MAX): number {
  const v = cvtnumBig(ctx, name, value, min, max);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new CliError(`Invalid ${name} specified: ${value} is beyond ${Number.MAX_SAFE_INTEGER}, the largest size blockgraph handles.`);
  }
  return Number(v);
}

/** Accumulate -o arguments like accumulate_options(). */
export function accumulateOptions(current: string | undefined, arg: string, isValid: (s: string) => boolean): string {
  if (!isValid(arg)) throw new CliError(`Invalid option list: ${arg}`);
  return current === undefined ? arg : `${current},${arg}`;
}
