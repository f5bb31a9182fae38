/**
 * Creation: our image is byte-identical to what `qemu-img create` writes for the same options, `qemu-img check`
 * finds it clean and `qemu-img info` says the same about both; option errors use QEMU's words.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { isBlockError, type Options } from '@blockgraph/block-core';
import { Workdir, hasQemu, newGraph, qemuCheck, run } from './helpers.js';

interface CreateCase {
  name: string;
  size: string;
  qemu: string[];
  ours: Options;
  backing?: boolean;
  dataFile?: boolean;
}

const CASES: CreateCase[] = [
  { name: 'defaults, 64M', size: '64M', qemu: [], ours: {} },
  { name: 'compat=0.10', size: '64M', qemu: ['compat=0.10'], ours: { compat: '0.10' } },
  { name: 'size not a multiple of 512 (rounded up)', size: '100000', qemu: [], ours: {} },
  { name: 'zero size', size: '0', qemu: [], ours: {} },
  { name: '10T (L1 table over several clusters)', size: '10T', qemu: [], ours: {} },
  { name: 'cluster_size=512', size: '1G', qemu: ['cluster_size=512'], ours: { cluster_size: 512 } },
  { name: 'cluster_size=4k', size: '64M', qemu: ['cluster_size=4k'], ours: { clusterSize: '4k' } },
  { name: 'cluster_size=2M', size: '10G', qemu: ['cluster_size=2M'], ours: { 'cluster-size': '2M' } },
  ...[1, 2, 4, 8, 32, 64].map((b) => ({ name: `refcount_bits=${b}`, size: '64M', qemu: [`refcount_bits=${b}`], ours: { refcount_bits: b } })),
  { name: 'extended_l2=on', size: '64M', qemu: ['extended_l2=on'], ours: { extended_l2: true } },
  { name: 'compression_type=zstd', size: '64M', qemu: ['compression_type=zstd'], ours: { compression_type: 'zstd' } },
  { name: 'lazy_refcounts=on', size: '64M', qemu: ['lazy_refcounts=on'], ours: { lazy_refcounts: 'on' } },
  { name: 'preallocation=metadata', size: '16M', qemu: ['preallocation=metadata'], ours: { preallocation: 'metadata' } },
  { name: 'preallocation=metadata, 4k clusters (many L2 tables)', size: '64M', qemu: ['preallocation=metadata', 'cluster_size=4k'], ours: { preallocation: 'metadata', cluster_size: 4096 } },
  { name: 'preallocation=metadata, odd size', size: '100000', qemu: ['preallocation=metadata'], ours: { preallocation: 'metadata' } },
  { name: 'preallocation=metadata, 512 B clusters, refcount_bits=64', size: '8M', qemu: ['preallocation=metadata', 'cluster_size=512', 'refcount_bits=64'], ours: { preallocation: 'metadata', cluster_size: 512, refcount_bits: 64 } },
  { name: 'preallocation=falloc', size: '64M', qemu: ['preallocation=falloc'], ours: { preallocation: 'falloc' } },
  { name: 'preallocation=full', size: '16M', qemu: ['preallocation=full'], ours: { preallocation: 'full' } },
  { name: 'preallocation=full, extended_l2', size: '16M', qemu: ['preallocation=full', 'extended_l2=on'], ours: { preallocation: 'full', extended_l2: true } },
  { name: 'backing file with format', size: '64M', qemu: ['backing_file=base.qcow2', 'backing_fmt=qcow2'], ours: { backing_file: 'base.qcow2', backing_fmt: 'qcow2' }, backing: true },
  { name: 'backing file, extended_l2, preallocation=metadata', size: '64M', qemu: ['backing_file=base.qcow2', 'backing_fmt=qcow2', 'extended_l2=on', 'preallocation=metadata'], ours: { backing_file: 'base.qcow2', backing_fmt: 'qcow2', extended_l2: true, preallocation: 'metadata' }, backing: true },
  { name: 'external data file', size: '4M', qemu: ['data_file=DATA'], ours: { data_file: 'DATA' }, dataFile: true },
  { name: 'external data file, data_file_raw', size: '4M', qemu: ['data_file=DATA', 'data_file_raw=on'], ours: { data_file: 'DATA', data_file_raw: true }, dataFile: true },
];

describe.skipIf(!hasQemu)('image creation', () => {
  let w: Workdir;
  beforeAll(() => {
    w = new Workdir();
    w.create('base.qcow2', '64M');
  });
  afterAll(() => w.cleanup());

  test.each(CASES.map((c, i) => [c.name, c, i] as const))('%s: byte-identical to qemu-img create', async (_n, c, i) => {
    const q = `q${i}.qcow2`;
    const o = `o${i}.qcow2`;
    const data = w.path(`data${i}`);
    w.qemuImg('create', '-q', '-f', 'qcow2', ...(c.qemu.length ? ['-o', c.qemu.join(',').replace('DATA', data)] : []), q, c.size);
    let qemuData: Uint8Array | null = null;
    if (c.dataFile) {
      qemuData = w.read(`data${i}`);
      run('rm', [data]);
    }
    const graph = newGraph();
    const ours: Options = { filename: w.path(o), size: c.size };
    for (const [k, v] of Object.entries(c.ours)) ours[k] = v === 'DATA' ? data : v;
    await graph.createImage('qcow2', ours);
    await graph.close();
    expect(run('cmp', [q, o], w.dir).out).toBe('');
    if (qemuData) expect(Buffer.compare(Buffer.from(w.read(`data${i}`)), Buffer.from(qemuData))).toBe(0);
    const chk = qemuCheck(w.path(o));
    expect(chk.status).toBe(0);
    const info = (f: string): Record<string, unknown> => {
      const j = JSON.parse(run('qemu-img', ['info', '-U', '--output=json', f], w.dir).out) as Record<string, unknown>;
      delete j.filename;
      delete j['actual-size'];
      return j;
    };
    expect(info(o)).toEqual(info(q));
  });

  test('option errors are worded like QEMU', async () => {
    const graph = newGraph();
    const err = (o: Options) => graph.createImage('qcow2', { filename: w.path('err.qcow2'), size: '1M', ...o }).then(() => null, (e: unknown) => e);
    const cases: [Options, string][] = [
      [{ cluster_size: 1000 }, 'Cluster size must be a power of two between 512 and 2048k'],
      [{ cluster_size: '4M' }, 'Cluster size must be a power of two between 512 and 2048k'],
      [{ extended_l2: true, cluster_size: 8192 }, 'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes'],
      [{ extended_l2: true, compat: '0.10' }, 'Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)'],
      [{ lazy_refcounts: true, compat: '0.10' }, 'Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)'],
      [{ compression_type: 'zstd', compat: '0.10' }, 'Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)'],
      [{ refcount_bits: 3 }, 'Refcount width must be a power of two and may not exceed 64 bits'],
      [{ refcount_bits: 128 }, 'Refcount width must be a power of two and may not exceed 64 bits'],
      [{ refcount_bits: 8, compat: '0.10' }, 'Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)'],
      [{ data_file_raw: true }, 'data-file-raw requires data-file'],
      [{ backing_fmt: 'qcow2' }, 'Backing format cannot be used without backing file'],
      [{ backing_file: 'base.qcow2', preallocation: 'metadata' }, 'Backing file and preallocation can only be used at the same time if extended_l2 is on'],
      [{ compat: '2.0' }, "Invalid compatibility level: '2.0'"],
    ];
    for (const [o, message] of cases) {
      const e = await err(o);
      expect(isBlockError(e, 'EINVAL'), `${JSON.stringify(o)}: ${String(e)}`).toBe(true);
      expect((e as Error).message).toBe(message);
    }
    await graph.close();
  });

  test('without a size, the backing file\'s size is used', async () => {
    const graph = newGraph();
    await graph.createImage('qcow2', { filename: w.path('nosize.qcow2'), backing_file: 'base.qcow2', backing_fmt: 'qcow2' });
    await graph.close();
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', 'nosize.qcow2'], w.dir).out) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(64 * 1024 * 1024);
  });
});
