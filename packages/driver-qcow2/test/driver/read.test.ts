/**
 * Reading: every kind of image qemu-img 7.2 makes reads back exactly what `qemu-img convert -O raw` produces,
 * and block status answers what `qemu-img map` prints.
 */
import { statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { makeSourceData } from '../format/source-data.js';
import { Workdir, blockgraphMap, firstDiff, hasQemu, newGraph, openQcow2, qemuImgMap, qemuRawContent, readAll, run } from './helpers.js';

interface ImageCase {
  name: string;
  make(w: Workdir): string;
}

const std = (w: Workdir, name: string, opts: string[] = [], size = '64M'): string => {
  w.create(name, size, opts);
  w.qemuIo(name, 'write -q -P 0xab 0 1M', 'write -q -P 0xcd 4M 64k', 'write -q -z 8M 128k', 'write -q -P 0x17 12345 6789');
  return name;
};

const CASES: ImageCase[] = [
  { name: 'defaults', make: (w) => std(w, 'std.qcow2') },
  { name: 'v2 (compat=0.10)', make: (w) => std(w, 'v2.qcow2', ['compat=0.10']) },
  { name: '512 B clusters', make: (w) => std(w, 'c512.qcow2', ['cluster_size=512'], '16M') },
  { name: '4 KiB clusters', make: (w) => std(w, 'c4k.qcow2', ['cluster_size=4k']) },
  { name: '2 MiB clusters', make: (w) => std(w, 'c2m.qcow2', ['cluster_size=2M']) },
  ...[1, 2, 4, 8, 32, 64].map((bits) => ({
    name: `refcount_bits=${bits}`,
    make: (w: Workdir) => std(w, `rb${bits}.qcow2`, [`refcount_bits=${bits}`]),
  })),
  {
    name: 'extended_l2',
    make: (w) => {
      w.create('el2.qcow2', '64M', ['extended_l2=on']);
      w.qemuIo('el2.qcow2', 'write -q 0 4k', 'write -q -P 3 70k 10k', 'write -q -z 1M 8k', 'write -q -P 9 2M 64k', 'write -q -P 5 3M 2k');
      return 'el2.qcow2';
    },
  },
  {
    name: 'extended_l2 over a backing file',
    make: (w) => {
      std(w, 'el2base.qcow2');
      w.create('el2ov.qcow2', '64M', ['extended_l2=on'], ['-b', 'el2base.qcow2', '-F', 'qcow2']);
      w.qemuIo('el2ov.qcow2', 'write -q -P 1 6k 2k', 'write -q -z 1M 4k', 'write -q -P 2 4M 3k', 'discard -q 8M 64k');
      return 'el2ov.qcow2';
    },
  },
  ...(['zlib', 'zstd'] as const).map((type) => ({
    name: `compressed (${type}, qemu-img convert -c)`,
    make: (w: Workdir) => {
      w.write('src.raw', makeSourceData());
      w.qemuImg('convert', '-c', '-O', 'qcow2', '-o', `compression_type=${type}`, 'src.raw', `comp-${type}.qcow2`);
      return `comp-${type}.qcow2`;
    },
  })),
  {
    name: 'compressed with 4 KiB and 2 MiB clusters',
    make: (w) => {
      w.write('src.raw', makeSourceData());
      w.qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4k', 'src.raw', 'comp4k.qcow2');
      w.qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=2M', 'comp4k.qcow2', 'comp2m.qcow2');
      return 'comp2m.qcow2';
    },
  },
  {
    name: 'qemu-io write -c on a fresh image (data past EOF)',
    make: (w) => {
      w.create('wc.qcow2', '4M');
      w.qemuIo('wc.qcow2', 'write -q -c -P 7 0 64k', 'write -q -c 64k 64k', 'write -q -P 8 1M 4k');
      return 'wc.qcow2';
    },
  },
  {
    name: 'backing chain with relative names (qcow2 over qcow2 over raw)',
    make: (w) => {
      w.qemuImg('create', '-q', '-f', 'raw', 'base.raw', '8M');
      run('qemu-io', ['-f', 'raw', '-c', 'write -q -P 0x11 0 3M', '-c', 'write -q -P 0x12 5M 1M', 'base.raw'], w.dir);
      w.create('mid.qcow2', '8M', [], ['-b', 'base.raw', '-F', 'raw']);
      w.qemuIo('mid.qcow2', 'write -q -P 0x21 1M 100k', 'write -q -z 2M 64k', 'discard -q 5M 128k');
      w.create('top.qcow2', '16M', [], ['-b', 'mid.qcow2', '-F', 'qcow2']);
      w.qemuIo('top.qcow2', 'write -q -P 0x31 1000 5000', 'write -q -P 0x32 7M 2M');
      return 'top.qcow2';
    },
  },
  {
    name: 'backing file without a format (probed)',
    make: (w) => {
      std(w, 'pbase.qcow2');
      w.qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'pbase.qcow2', '-F', 'qcow2', 'pov.qcow2', '64M');
      // Drop the backing format extension: rewrite the backing file link without -F.
      run('qemu-img', ['rebase', '-u', '-b', 'pbase.qcow2', 'pov.qcow2'], w.dir);
      w.qemuIo('pov.qcow2', 'write -q -P 0x44 512k 1M');
      return 'pov.qcow2';
    },
  },
  ...(['metadata', 'falloc', 'full'] as const).map((p) => ({
    name: `preallocation=${p}`,
    make: (w: Workdir) => {
      w.create(`pre-${p}.qcow2`, '8M', [`preallocation=${p}`]);
      w.qemuIo(`pre-${p}.qcow2`, 'write -q -P 0x61 100k 300k', 'write -q -z 4M 64k');
      return `pre-${p}.qcow2`;
    },
  })),
  {
    name: 'external data file',
    make: (w) => {
      w.create('df.qcow2', '8M', [`data_file=${w.path('df.data')}`]);
      w.qemuIo('df.qcow2', 'write -q -P 0x71 0 1M', 'write -q -z 2M 64k', 'write -q -P 0x72 3M 5k');
      return 'df.qcow2';
    },
  },
  {
    name: 'external data file, data_file_raw',
    make: (w) => {
      w.create('dfr.qcow2', '8M', [`data_file=${w.path('dfr.data')}`, 'data_file_raw=on']);
      w.qemuIo('dfr.qcow2', 'write -q -P 0x73 0 1M', 'write -q -z 2M 64k', 'write -q -P 0x74 3M 5k');
      return 'dfr.qcow2';
    },
  },
  {
    name: 'with internal snapshots',
    make: (w) => {
      std(w, 'snap.qcow2');
      w.qemuImg('snapshot', '-c', 'one', 'snap.qcow2');
      w.qemuIo('snap.qcow2', 'write -q -P 0x81 512k 1M', 'write -q -z 4M 64k');
      w.qemuImg('snapshot', '-c', 'two', 'snap.qcow2');
      w.qemuIo('snap.qcow2', 'write -q -P 0x82 0 64k', 'discard -q 8M 128k');
      return 'snap.qcow2';
    },
  },
  {
    name: 'with persistent bitmaps',
    make: (w) => {
      std(w, 'bm.qcow2');
      w.qemuImg('bitmap', '--add', 'bm.qcow2', 'bitmap0');
      w.qemuImg('bitmap', '--add', '-g', '4096', 'bm.qcow2', 'b1');
      return 'bm.qcow2';
    },
  },
  {
    name: 'lazy refcounts, dirty after a crash (read-only)',
    make: (w) => {
      w.create('lazy.qcow2', '8M', ['lazy_refcounts=on']);
      w.qemuIoCrash('lazy.qcow2', 'write -P 0x91 0 1M', 'write -P 0x92 3M 64k', 'abort');
      return 'lazy.qcow2';
    },
  },
];

describe.skipIf(!hasQemu)('reading images made by qemu-img 7.2', () => {
  let w: Workdir;
  beforeAll(() => {
    w = new Workdir();
  });
  afterAll(() => w.cleanup());

  test.each(CASES.map((c) => [c.name, c] as const))('%s: read equals qemu-img convert -O raw', async (_n, c) => {
    const image = c.make(w);
    const expected = qemuRawContent(w.path(image), w.path(image + '.expected.raw'));
    const before = statSync(w.path(image)).mtimeMs;
    const graph = newGraph();
    try {
      const { node, be } = await openQcow2(graph, w.path(image), { readOnly: true });
      expect(node.totalBytes).toBe(expected.length);
      const got = await readAll(be, node.totalBytes);
      const d = firstDiff(got, expected);
      expect(d, `first difference at byte ${d}`).toBe(-1);
      // Unaligned reads across cluster boundaries too.
      for (const [off, len] of [
        [511, 1027],
        [65535, 3],
        [1048575, 70000],
        [node.totalBytes - 4097, 4097],
      ] as const) {
        if (off + len > node.totalBytes) continue;
        const part = await be.read(off, len);
        expect(firstDiff(part, expected.subarray(off, off + len))).toBe(-1);
      }
    } finally {
      await graph.close();
    }
    expect(statSync(w.path(image)).mtimeMs).toBe(before);
  });

  test.each(
    ['defaults', 'v2 (compat=0.10)', 'extended_l2', 'extended_l2 over a backing file', 'backing chain with relative names (qcow2 over qcow2 over raw)', 'external data file', 'with internal snapshots'].map(
      (n) => [n, CASES.find((c) => c.name === n)!] as const,
    ),
  )('%s: block status agrees with qemu-img map', async (_n, c) => {
    const image = c.make(w);
    const graph = newGraph();
    try {
      const { node } = await openQcow2(graph, w.path(image), { readOnly: true });
      expect(await blockgraphMap(node)).toEqual(qemuImgMap(w, image));
    } finally {
      await graph.close();
    }
  });

  test('persistent bitmaps are listed by info on a read-only open', async () => {
    const image = CASES.find((c) => c.name === 'with persistent bitmaps')!.make(w);
    const graph = newGraph();
    try {
      const { node } = await openQcow2(graph, w.path(image), { readOnly: true });
      const info = node.impl.getSpecificInfo!()!;
      const qemu = JSON.parse(run('qemu-img', ['info', '--output=json', image], w.dir).out) as {
        'format-specific': { data: Record<string, unknown> };
      };
      expect(info.data.bitmaps).toEqual(qemu['format-specific'].data.bitmaps);
    } finally {
      await graph.close();
    }
  });
});
