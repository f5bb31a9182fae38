/**
 * How QEMU reads option values written as text: sizes (util/cutils.c qemu_strtosz, 7.2), numbers
 * (qemu_strtou64/qemu_strtoi64 with base 0, as QemuOpts and the QAPI keyval visitor use them) and booleans
 * (qapi_bool_parse). Values are bigints: sizes and numbers go up to 2^64 - 1.
 *
 * Sizes: decimal integer, optional fraction, optional binary suffix b/k/M/G/T/P/E (case-insensitive); "0x..."
 * hex (a suffix on hex works but is deprecated); no negative numbers; a fraction needs a suffix ("1.5k" yes,
 * "1.5" no), and rounds half up ("0.7k" is 717).
 */

export const INT64_MAX = 2n ** 63n - 1n;
const U64 = 2n ** 64n;

/** A size or number read from text: its value, or why it was refused (EINVAL: malformed; ERANGE: too large). */
export type QemuNumberParse = { ok: true; value: bigint; warning?: string } | { ok: false; error: 'EINVAL' | 'ERANGE' };

const INT64_MIN = -(2n ** 63n);
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** qemu_strtosz()'s unit suffixes, either case (ASCII only): the multiple of a byte each stands for. */
const SUFFIX_MUL = new Map<string, bigint>(
  [...'bkmgtpe'].flatMap((c, i): [string, bigint][] => [
    [c, 1n << BigInt(10 * i)],
    [c.toUpperCase(), 1n << BigInt(10 * i)],
  ]),
);

function suffixMul(c: string | undefined): bigint {
  return (c !== undefined && SUFFIX_MUL.get(c)) || 0n;
}

/**
 * strtoull(): leading blanks, a sign, then digits of `base` (0: "0x" hex, "0" octal, else decimal). Null when no
 * digit was consumed. Overflow saturates (range); a minus sign negates modulo 2^64, as C does.
 */
function strtou64(s: string, start: number, base: 0 | 10 | 16): { value: bigint; end: number; range: boolean; neg: boolean; magnitude: bigint } | null {
  let i = start;
  while (i < s.length && /\s/.test(s[i]!)) i++;
  let neg = false;
  if (s[i] === '+' || s[i] === '-') {
    neg = s[i] === '-';
    i++;
  }
  let radix: 8 | 10 | 16 = base === 0 ? 10 : base;
  if ((base === 16 || base === 0) && s[i] === '0' && (s[i + 1] === 'x' || s[i + 1] === 'X') && /[0-9a-fA-F]/.test(s[i + 2] ?? '')) {
    i += 2;
    radix = 16;
  } else if (base === 0 && s[i] === '0') {
    radix = 8;
  }
  const digitRe = radix === 10 ? /[0-9]/ : radix === 8 ? /[0-7]/ : /[0-9a-fA-F]/;
  const from = i;
  let v = 0n;
  while (i < s.length && digitRe.test(s[i]!)) {
    v = v * BigInt(radix) + BigInt(parseInt(s[i]!, radix));
    i++;
  }
  if (i === from) return null;
  const range = v >= U64;
  const magnitude = v;
  if (neg && !range) v = (U64 - v) % U64;
  return { value: range ? U64 - 1n : v, end: i, range, neg, magnitude };
}

/** qemu_strtou64(text, NULL, 0): a QemuOpts number. "-1" is accepted and wraps to 2^64 - 1, as in QEMU. */
export function parseQemuU64(text: string): QemuNumberParse {
  const r = strtou64(text, 0, 0);
  if (!r || r.end !== text.length) return { ok: false, error: 'EINVAL' };
  if (r.range) return { ok: false, error: 'ERANGE' };
  return { ok: true, value: r.value };
}

/** qemu_strtoi64(text, NULL, 0): a signed integer (the QAPI keyval visitor's int64 members). */
export function parseQemuI64(text: string): QemuNumberParse {
  const r = strtou64(text, 0, 0);
  if (!r || r.end !== text.length) return { ok: false, error: 'EINVAL' };
  const v = r.neg ? -r.magnitude : r.magnitude;
  if (r.range || v > INT64_MAX || v < INT64_MIN) return { ok: false, error: 'ERANGE' };
  return { ok: true, value: v };
}

/** parseQemuI64() as a JavaScript number: NaN when malformed or beyond ±(2^53 - 1), where it would not be exact. */
export function parseQemuInteger(text: string): number {
  const r = parseQemuI64(text);
  return r.ok && r.value <= MAX_SAFE && r.value >= -MAX_SAFE ? Number(r.value) : NaN;
}

/** qapi_bool_parse(): on/yes/true/y and off/no/false/n, nothing else (case matters). */
export function parseQemuBool(text: string): boolean | undefined {
  switch (text) {
    case 'on':
    case 'yes':
    case 'true':
    case 'y':
      return true;
    case 'off':
    case 'no':
    case 'false':
    case 'n':
      return false;
    default:
      return undefined;
  }
}

/** qemu_strtosz(): the whole string must be consumed. */
export function parseQemuSize(text: string): QemuNumberParse {
  const first = strtou64(text, 0, 10);
  if (!first) return { ok: false, error: 'EINVAL' };
  if (first.range) return { ok: false, error: 'ERANGE' };
  if (text.slice(0, first.end).includes('-')) return { ok: false, error: 'EINVAL' };
  let val = first.value;
  let end = first.end;
  let valf = 0n;
  let warning: string | undefined;
  let isHex = false;
  if (val === 0n && (text[end] === 'x' || text[end] === 'X')) {
    const h = strtou64(text, 0, 16);
    if (!h) return { ok: false, error: 'EINVAL' };
    if (h.range) return { ok: false, error: 'ERANGE' };
    val = h.value;
    end = h.end;
    if (text[end] === '.') return { ok: false, error: 'EINVAL' };
    isHex = true;
  } else if (text[end] === '.') {
    // strtod on the fraction; an exponent makes the whole input invalid.
    const m = /^\.[0-9]*(?:[eE][+-]?[0-9]+)?/.exec(text.slice(end))!;
    const f = m[0];
    if (/[eE]/.test(f)) return { ok: false, error: 'EINVAL' };
    const fraction = f === '.' ? 0 : Number(`0${f}`);
    end += f.length;
    // (uint64_t)(fraction * 2^64); out-of-range conversions yield 0 on x86-64, as in QEMU.
    const scaled = fraction * 2 ** 64;
    valf = scaled >= 2 ** 64 ? 0n : BigInt(Math.floor(scaled));
  }
  let mul = suffixMul(text[end]);
  if (mul > 0n) {
    if (isHex) warning = `Using a multiplier suffix on hex numbers is deprecated: ${text}`;
    end++;
  } else {
    mul = 1n;
  }
  if (mul === 1n) {
    if (valf !== 0n) return { ok: false, error: 'EINVAL' };
  } else {
    // 64.64 fixed point times the multiplier, 0.5 rounds up.
    const full = val * mul * U64 + valf * mul;
    const rounded = (full + (1n << 63n)) >> 64n;
    if (rounded >= U64) return { ok: false, error: 'ERANGE' };
    val = rounded;
  }
  if (end !== text.length) return { ok: false, error: 'EINVAL' };
  return warning ? { ok: true, value: val, warning } : { ok: true, value: val };
}
