/**
 * The few printf conversions QEMU's tools print numbers with, exact to the last digit: glibc rounds the exact
 * binary value of a double, ties to even ("%.3f" of 3.8125 is "3.812"), where JavaScript's toFixed rounds
 * ties up. Also QEMU's own size formatters (size_to_str, qemu-io's cvtstr).
 */

/** An exact non-negative rational num/den for a finite double. */
function exact(x: number): { num: bigint; den: bigint } {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const hi = view.getUint32(0);
  const lo = view.getUint32(4);
  const expBits = (hi >>> 20) & 0x7ff;
  let mant = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  let exp: number;
  if (expBits === 0) {
    exp = -1074;
  } else {
    mant |= 1n << 52n;
    exp = expBits - 1075;
  }
  if (exp >= 0) return { num: mant << BigInt(exp), den: 1n };
  return { num: mant, den: 1n << BigInt(-exp) };
}

/** round(num/den) with ties to even. */
function roundHalfEven(num: bigint, den: bigint): bigint {
  const q = num / den;
  const r2 = (num % den) * 2n;
  if (r2 > den || (r2 === den && q % 2n === 1n)) return q + 1n;
  return q;
}

/** C's "%.<digits>f". */
export function fixed(x: number, digits: number): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'nan' : x > 0 ? 'inf' : '-inf';
  const neg = x < 0 || Object.is(x, -0);
  const { num, den } = exact(Math.abs(x));
  const scaled = roundHalfEven(num * 10n ** BigInt(digits), den);
  let s = scaled.toString();
  if (digits > 0) {
    s = s.padStart(digits + 1, '0');
    s = `${s.slice(0, -digits)}.${s.slice(-digits)}`;
  }
  return (neg ? '-' : '') + s;
}

/** C's "%.<precision>g" (no '#' flag: trailing zeros removed). */
export function general(x: number, precision: number): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'nan' : x > 0 ? 'inf' : '-inf';
  const p = precision === 0 ? 1 : precision;
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  const neg = x < 0;
  const { num, den } = exact(Math.abs(x));
  // Exponent X of the value rounded to p significant digits.
  let X = Math.floor(Math.log10(Math.abs(x)));
  let digits: bigint;
  for (;;) {
    const shift = p - 1 - X;
    digits = shift >= 0 ? roundHalfEven(num * 10n ** BigInt(shift), den) : roundHalfEven(num, den * 10n ** BigInt(-shift));
    if (digits >= 10n ** BigInt(p)) X++;
    else if (digits < 10n ** BigInt(p - 1)) X--;
    else break;
  }
  let out: string;
  if (X < p && X >= -4) {
    out = fixed(Math.abs(x), p - 1 - X);
    if (out.includes('.')) out = out.replace(/0+$/, '').replace(/\.$/, '');
  } else {
    let m = digits.toString();
    m = m.length > 1 ? `${m[0]}.${m.slice(1)}`.replace(/0+$/, '').replace(/\.$/, '') : m;
    out = `${m}e${X < 0 ? '-' : '+'}${String(Math.abs(X)).padStart(2, '0')}`;
  }
  return (neg ? '-' : '') + out;
}

/** "%#x" (0 prints as "0"). */
export function hex(n: number): string {
  return n === 0 ? '0' : `0x${n.toString(16)}`;
}

/** printf's field widths count bytes, not characters: a UTF-8 name takes as many columns as it has bytes. */
function byteLength(s: string): number {
  let n = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    n += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
  }
  return n;
}

/** "%-<width>s" */
export function padRight(s: string, width: number): string {
  const n = byteLength(s);
  return n >= width ? s : s + ' '.repeat(width - n);
}

/** "%<width>s" */
export function padLeft(s: string, width: number): string {
  const n = byteLength(s);
  return n >= width ? s : ' '.repeat(width - n) + s;
}

const SIZE_SUFFIXES = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];

/** QEMU's size_to_str(): "64 MiB", "196 KiB", "1.5 GiB", "0 B". */
export function sizeToStr(val: number): string {
  // frexp(val / (1000/1024)) exponent, minus one, divided by ten: switches unit when the number reaches 1000.
  const v = val / (1000 / 1024);
  const e = v === 0 ? 0 : Math.floor(Math.log2(v)) + 1;
  // Guard against log2 rounding at exact powers of two.
  let exp = e;
  if (v !== 0) {
    if (2 ** (exp - 1) > v) exp--;
    else if (2 ** exp <= v) exp++;
  }
  const i = Math.trunc((exp - 1) / 10);
  const div = 2 ** (i * 10);
  return `${general(val / div, 3)} ${SIZE_SUFFIXES[i]}B`;
}

/** qemu-io's cvtstr(): "64 KiB", "1.500 KiB", "3.812 MiB", "512 bytes". */
export function cvtstr(value: number): string {
  const units: [number, string][] = [
    [2 ** 60, ' EiB'],
    [2 ** 50, ' PiB'],
    [2 ** 40, ' TiB'],
    [2 ** 30, ' GiB'],
    [2 ** 20, ' MiB'],
    [2 ** 10, ' KiB'],
  ];
  let str: string;
  let suffix = ' bytes';
  const unit = units.find(([u]) => value >= u);
  if (unit) {
    suffix = unit[1];
    str = fixed(value / unit[0], 3);
  } else {
    str = fixed(value, 6);
  }
  const trim = str.indexOf('.000');
  return trim >= 0 ? str.slice(0, trim) + suffix : str + suffix;
}
