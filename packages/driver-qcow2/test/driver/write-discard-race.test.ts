/**
 * A write into a cluster already in place that takes the slow path (its L2 slice not cached yet, so it goes through
 * allocHostOffset) must keep that cluster out of reuse while the data is on its way, even when a discard frees the
 * cluster meanwhile: otherwise the next allocation gets it and the late write lands in someone else's data (found
 * in review of the copy-offloading path, which shares this code).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import type { Graph } from '@blockgraph/block-core';
import { newGraph, openQcow2 } from './helpers.js';

const KiB = 1024;

describe('write to an in-place cluster racing a discard', () => {
  let dir: string;
  let g: Graph;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'qcow2-write-discard-'));
    g = newGraph();
  });
  afterEach(async () => {
    vi.restoreAllMocks();
    await g.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('the freed cluster is not handed out before the write into it has ended', async () => {
    const file = join(dir, 'img.qcow2');
    await g.createImage('qcow2', { filename: file, size: '4M' });
    const first = await openQcow2(g, file);
    await first.be.pwrite(0, new Uint8Array(64 * KiB).fill(0x22));
    first.be.remove();
    await g.deleteNode(first.node);
    // Reopened: the L2 slice is not cached, so the write below takes allocHostOffset's path to the same cluster.
    const { node, be } = await openQcow2(g, file);
    const fileImpl = node.file!.node.impl;
    const real = fileImpl.pwritev!.bind(fileImpl);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let issued!: () => void;
    const started = new Promise<void>((r) => (issued = r));
    let held = false;
    vi.spyOn(fileImpl, 'pwritev').mockImplementation(async (offset, bytes, qiov, flags) => {
      if (!held && bytes === 4 * KiB) {
        held = true;
        issued();
        await gate;
      }
      return real(offset, bytes, qiov, flags);
    });
    const write = be.pwrite(4 * KiB, new Uint8Array(4 * KiB).fill(0x33));
    await started;
    await be.pdiscard(0, 64 * KiB);
    await be.pwrite(128 * KiB, new Uint8Array(64 * KiB).fill(0xaa));
    release();
    await write;
    expect((await be.read(128 * KiB, 64 * KiB)).every((b) => b === 0xaa)).toBe(true);
    expect((await be.read(0, 64 * KiB)).every((b) => b === 0)).toBe(true);
  });
});
