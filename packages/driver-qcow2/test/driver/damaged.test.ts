/**
 * Damaged images give a clear BlockError — never a crash, a hang or (read-only) a write; a read-write user that
 * meets corrupt metadata marks the image corrupt with QEMU's message and stops writing.
 */
import { statSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { isBlockError } from '@blockgraph/block-core';
import { makeSourceData } from '../format/source-data.js';
import { Workdir, blockgraphMap, dataView, hasQemu, newGraph, openQcow2, qemuCheck, qemuImgMap, readAll, run } from './helpers.js';
import { qemuOpenMessage } from '../format/qemu.js';
import { headerExtensionSize, parseHeader } from '../../src/format/index.js';

const M = 1024 * 1024;

describe.skipIf(!hasQemu)('damaged images', () => {
  let w: Workdir;
  beforeEach(() => {
    w = new Workdir();
  });
  afterEach(() => w.cleanup());

  /** std image: L1 @0x30000, L2 @0x40000, data from 0x50000 (1 MiB of 0xab at guest 0). */
  function std(name = 'd.qcow2'): string {
    w.create(name, '64M');
    w.qemuIo(name, 'write -q -P 0xab 0 1M', 'write -q -P 0xcd 4M 64k');
    return name;
  }

  function patch(name: string, fn: (v: DataView, bytes: Uint8Array) => Uint8Array | void): void {
    const bytes = w.read(name);
    const out = fn(dataView(bytes), bytes) ?? bytes;
    w.write(name, out);
  }

  /** Open read-only and read everything; returns the first error (or null); checks the file is untouched. */
  async function readOnlyAttempt(name: string): Promise<unknown> {
    const before = w.read(name);
    const mtime = statSync(w.path(name)).mtimeMs;
    const graph = newGraph();
    let err: unknown = null;
    try {
      const { node, be } = await openQcow2(graph, w.path(name), { readOnly: true });
      try {
        await readAll(be, node.totalBytes, M);
      } catch (e) {
        err = e;
      }
    } catch (e) {
      err = e;
    } finally {
      await graph.close();
    }
    expect(Buffer.compare(Buffer.from(w.read(name)), Buffer.from(before))).toBe(0);
    expect(statSync(w.path(name)).mtimeMs).toBe(mtime);
    if (err !== null) expect(isBlockError(err), String(err)).toBe(true);
    return err;
  }

  test('bad magic', async () => {
    const name = std();
    patch(name, (v) => v.setUint32(0, 0x12345678));
    const err = await readOnlyAttempt(name);
    expect((err as Error).message).toBe('Image is not in qcow2 format');
  });

  test('huge l1_size: refused with QEMU\'s message', async () => {
    const name = std();
    patch(name, (v) => v.setUint32(36, 0x10000000));
    const err = await readOnlyAttempt(name);
    expect((err as Error).message).toBe(qemuOpenMessage(w.infoError(name).stderr));
  });

  test('unknown incompatible feature bit: refused, named like QEMU does', async () => {
    const name = std();
    patch(name, (v) => v.setUint32(76, v.getUint32(76) | 0x20));
    const err = await readOnlyAttempt(name);
    expect((err as { code: string }).code).toBe('ENOTSUP');
    expect((err as Error).message).toBe(qemuOpenMessage(w.infoError(name).stderr));
  });

  test('L2 table offset past the end of the file: EIO, no write', async () => {
    const name = std();
    patch(name, (v) => v.setUint32(0x30000 + 4, 0x10000000));
    const err = await readOnlyAttempt(name);
    expect((err as { code: string }).code).toBe('EIO');
    expect((err as Error).message).toMatch(/L2 table offset 0x10000000 lies beyond the end of the image file/);
  });

  test('L2 table offset beyond 2^53: past the end of the file like any other, EIO, no write', async () => {
    const name = std();
    patch(name, (v) => v.setUint32(0x30000, 0x80800000));
    const err = await readOnlyAttempt(name);
    expect((err as { code: string }).code).toBe('EIO');
    expect((err as Error).message).toMatch(/L2 table offset 0x80000000040000 lies beyond the end of the image file/);
  });

  for (const [what, size, name] of [
    ['size 0', 0, ''],
    ['a name starting with a NUL', 4, '\0abc'],
] as const) {
    test(`a backing file name of ${what} is no backing file, as in QEMU`, async () => {
      const img = std();
      patch(img, (v, bytes) => {
        v.setBigUint64(8, 0x200n); // backing_file_offset, inside the header cluster after the extensions
        v.setUint32(16, size);
        bytes.set(new TextEncoder().encode(name), 0x200);
      });
      // QEMU opens it without a backing file: the data reads back, the rest is zeroes.
      expect(w.qemuIo(img, 'read -q -P 0xab 0 1M', 'read -q -P 0 1M 3M')).toBe('');
      const err = await readOnlyAttempt(img);
      expect(err).toBeNull();
      const graph = newGraph();
      const { node, be } = await openQcow2(graph, w.path(img), { readOnly: true });
      expect(node.children.map((c) => c.name)).toEqual(['file']);
      expect(node.impl.getInfo?.().backingFilename).toBeUndefined();
      expect([...(await be.read(1 * M, 4096))].every((b) => b === 0)).toBe(true);
      expect([...(await be.read(0, 4096))].every((b) => b === 0xab)).toBe(true);
      await graph.close();
    });
  }

  test('an empty backing format (a zero-length extension) probes the backing file, as in QEMU', async () => {
    w.create('base.qcow2', '8M');
    w.qemuIo('base.qcow2', 'write -q -P 0x11 0 64k');
    w.create('ovl.qcow2', '8M', [], ['-b', 'base.qcow2', '-F', 'qcow2']);
    // The end-of-extensions marker becomes a second, empty backing-format extension (the last one counts).
    patch('ovl.qcow2', (v) => {
      let o = v.getUint32(100); // header_length: the extensions follow the header
      while (v.getUint32(o) !== 0) o += headerExtensionSize(v.getUint32(o + 4));
      v.setUint32(o, 0xe2792aca);
    });
    expect(w.qemuIo('ovl.qcow2', 'read -q -P 0x11 0 64k')).toBe('');
    const graph = newGraph();
    const { node, be } = await openQcow2(graph, w.path('ovl.qcow2'), { readOnly: true });
    expect(node.impl.getInfo?.().backingFormat).toBeUndefined();
    expect([...(await be.read(0, 65536))].every((b) => b === 0x11)).toBe(true);
    await graph.close();
  });

  test('a refcount block past the end of the file: block status (map) still works, as in QEMU', async () => {
    const img = std();
    // The refcount table (cluster 1 of the std image) gets an entry 0 that points 16 TiB out.
    patch(img, (v) => v.setBigUint64(0x10000, 0x100000000000n));
    const graph = newGraph();
    const { node } = await openQcow2(graph, w.path(img), { readOnly: true });
    // The metadata preallocation probe reads every refcount; QEMU takes its failure as "not preallocated".
    expect(await blockgraphMap(node)).toEqual(qemuImgMap(w, img));
    await graph.close();
  });

  /** The bitmap directory entry of a one-bitmap image made by `qemu-img bitmap --add`. */
  function bitmapDirectoryAt(bytes: Uint8Array): number {
    return parseHeader(bytes).extensions.bitmaps!.directoryOffset;
  }

  const badBitmaps: [string, (v: DataView, dir: number) => void][] = [
    ['a table size that does not fit the disk', (v, dir) => v.setUint32(dir + 8, 9)],
    ['a granularity under the minimum', (v, dir) => v.setUint8(dir + 17, 8)],
    ['a reserved bit in a table entry', (v, dir) => {
      const table = Number(v.getBigUint64(dir));
      v.setUint32(table + 4, v.getUint32(table + 4) | 0x2);
    }],
    ['an unknown flag', (v, dir) => v.setUint32(dir + 12, v.getUint32(dir + 12) | 0x8)],
  ];
  for (const [what, damage] of badBitmaps) {
    test(`a persistent bitmap with ${what}: the open fails with QEMU's message, nothing is written`, async () => {
      const img = std();
      w.qemuImg('bitmap', '--add', img, 'b0');
      patch(img, (v, bytes) => damage(v, bitmapDirectoryAt(bytes)));
      const q = w.infoError(img);
      expect(q.status).toBe(1);
      const err = await readOnlyAttempt(img);
      expect((err as Error).message).toBe(qemuOpenMessage(q.stderr));
      // A read-write open fails the same way, before anything is written.
      const before = w.read(img);
      const graph = newGraph();
      await expect(openQcow2(graph, w.path(img))).rejects.toThrow(qemuOpenMessage(q.stderr));
      await graph.close();
      expect(Buffer.compare(Buffer.from(w.read(img)), Buffer.from(before))).toBe(0);
    });
  }

  test('a persistent bitmap marked in use is not loaded, so its table is not checked (as QEMU)', async () => {
    const img = std();
    w.qemuImg('bitmap', '--add', img, 'b0');
    patch(img, (v, bytes) => {
      const dir = bitmapDirectoryAt(bytes);
      v.setUint32(dir + 12, v.getUint32(dir + 12) | 1); // in use
      v.setUint32(dir + 8, 2); // and a table size that does not fit the disk
    });
    expect(w.infoError(img).status).toBe(0);
    expect(await readOnlyAttempt(img)).toBeNull();
  });

  test('truncated file (L2 table cut off): EIO, no write', async () => {
    const name = std();
    patch(name, (_v, bytes) => bytes.subarray(0, 0x38000));
    const err = await readOnlyAttempt(name);
    expect((err as { code: string }).code).toBe('EIO');
  });

  test('compressed cluster descriptor past the end of the file: EIO, no write', async () => {
    w.write('src.raw', makeSourceData());
    w.qemuImg('convert', '-c', '-O', 'qcow2', 'src.raw', 'c.qcow2');
    // L2 at 0x40000: entry 0 = 0x4000000000050000 -> point it 256 MiB further.
    patch('c.qcow2', (v) => v.setUint32(0x40000 + 4, 0x10050000));
    const err = await readOnlyAttempt('c.qcow2');
    expect((err as { code: string }).code).toBe('EIO');
    expect((err as Error).message).toMatch(/compressed cluster data at 0x10050000 lies beyond the end of the image file/);
  });

  test('a compressed cluster, then an unaligned L2 entry in the same read: EIO once every piece of the read has ended', async () => {
    w.write('src.raw', makeSourceData().subarray(0, 8192));
    w.qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4096', 'src.raw', 'c.qcow2');
    // L1 at 0x3000 -> L2 at 0x4000; entry 0 is the compressed cluster, entry 1 becomes a normal cluster at 0x200.
    patch('c.qcow2', (v) => {
      expect(v.getUint32(0x4000) >>> 30).toBe(1); // compressed
      v.setUint32(0x4008, 0x80000000);
      v.setUint32(0x400c, 0x200);
    });
    const graph = newGraph();
    const { node, be } = await openQcow2(graph, w.path('c.qcow2'), { readOnly: true });
    // Reads of the image file still running when the request fails, or starting after: there must be none. Each
    // takes 50 ms, so a piece left behind is still reading when the error arrives.
    const file = node.primaryChild()!.node.impl;
    const preadv = file.preadv!.bind(file);
    let failed = false;
    let running = 0;
    let late = 0;
    file.preadv = async (...args) => {
      if (failed) late++;
      running++;
      try {
        await new Promise((r) => setTimeout(r, 50));
        return await preadv(...args);
      } finally {
        running--;
      }
    };
    const err = await be.read(0, 8192).catch((e: unknown) => e);
    failed = true;
    expect((err as { code: string }).code).toBe('EIO');
    expect((err as Error).message).toMatch(/Cluster allocation offset 0x200 unaligned \(L2 offset: 0x4000, L2 index: 0x1\)/);
    // Before the fix the compressed piece went on after the request had failed: a caller that closed the image
    // then got an unhandled 'Node is not open' rejection.
    expect(running).toBe(0);
    await new Promise((r) => setTimeout(r, 200));
    expect(late).toBe(0);
    await graph.close();
  });

  test('refcount table pointing into the L1 table: readable read-only; a read-write open marks it corrupt', async () => {
    const name = std();
    patch(name, (v) => {
      v.setUint32(48, 0);
      v.setUint32(52, 0x30000);
    });
    expect(await readOnlyAttempt(name)).toBeNull();
    const graph = newGraph();
    const err = await openQcow2(graph, w.path(name)).catch((e: unknown) => e);
    await graph.close();
    expect(isBlockError(err, 'EIO')).toBe(true);
    expect((err as Error).message).toBe(
      "The refcount table overlaps with the active L1 table: the image is marked corrupt; 'check -r all' repairs it",
    );
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', name], w.dir).out) as { 'format-specific': { data: { corrupt: boolean } } };
    expect(info['format-specific'].data.corrupt).toBe(true);
  });

  test('two L2 entries sharing a cluster: reads work read-only, check reports the corruption', async () => {
    const name = std();
    // L2[1] := L2[0]
    patch(name, (v) => {
      v.setUint32(0x40008, v.getUint32(0x40000));
      v.setUint32(0x4000c, v.getUint32(0x40004));
    });
    expect(await readOnlyAttempt(name)).toBeNull();
    const graph = newGraph();
    try {
      const { node } = await openQcow2(graph, w.path(name), { readOnly: true });
      const res = await node.impl.check!('none');
      expect(res.corruptions).toBeGreaterThan(0);
    } finally {
      await graph.close();
    }
  });

  test('corrupt bit: read-only works, read-write is refused with QEMU\'s message', async () => {
    const name = std();
    patch(name, (v) => v.setUint32(76, v.getUint32(76) | 0x2));
    expect(await readOnlyAttempt(name)).toBeNull();
    const graph = newGraph();
    const err = await openQcow2(graph, w.path(name)).catch((e: unknown) => e);
    await graph.close();
    expect(isBlockError(err, 'EACCES')).toBe(true);
    expect((err as Error).message).toBe('qcow2: Image is corrupt; cannot be opened read/write');
    expect(w.ioOpenError(name, true).stderr).toContain('Image is corrupt; cannot be opened read/write');
  });

  test('a data cluster overlapping the L1 table: the write is refused and the image marked corrupt', async () => {
    const name = std();
    // Guest cluster 20 -> host 0x30000 (the L1 table), COPIED, so it would be written in place.
    patch(name, (v) => {
      v.setUint32(0x40000 + 20 * 8, 0x80000000);
      v.setUint32(0x40000 + 20 * 8 + 4, 0x30000);
    });
    const graph = newGraph();
    const events: unknown[] = [];
    graph.on((e) => events.push(e));
    try {
      const { be } = await openQcow2(graph, w.path(name));
      const err = await be.pwrite(20 * 65536, new Uint8Array(512).fill(1)).catch((e: unknown) => e);
      expect(isBlockError(err, 'EIO')).toBe(true);
      expect((err as Error).message).toBe(
        'qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with active L1 table); further corruption events will be suppressed',
      );
      // The node is unusable from now on; nothing else is written.
      await expect(be.pwrite(0, new Uint8Array(512))).rejects.toThrow(/corrupt/);
      await expect(be.read(0, 512)).rejects.toThrow(/corrupt/);
      expect(events).toContainEqual(expect.objectContaining({ event: 'BLOCK_IMAGE_CORRUPTED' }));
    } finally {
      await graph.close();
    }
    const bytes = w.read(name);
    expect(dataView(bytes).getUint32(76) & 0x2).toBe(2);
    // The L1 table was not overwritten.
    expect(dataView(bytes).getUint32(0x30004)).toBe(0x40000);
    expect(qemuCheck(w.path(name)).out).toMatch(/corrupt|ERROR/i);
  });
  test('an L1 entry with the COPIED flag and no offset names no L2 table: reads are zeroes, a write allocates one', async () => {
    // A truncated L1 table reads as 0x80000000_00000000 (what the fuzz found): QEMU 7.2 takes the header cluster
    // for the L2 table (qemu-img check: 45 errors) and aborts on a write.
    w.create('c.qcow2', '64M');
    patch('c.qcow2', (v) => v.setUint32(0x30000, 0x80000000));
    const graph = newGraph();
    try {
      const { be } = await openQcow2(graph, w.path('c.qcow2'));
      expect((await be.read(0, 65536)).every((b) => b === 0)).toBe(true);
      await be.pwrite(4096, new Uint8Array(4096).fill(0x55));
      const got = await be.read(0, 65536);
      expect(got.subarray(4096, 8192).every((b) => b === 0x55)).toBe(true);
      expect(got.subarray(0, 4096).every((b) => b === 0) && got.subarray(8192).every((b) => b === 0)).toBe(true);
    } finally {
      await graph.close();
    }
    const header = w.read('c.qcow2').subarray(0, 4);
    expect(Array.from(header)).toEqual([0x51, 0x46, 0x49, 0xfb]);
    const chk = qemuCheck(w.path('c.qcow2'));
    expect(chk.out).toContain('No errors were found on the image.');
    const io = run('qemu-io', ['-r', '-c', 'read -q -P 0x55 4096 4096', '-c', 'read -q -P 0 0 4096', w.path('c.qcow2')]);
    expect(io.out).not.toMatch(/verification failed|error/i);
  });
});
