/**
 * How QEMU reads option values written as text (qemu_strtosz, qemu_strtou64/qemu_strtoi64 with base 0,
 * qapi_bool_parse), and the option conversion built on it. The expected values are what qemu-img 7.2 does with
 * the same text (the CLI's create tests replay a set of them against qemu-img itself).
 */
import { describe, expect, it } from 'vitest';
import {
  convertOption,
  normaliseOptions,
  parseQemuBool,
  parseQemuI64,
  parseQemuInteger,
  parseQemuSize,
  parseQemuU64,
  parseSize,
  validateOptions,
} from '../src/index.js';

describe('sizes (qemu_strtosz)', () => {
  const ok = (s: string, v: bigint) => expect(parseQemuSize(s)).toMatchObject({ ok: true, value: v });
  const bad = (s: string, e: 'EINVAL' | 'ERANGE') => expect(parseQemuSize(s)).toEqual({ ok: false, error: e });
  it('accepts what qemu-img accepts', () => {
    ok('1.5k', 1536n);
    ok('0x1000', 4096n);
    ok(' 12', 12n);
    ok('+12', 12n);
    ok('1.k', 1024n);
    ok('1b', 1n);
    ok('10K', 10240n);
    ok('3.0000001k', 3072n);
    ok('1.0', 1n);
    ok('64M', 67108864n);
    ok('1G', 1073741824n);
    ok('7E', 8070450532247928832n);
    expect(parseQemuSize('0x10k')).toMatchObject({ ok: true, value: 16384n, warning: expect.stringContaining('deprecated') });
  });
  it('rejects what qemu-img rejects', () => {
    bad('1.5', 'EINVAL');
    bad('1e3', 'EINVAL');
    bad('1.5e3k', 'EINVAL');
    bad('0.5', 'EINVAL');
    bad('1KiB', 'EINVAL');
    bad('1k2', 'EINVAL');
    bad('', 'EINVAL');
    bad('-5', 'EINVAL');
    bad('x', 'EINVAL');
    bad('18446744073709551616', 'ERANGE');
    bad('16E', 'ERANGE');
  });
});

describe('numbers (qemu_strtou64 / qemu_strtoi64, base 0)', () => {
  it('reads decimal, 0x hex and 0 octal, with leading blanks and a sign, and nothing after the digits', () => {
    expect(parseQemuU64('16')).toEqual({ ok: true, value: 16n });
    expect(parseQemuU64('0x10')).toEqual({ ok: true, value: 16n });
    expect(parseQemuU64('010')).toEqual({ ok: true, value: 8n });
    expect(parseQemuU64(' 16')).toEqual({ ok: true, value: 16n });
    expect(parseQemuU64('+16')).toEqual({ ok: true, value: 16n });
    expect(parseQemuU64('0')).toEqual({ ok: true, value: 0n });
    // strtoull negates modulo 2^64.
    expect(parseQemuU64('-1')).toEqual({ ok: true, value: 2n ** 64n - 1n });
    for (const bad of ['', '16 ', '1k', '0x', '08', '1.5', 'x', '-']) expect(parseQemuU64(bad), bad).toEqual({ ok: false, error: 'EINVAL' });
    expect(parseQemuU64('99999999999999999999999')).toEqual({ ok: false, error: 'ERANGE' });
  });
  it('signed: the int64 range, negative numbers as themselves', () => {
    expect(parseQemuI64('-1')).toEqual({ ok: true, value: -1n });
    expect(parseQemuI64('-0x10')).toEqual({ ok: true, value: -16n });
    expect(parseQemuI64('9223372036854775807')).toEqual({ ok: true, value: 2n ** 63n - 1n });
    expect(parseQemuI64('-9223372036854775808')).toEqual({ ok: true, value: -(2n ** 63n) });
    expect(parseQemuI64('9223372036854775808')).toEqual({ ok: false, error: 'ERANGE' });
    expect(parseQemuI64('-9223372036854775809')).toEqual({ ok: false, error: 'ERANGE' });
    expect(parseQemuI64('12a')).toEqual({ ok: false, error: 'EINVAL' });
  });
});

describe('booleans (qapi_bool_parse)', () => {
  it('on/yes/true/y and off/no/false/n, case-sensitive', () => {
    for (const t of ['on', 'yes', 'true', 'y']) expect(parseQemuBool(t), t).toBe(true);
    for (const f of ['off', 'no', 'false', 'n']) expect(parseQemuBool(f), f).toBe(false);
    for (const x of ['ON', 'Y', '1', '0', '', 'maybe', ' on']) expect(parseQemuBool(x), x).toBeUndefined();
  });
});

describe('option conversion from text', () => {
  it('sizes round half up and take hex; fractions need a suffix', () => {
    expect(parseSize('0.7k')).toBe(717);
    expect(parseSize('63.9999k')).toBe(65536);
    expect(parseSize('0x10000')).toBe(65536);
    expect(parseSize('1.5')).toBeNaN();
    expect(parseSize('64k ')).toBeNaN();
    // Beyond 2^53 a JavaScript number is no longer exact: refused rather than rounded.
    expect(parseSize('8E')).toBeNaN();
    expect(convertOption('clusterSize', { type: 'size' }, '63.9999k')).toBe(65536);
    expect(() => convertOption('clusterSize', { type: 'size' }, '1.5')).toThrow("Parameter 'cluster-size' expects a size value");
  });
  it('integers take base 0 and a sign, booleans the QAPI words', () => {
    expect(convertOption('refcountBits', { type: 'integer' }, '0x10')).toBe(16);
    expect(convertOption('refcountBits', { type: 'integer' }, '010')).toBe(8);
    expect(convertOption('refcountBits', { type: 'integer' }, '-1')).toBe(-1);
    expect(() => convertOption('refcountBits', { type: 'integer' }, '16 ')).toThrow("Parameter 'refcount-bits' expects an integer");
    expect(convertOption('lazyRefcounts', { type: 'boolean' }, 'y')).toBe(true);
    expect(convertOption('lazyRefcounts', { type: 'boolean' }, 'n')).toBe(false);
    expect(() => convertOption('lazyRefcounts', { type: 'boolean' }, 'maybe')).toThrow("Parameter 'lazy-refcounts' expects");
  });
});

describe('parseQemuInteger', () => {
  it('a JavaScript number where it is exact, NaN otherwise', () => {
    expect(parseQemuInteger('0x10')).toBe(16);
    expect(parseQemuInteger('-9007199254740991')).toBe(-9007199254740991);
    expect(parseQemuInteger('9007199254740992')).toBeNaN();
    expect(parseQemuInteger('1.0')).toBeNaN();
  });
});

describe('grouped options (an object spec with fields)', () => {
  const schema = {
    size: { type: 'size' },
    encrypt: {
      type: 'object',
      fields: { format: { type: 'string' }, keySecret: { type: 'string', required: true }, iterTime: { type: 'integer', default: 2000 } },
    },
    rules: { type: 'object' },
  } as const;
  it('are converted, defaulted and checked like top-level options, from dotted keys', () => {
    const o = validateOptions(schema, normaliseOptions({ size: '1M', 'encrypt.format': 'luks', 'encrypt.key-secret': 's0' }));
    expect(o).toEqual({ size: 1048576, encrypt: { format: 'luks', keySecret: 's0', iterTime: 2000 } });
    expect(validateOptions(schema, normaliseOptions({ 'encrypt.key-secret': 's0', 'encrypt.iter-time': '0x10' }))).toEqual({
      encrypt: { keySecret: 's0', iterTime: 16 },
    });
  });
  it('are named by their dotted path in errors', () => {
    const err = (o: Record<string, unknown>) => () => validateOptions(schema, normaliseOptions(o));
    expect(err({ 'encrypt.key-secret': 's0', 'encrypt.cipher': 'x' })).toThrow("Invalid parameter 'encrypt.cipher'");
    expect(err({ 'encrypt.key-secret': 's0', 'encrypt.iter-time': 'abc' })).toThrow("Parameter 'encrypt.iter-time' expects an integer");
    expect(err({ 'encrypt.format': 'luks' })).toThrow("Parameter 'encrypt.key-secret' is required");
    expect(err({ encrypt: ['luks'] })).toThrow("Parameter 'encrypt' expects an object");
  });
  it('an object spec without fields stays free-form (lists too)', () => {
    expect(validateOptions(schema, { rules: [{ event: 'read_aio' }] })).toEqual({ rules: [{ event: 'read_aio' }] });
  });
});
