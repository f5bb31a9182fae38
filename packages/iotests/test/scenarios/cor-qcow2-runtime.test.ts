/**
 * Copy-on-read inserted and removed at runtime above a qcow2 overlay that a guest is using.
 *
 * A qcow2 overlay (64 KiB clusters) over a raw base of random bytes, opened as node `disk` with a guest device on
 * it. Four workers (seeded PRNG, each owning a quarter of the disk, so every read has one right answer) run
 * unaligned writes, zero writes and reads without pause against an in-memory model of the disk, while the test
 * puts a copy-on-read filter above `disk` (`insertCopyOnRead`) and takes it out again (`removeCopyOnRead`), five
 * times. Checked:
 * - every request settles (issued == settled, none fails) and every read equals the model, throughout;
 * - each insert moves the guest to the filter and each removal moves it back; each runs drained: the requests in
 *   flight when it starts have all settled when it returns; copy-ups happen while the filter is in (block-core's
 *   `cor.write` trace events) and never between a removal and the next insert;
 * - after close: `qemu-img check` clean; the chain's content (qemu-img convert) equals the model; the overlay alone
 *   (backing dropped) holds the guest's data wherever it wrote and base data or nothing elsewhere; and it holds
 *   clusters the guest never wrote — the copies the filter made.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { onTrace, type BlockBackend, type Graph } from '@blockgraph/block-core';
import { insertCopyOnRead, removeCopyOnRead } from '@blockgraph/filter-cor';
import { deriveSeed, formatSeed, xorshift, type Prng } from '../../src/index.js';
import { describeWithTools, device, firstDiff, KiB, MiB, scratch, until, type Scratch } from './helpers.js';
import { checkClean, mapJsonNoOffsets, newCorGraph, qemuImg, readTopAloneWithQemu, topAloneSpec } from './cor-helpers.js';

const SEED = deriveSeed(0xc0a1e5ce, 'cor-qcow2-runtime');
const SIZE = 16 * MiB;
const CLUSTER = 64 * KiB;
const WORKERS = 4;
const CYCLES = 5;

describeWithTools('copy-on-read inserted and removed above a qcow2 overlay under a running workload', ['qemu-img'], () => {
  let s: Scratch;
  let g: Graph;

  beforeEach(() => {
    s = scratch('cor-runtime');
    g = newCorGraph();
  });

  afterEach(async () => {
    await g.close();
    s.cleanup();
  });

  it(`no request is lost and every read equals the model (seed ${formatSeed(SEED)})`, async () => {
    const rnd: Prng = xorshift(SEED);
    const basePath = s.path('base.raw');
    const topPath = s.path('top.qcow2');
    const base = rnd.bytes(SIZE);
    writeFileSync(basePath, base);
    qemuImg('create', '-f', 'qcow2', '-o', `cluster_size=${CLUSTER}`, '-F', 'raw', '-b', basePath, topPath);

    const disk = await g.addNode({ driver: 'qcow2', nodeName: 'disk', file: { driver: 'file', filename: topPath } });
    const guest: BlockBackend = device(g, 'disk', 'guest');
    const model = base.slice();
    const written = new Uint8Array(SIZE);

    // Copy-ups seen, by phase.
    let phase: 'plain' | 'cor' | 'switching' = 'plain';
    const copyUps = { plain: 0, cor: 0, switching: 0 };
    const stopTrace = onTrace((event) => {
      if (event === 'cor.write') copyUps[phase]++;
    });

    let issued = 0;
    let settled = 0;
    /** Ids of the requests in flight. */
    const inFlight = new Set<number>();
    /** Per insert / remove: how many requests were in flight when it started, and how many of those had not
     *  settled one event-loop turn after it returned (the switch runs drained: this must be 0). */
    const switches: { inFlight: number; unsettledAfter: number }[] = [];
    const switching = async (op: () => Promise<unknown>): Promise<void> => {
      const before = [...inFlight];
      await op();
      await new Promise<void>((r) => setImmediate(r));
      switches.push({ inFlight: before.length, unsettledAfter: before.filter((id) => inFlight.has(id)).length });
    };
    let reads = 0;
    let stop = false;
    const errors: string[] = [];
    const region = SIZE / WORKERS;
    const worker = async (w: number, r: Prng): Promise<void> => {
      const lo = w * region;
      while (!stop) {
        const off = lo + r.int(region);
        const kind = r.float();
        const id = issued++;
        inFlight.add(id);
        try {
          if (kind < 0.3) {
            const len = r.range(1, Math.min(64 * KiB, lo + region - off));
            const data = r.bytes(len);
            await guest.pwrite(off, data);
            model.set(data, off);
            written.fill(1, off, off + len);
          } else if (kind < 0.38) {
            const len = r.range(1, Math.min(64 * KiB, lo + region - off));
            await guest.pwriteZeroes(off, len);
            model.fill(0, off, off + len);
            written.fill(1, off, off + len);
          } else {
            const len = r.range(1, Math.min(256 * KiB, lo + region - off));
            const got = await guest.read(off, len);
            reads++;
            const d = firstDiff(got, model.subarray(off, off + len));
            if (d >= 0) errors.push(`worker ${w}: read [${off}, +${len}) differs from the model at byte ${off + d} (phase ${phase})`);
          }
        } catch (e) {
          errors.push(`worker ${w}: ${String(e)}`);
        } finally {
          inFlight.delete(id);
          settled++;
        }
      }
    };

    const workers = Array.from({ length: WORKERS }, (_, w) => worker(w, rnd.fork(`worker-${w}`)));
    const waitOps = async (n: number): Promise<void> => {
      const target = settled + n;
      await until(() => settled >= target || errors.length > 0, `${n} more requests`, 20_000, 1);
    };
    try {
      for (let cycle = 0; cycle < CYCLES && errors.length === 0; cycle++) {
        await waitOps(40);
        phase = 'switching';
        await switching(() => insertCopyOnRead(g, 'disk', { nodeName: 'cor' }));
        expect(guest.node).toBe(g.getNode('cor'));
        phase = 'cor';
        await waitOps(60);
        phase = 'switching';
        await switching(() => removeCopyOnRead(g, 'cor'));
        expect(guest.node).toBe(disk);
        expect(g.findNode('cor')).toBeUndefined();
        phase = 'plain';
      }
      await waitOps(40);
    } finally {
      stop = true;
      await Promise.all(workers);
      stopTrace();
    }
    expect(errors).toEqual([]);
    expect(settled).toBe(issued);
    // Each switch started with every worker's request in flight, and waited for all of them (drained section).
    expect(switches).toEqual(Array.from({ length: 2 * CYCLES }, () => ({ inFlight: WORKERS, unsettledAfter: 0 })));
    expect(reads).toBeGreaterThan(100);
    expect(copyUps.cor).toBeGreaterThan(0);
    expect(copyUps.plain).toBe(0);

    // Through the guest, then offline with QEMU's tools.
    const all = await guest.read(0, SIZE);
    expect(firstDiff(all, model)).toBe(-1);
    guest.remove();
    await g.close();

    checkClean(topPath);
    qemuImg('convert', '-f', 'qcow2', '-O', 'raw', topPath, s.path('chain.raw'));
    expect(firstDiff(new Uint8Array(readFileSync(s.path('chain.raw'))), model)).toBe(-1);

    const alone = readTopAloneWithQemu(topPath, s.path('alone.raw'));
    const allocated = new Uint8Array(SIZE);
    for (const e of mapJsonNoOffsets(topAloneSpec(topPath))) {
      if (e.present === true) allocated.fill(1, e.start as number, (e.start as number) + (e.length as number));
    }
    const bad: number[] = [];
    let copiedOnly = 0;
    for (let c = 0; c < SIZE; c += CLUSTER) {
      if (allocated[c] && written.subarray(c, c + CLUSTER).every((b) => b === 0)) copiedOnly++;
    }
    for (let i = 0; i < SIZE && bad.length < 5; i++) {
      const want = written[i] ? model[i] : allocated[i] ? base[i] : 0;
      if (alone[i] !== want) bad.push(i);
    }
    expect(bad).toEqual([]);
    // Clusters the guest never wrote are in the overlay: only the filter's copy-ups put them there.
    expect(copiedOnly).toBeGreaterThan(0);
  });
});
