/**
 * QEMU's size syntax (util/cutils.c qemu_strtosz, 7.2): decimal integer, optional fraction, optional binary
 * suffix b/k/M/G/T/P/E (case-insensitive); "0x..." hex (a suffix on hex works but is deprecated); no
 * negative numbers; a fraction needs a suffix ("1.5k" yes, "1.5" no).
 */

export const INT64_MAX = 2n ** 63n - 1n;
const U64 = 2n ** 64n;

export type SizeParse = { ok: true; value: bigint; warning?: string } | { ok: false; error: 'EINVAL' | 'ERANGE' };

function suffixMul(c: string | undefined): bigint {
  switch (c) {
    case 'b':
    case 'B':
      return 1n;
    case 'k':
    case 'K':
      return 1n << 10n;
    case 'm':
    case 'M':
      return 1n << 20n;
    case 'g':
    case 'G':
      return 1n << 30n;
    case 't':
    case 'T':
      return 1n << 40n;
    case 'p':
    case 'P':
      return 1n << 50n;
    case 'e':
    case 'E':
      return 1n << 60n;
    default:
      return 0n;
  }
}

/** strtoull(): returns [value, end index] or null when no digits were consumed. Overflow saturates (ERANGE). */
function strtou64(s: string, start: number, base: 10 | 16): { value: bigint; end: number; range: boolean; neg: boolean } | null {
  let i = start;
  while (i < s.length && /\s/.test(s[i]!)) i++;
  let neg = false;
  if (s[i] === '+' || s[i] === '-') {
    neg = s[i] === '-';
    i++;
  }
  if (base === 16 && s[i] === '0' && (s[i + 1] === 'x' || s[i + 1] === 'X') && /[0-9a-fA-F]/.test(s[i + 2] ?? '')) i += 2;
  const digitRe = base === 10 ? /[0-9]/ : /[0-9a-fA-F]/;
  const from = i;
  let v = 0n;
  while (i < s.length && digitRe.test(s[i]!)) {
    v = v * BigInt(base) + BigInt(parseInt(s[i]!, base));
    i++;
  }
  if (i === from) return null;
  const range = v >= U64;
  if (neg && !range) v = (U64 - v) % U64;
  return { value: range ? U64 - 1n : v, end: i, range, neg };
}

/** qemu_strtosz(): the whole string must be consumed. */
export function parseQemuSize(text: string): SizeParse {
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
