import { describe, expect, it } from 'vitest';
import { cvtstr, fixed, general, sizeToStr } from '../src/lib/printf.js';
import { getopt, GetoptError } from '../src/lib/getopt.js';
import { qdictHash, qdictOrder, toQemuJson, toQemuJsonPretty } from '../src/lib/qjson.js';
import { hasHelpOption, isValidOptionList, parseQemuOpts } from '../src/lib/qemu-opts.js';
import { compareBuffers, findNonzero } from '../src/commands/compare.js';
import { isAllocatedSectorsMin } from '../src/commands/convert.js';
import { mergeable, type MapEntry } from '../src/commands/map.js';

describe('printf', () => {
  it('rounds exactly, ties to even, like glibc', () => {
    expect(fixed(3.8125, 3)).toBe('3.812');
    expect(fixed(3.8135, 3)).toBe('3.813'); // the double nearest 3.8135 lies below the tie
    expect(fixed(0.125, 2)).toBe('0.12');
    expect(fixed(0.375, 2)).toBe('0.38');
    expect(fixed(2.5, 0)).toBe('2');
    expect(fixed(100, 2)).toBe('100.00');
    expect(fixed(0, 4)).toBe('0.0000');
  });
  it('%g', () => {
    expect(general(64, 3)).toBe('64');
    expect(general(1.5, 3)).toBe('1.5');
    expect(general(196, 3)).toBe('196');
    expect(general(0.9765625, 3)).toBe('0.977');
    expect(general(999.5, 3)).toBe('1e+03');
    expect(general(0.0001234, 3)).toBe('0.000123');
    expect(general(0.00001234, 3)).toBe('1.23e-05');
  });
  it("size_to_str", () => {
    expect(sizeToStr(0)).toBe('0 B');
    expect(sizeToStr(1048576)).toBe('1 MiB');
    expect(sizeToStr(69632)).toBe('68 KiB');
    expect(sizeToStr(1000)).toBe('0.977 KiB');
    expect(sizeToStr(999)).toBe('999 B');
    expect(sizeToStr(1024)).toBe('1 KiB');
    expect(sizeToStr(67108864)).toBe('64 MiB');
    expect(sizeToStr(1572864)).toBe('1.5 MiB');
    expect(sizeToStr(2 ** 40)).toBe('1 TiB');
  });
  it("qemu-io's cvtstr", () => {
    expect(cvtstr(65536)).toBe('64 KiB');
    expect(cvtstr(1536)).toBe('1.500 KiB');
    expect(cvtstr(3997696)).toBe('3.812 MiB');
    expect(cvtstr(512)).toBe('512 bytes');
    expect(cvtstr(0)).toBe('0 bytes');
    expect(cvtstr(12623849.1)).toBe('12.039 MiB');
  });
});

describe('getopt_long', () => {
  const longs = [
    { name: 'output', arg: 'required' as const, key: 'output' },
    { name: 'backing-chain', arg: 'none' as const, key: 'bc' },
  ];
  it('clusters, attached and separate arguments, permutation, long abbreviations', () => {
    const r = getopt(['-qf', 'raw', 'a', '--out=json', '-Fqcow2', '--backing-chain', 'b', '--', '-c'], ':f:F:q', longs);
    expect(r.options.map((o) => [o.key, o.value])).toEqual([
      ['q', undefined],
      ['f', 'raw'],
      ['output', 'json'],
      ['F', 'qcow2'],
      ['bc', undefined],
    ]);
    expect(r.operands).toEqual(['a', 'b', '-c']);
  });
  it('reports unknown options and missing arguments', () => {
    expect(() => getopt(['-z'], ':f:')).toThrow("unrecognized option '-z'");
    expect(() => getopt(['--bogus'], ':f:', longs)).toThrow("unrecognized option '--bogus'");
    expect(() => getopt(['-f'], ':f:')).toThrow("missing argument for option '-f'");
    expect(() => getopt(['--output'], ':f:', longs)).toThrow(GetoptError);
  });
});

describe('QEMU JSON', () => {
  it("orders keys as QEMU's QDict iterates them", () => {
    const keys = ['filename', 'format', 'dirty-flag', 'actual-size', 'virtual-size', 'cluster-size', 'backing-filename', 'full-backing-filename', 'backing-filename-format', 'format-specific'];
    expect(qdictOrder(keys)).toEqual([
      'backing-filename-format',
      'virtual-size',
      'filename',
      'cluster-size',
      'format',
      'actual-size',
      'format-specific',
      'full-backing-filename',
      'backing-filename',
      'dirty-flag',
    ]);
    expect(qdictHash('type') % 512).toBe(425);
  });
  it('pretty and compact forms', () => {
    expect(toQemuJsonPretty({ required: 1, 'fully-allocated': 2 })).toBe('{\n    "required": 1,\n    "fully-allocated": 2\n}');
    expect(toQemuJsonPretty({ a: [], b: {} })).toBe('{\n    "a": [\n    ],\n    "b": {\n    }\n}');
    expect(toQemuJson({ driver: 'null-co', size: 1048576 })).toBe('{"driver": "null-co", "size": 1048576}');
    expect(toQemuJson('a"\\\n\u00e9')).toBe('"a\\"\\\\\\n\\u00E9"');
  });
});

describe('option strings', () => {
  it('parses QemuOpts with ,, escapes', () => {
    expect(parseQemuOpts('driver=qcow2,file.filename=a,,b,lazy_refcounts,nopreallocation')).toEqual([
      { key: 'driver', value: 'qcow2' },
      { key: 'file.filename', value: 'a,b' },
      { key: 'lazy_refcounts', value: 'on', shortForm: 'lazy_refcounts' },
      { key: 'preallocation', value: 'off', shortForm: 'nopreallocation' },
    ]);
    expect(isValidOptionList('size=1M,')).toBe(false);
    expect(isValidOptionList('a=b,,')).toBe(true);
    expect(isValidOptionList(',a')).toBe(false);
    expect(hasHelpOption('cluster_size=4k,help')).toBe(true);
    expect(hasHelpOption('?')).toBe(true);
    expect(hasHelpOption('x=help')).toBe(false);
  });
});

describe('algorithms ported from qemu-img', () => {
  it('compare_buffers / find_nonzero work in 512-byte sectors', () => {
    const a = new Uint8Array(4096);
    const b = new Uint8Array(4096);
    b[1500] = 1;
    expect(compareBuffers(a, b, 4096)).toEqual({ differ: false, pnum: 1024 });
    expect(findNonzero(b, 4096)).toBe(1024);
    expect(findNonzero(a, 4096)).toBe(-1);
    expect(findNonzero(b, 1500)).toBe(-1);
  });
  it('is_allocated_sectors_min swallows short zero runs', () => {
    const buf = new Uint8Array(512 * 32);
    buf.fill(1, 0, 512); // sector 0 data
    buf.fill(1, 512 * 4, 512 * 5); // sector 4 data (3 zero sectors between: < min 8)
    buf.fill(1, 512 * 20, 512 * 21); // sector 20 data after 15 zero sectors
    const words = new Uint32Array(buf.buffer);
    expect(isAllocatedSectorsMin(words, 0, 32, 8, 0, 8)).toEqual({ allocated: true, pnum: 8 });
  });
  it('merges map entries as qemu-img does', () => {
    const e = (o: Partial<MapEntry>): MapEntry => ({ start: 0, length: 10, data: true, zero: false, depth: 0, present: true, ...o });
    expect(mergeable(e({ offset: 0, filename: 'a' }), e({ start: 10, offset: 10, filename: 'a' }))).toBe(true);
    expect(mergeable(e({ offset: 0, filename: 'a' }), e({ start: 10, offset: 20, filename: 'a' }))).toBe(false);
    expect(mergeable(e({}), e({ start: 10, depth: 1 }))).toBe(false);
    expect(mergeable(e({ length: 0 }), e({}))).toBe(false);
  });
});

describe('trace forwarding', () => {
  it('publishes block-core trace events on diagnostics_channel and prints them when asked', async () => {
    const { forwardTraces } = await import('../src/lib/trace.js');
    const { trace } = await import('@blockgraph/block-core');
    const diagnostics = await import('node:diagnostics_channel');
    const seen: unknown[] = [];
    const onMsg = (m: unknown) => seen.push(m);
    diagnostics.subscribe('blockgraph:job.state', onMsg);
    const lines: string[] = [];
    const stop = forwardTraces((l) => lines.push(l));
    trace('job.state', { id: 'j', from: 'running', to: 'ready' });
    stop();
    trace('job.state', { id: 'j', from: 'ready', to: 'waiting' });
    diagnostics.unsubscribe('blockgraph:job.state', onMsg);
    expect(seen).toEqual([{ id: 'j', from: 'running', to: 'ready' }]);
    expect(lines).toEqual(['{"event":"job.state","id":"j","from":"running","to":"ready"}\n']);
  });
});
