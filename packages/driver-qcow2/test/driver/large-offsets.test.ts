/**
 * Offsets at and beyond 2^31 and 2^32, against qemu-io 7.2. JavaScript's bitwise operators work on signed
 * 32-bit integers, so every place where a 64-bit guest offset, host offset, L1/L2 entry, refcount table entry or
 * compressed descriptor is split or masked is a candidate for a sign or truncation bug that small images never
 * show. Each scenario runs the same sequence of requests through our driver into one image and through one
 * qemu-io process (qemu-img for snapshots) into an identically created twin, then requires: `qemu-img compare`
 * finds them identical, `qemu-img check` finds ours clean, our driver reads back (from ours and from QEMU's
 * twin) what the request sequence implies and what qemu-img converts, the scenario really reached the offsets
 * it is about (read from the image files with an independent BigInt decoder), and — where it is the same
 * sequence of allocations — the host layout (`qemu-img map`, raw L1/L2 entries) is QEMU's.
 *
 * Host offsets above 4 GiB come cheap from sparse files: `preallocation=metadata` maps the whole disk onto a
 * sparse file of the disk's size, so data lands at host offsets up to 6 GiB and new allocations (L2 tables,
 * refcount blocks, compressed data, clusters of a grown disk) land beyond 6 GiB. No image uses more than a few
 * MiB of disk.
 */
import { closeSync, ftruncateSync, openSync, readFileSync, readSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import {
  BlockStatus,
  IOVector,
  isBlockError,
  type BlockBackend,
  type BlockNode,
  type BlockStatusResult,
  type Options,
} from '@blockgraph/block-core';
import { checkExitCode, checkImage, formatCheckJson } from '../../src/check/index.js';
import { FileImageIO, qemuCheck as qemuCheckJson } from '../check/helpers.js';
import { Workdir, blockgraphMap, firstDiff, hasQemu, newGraph, openQcow2, prng, qemuCheck, qemuImgMap, run } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const G2 = 2 ** 31;
const G4 = 2 ** 32;

// --- request sequences ---------------------------------------------------------------------------------------

/** A constant byte, or seeded bytes from an alphabet of `alphabet` values (small alphabets compress well). */
type Data = { pattern: number } | { seed: number; alphabet: number };

type Op =
  | { kind: 'write'; offset: number; bytes: number; data: Data }
  /** `fails`: QEMU refuses it (EIO: compressed writes only go to unallocated clusters); ours must too. */
  | { kind: 'compressed'; offset: number; bytes: number; data: Data; fails?: boolean }
  | { kind: 'zero'; offset: number; bytes: number; unmap: boolean }
  | { kind: 'discard'; offset: number; bytes: number }
  | { kind: 'snapshot'; name: string }
  | { kind: 'apply'; name: string }
  /** Ours: BlockBackend.truncate; the twin: qemu-img resize (--shrink when smaller). */
  | { kind: 'resize'; size: number; prealloc: 'off' | 'metadata' };

const d = (x: number | Data): Data => (typeof x === 'number' ? { pattern: x } : x);
const W = (offset: number, bytes: number, data: number | Data): Op => ({ kind: 'write', offset, bytes, data: d(data) });
const C = (offset: number, bytes: number, data: number | Data, fails = false): Op => ({ kind: 'compressed', offset, bytes, data: d(data), fails });
const Z = (offset: number, bytes: number, unmap = false): Op => ({ kind: 'zero', offset, bytes, unmap });
const D = (offset: number, bytes: number): Op => ({ kind: 'discard', offset, bytes });
const rnd = (seed: number, alphabet = 256): Data => ({ seed, alphabet });
const R = (size: number, prealloc: 'off' | 'metadata' = 'off'): Op => ({ kind: 'resize', size, prealloc });

const contentCache = new WeakMap<Op, Uint8Array>();

function content(op: Op & { data: Data; bytes: number }): Uint8Array {
  let c = contentCache.get(op);
  if (c) return c;
  c = new Uint8Array(op.bytes);
  const data = op.data;
  if ('pattern' in data) {
    c.fill(data.pattern);
  } else {
    const r = prng(data.seed * 2654435761);
    // Never zero: a range that should hold data must not pass for an unallocated one.
    for (let i = 0; i < c.length; i++) c[i] = data.alphabet >= 256 ? 1 + Math.floor(r() * 255) : 0x41 + Math.floor(r() * data.alphabet);
  }
  contentCache.set(op, c);
  return c;
}

/** What the guest reads in [offset, offset + bytes) after `ops` (no backing file, v3: discards read as zero). */
function expected(ops: Op[], clusterSize: number, offset: number, bytes: number): Uint8Array {
  let out = new Uint8Array(bytes);
  const saved = new Map<string, Uint8Array>();
  for (const op of ops) {
    if (op.kind === 'snapshot') {
      saved.set(op.name, out.slice());
      continue;
    }
    if (op.kind === 'apply') {
      out = saved.get(op.name)!.slice();
      continue;
    }
    if (op.kind === 'resize') {
      // Shrinking drops the data beyond the new end; growing adds zeroes.
      if (offset + bytes > op.size) out.fill(0, Math.max(0, op.size - offset));
      continue;
    }
    if (op.kind === 'compressed' && op.fails) continue;
    if (op.kind === 'discard' && (op.offset % clusterSize || op.bytes % clusterSize)) {
      throw new Error('the model only knows cluster-aligned discards');
    }
    const a = Math.max(offset, op.offset);
    const b = Math.min(offset + bytes, op.offset + op.bytes);
    if (a >= b) continue;
    if (op.kind === 'write' || op.kind === 'compressed') out.set(content(op).subarray(a - op.offset, b - op.offset), a - offset);
    else out.fill(0, a - offset, b - offset);
  }
  return out;
}

/** Run the sequence on the twin: qemu-io for I/O (one process per run of requests), qemu-img for snapshots. */
function applyQemu(w: Workdir, image: string, ops: Op[]): { failed: number } {
  let failed = 0;
  let batch: string[] = [];
  const flushBatch = (): void => {
    if (!batch.length) return;
    const r = run('qemu-io', ['-d', 'unmap', '-f', 'qcow2', ...batch.flatMap((c) => ['-c', c]), image], w.dir);
    expect(r.out).not.toMatch(/corrupt/i);
    failed += (r.out.match(/write failed: Input\/output error/g) ?? []).length;
    expect(r.out.match(/failed/g)?.length ?? 0, r.out).toBe((r.out.match(/write failed: Input\/output error/g) ?? []).length);
    batch = [];
  };
  ops.forEach((op, i) => {
    const src = (): string => {
      const data = (op as { data: Data }).data;
      if ('pattern' in data) return `-P ${data.pattern}`;
      const file = `data${i}.bin`;
      writeFileSync(w.path(file), content(op as Op & { data: Data; bytes: number }));
      return `-s ${file}`;
    };
    switch (op.kind) {
      case 'write':
        batch.push(`write -q ${src()} ${op.offset} ${op.bytes}`);
        break;
      case 'compressed':
        batch.push(`write -q -c ${src()} ${op.offset} ${op.bytes}`);
        break;
      case 'zero':
        batch.push(`write -q -z ${op.unmap ? '-u ' : ''}${op.offset} ${op.bytes}`);
        break;
      case 'discard':
        batch.push(`discard -q ${op.offset} ${op.bytes}`);
        break;
      case 'snapshot':
      case 'apply': {
        flushBatch();
        const r = run('qemu-img', ['snapshot', op.kind === 'snapshot' ? '-c' : '-a', op.name, image], w.dir);
        expect(r.status, r.out).toBe(0);
        break;
      }
      case 'resize': {
        flushBatch();
        const r = run('qemu-img', ['resize', '-q', '--shrink', `--preallocation=${op.prealloc}`, image, String(op.size)], w.dir);
        expect(r.status, r.out).toBe(0);
        break;
      }
    }
  });
  flushBatch();
  return { failed };
}

/**
 * The same sequence through our driver; returns how many compressed writes were refused (all with EIO).
 * `concurrent`: all requests at once (they must touch disjoint clusters).
 */
async function applyOurs(node: BlockNode, be: BlockBackend, ops: Op[], concurrent = false): Promise<{ failed: number }> {
  let failed = 0;
  const one = async (op: Op): Promise<void> => {
    switch (op.kind) {
      case 'write':
        await be.pwrite(op.offset, content(op));
        break;
      case 'compressed':
        try {
          await be.pwritevCompressed(op.offset, op.bytes, IOVector.of(content(op)));
        } catch (e) {
          expect(isBlockError(e, 'EIO'), String(e)).toBe(true);
          failed++;
        }
        break;
      case 'zero':
        await be.pwriteZeroes(op.offset, op.bytes, op.unmap ? 0x4 : 0);
        break;
      case 'discard':
        await be.pdiscard(op.offset, op.bytes);
        break;
      case 'snapshot':
        await node.impl.snapshotCreate!({ name: op.name });
        break;
      case 'apply':
        await node.impl.snapshotGoto!(op.name);
        break;
      case 'resize':
        await be.truncate(op.size, false, op.prealloc);
        break;
    }
  };
  if (concurrent) await Promise.all(ops.map(one));
  else for (const op of ops) await one(op);
  return { failed };
}

// --- an independent look at the image files (BigInt, positional reads: the files are sparse and huge) -----------

function pread(path: string, offset: bigint | number, bytes: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(bytes);
    const n = readSync(fd, buf, 0, bytes, Number(offset));
    if (n !== bytes) throw new Error(`short read at ${offset} in ${path}`);
    return buf;
  } finally {
    closeSync(fd);
  }
}

const OFFSET_MASK = 0x00fffffffffffe00n;

function pwrite(path: string, offset: bigint | number, bytes: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, Number(offset));
  } finally {
    closeSync(fd);
  }
}

interface RawHeader {
  clusterBits: number;
  l1Size: number;
  l1Offset: bigint;
  reftableOffset: bigint;
  reftableClusters: number;
  refcountOrder: number;
  extendedL2: boolean;
}

function rawHeader(path: string): RawHeader {
  const h = pread(path, 0, 104);
  const v3 = h.readUInt32BE(4) >= 3;
  return {
    clusterBits: h.readUInt32BE(20),
    l1Size: h.readUInt32BE(36),
    l1Offset: h.readBigUInt64BE(40),
    reftableOffset: h.readBigUInt64BE(48),
    reftableClusters: h.readUInt32BE(56),
    extendedL2: v3 && (h.readBigUInt64BE(72) & 16n) !== 0n,
    refcountOrder: v3 ? h.readUInt32BE(96) : 4,
  };
}

/** Every metadata structure of an image (header cluster, L1, L2 tables, refcount table and blocks), where it is. */
function rawMetadata(path: string): { what: string; offset: bigint; bytes: Buffer }[] {
  const h = rawHeader(path);
  const cs = 2 ** h.clusterBits;
  const out = [{ what: 'header', offset: 0n, bytes: pread(path, 0, cs) }];
  const l1 = pread(path, h.l1Offset, h.l1Size * 8);
  out.push({ what: 'L1', offset: h.l1Offset, bytes: l1 });
  for (let i = 0; i < h.l1Size; i++) {
    const l2 = l1.readBigUInt64BE(i * 8) & OFFSET_MASK;
    if (l2) out.push({ what: `L2[${i}]`, offset: l2, bytes: pread(path, l2, cs) });
  }
  const rt = pread(path, h.reftableOffset, h.reftableClusters * cs);
  out.push({ what: 'reftable', offset: h.reftableOffset, bytes: rt });
  for (let i = 0; i < rt.length / 8; i++) {
    const rb = rt.readBigUInt64BE(i * 8) & ~0x1ffn;
    if (rb) out.push({ what: `refblock[${i}]`, offset: rb, bytes: pread(path, rb, cs) });
  }
  return out;
}

/** Same structures at the same places with the same bytes. */
function expectSameMetadata(ours: string, theirs: string): void {
  const a = rawMetadata(ours);
  const b = rawMetadata(theirs);
  expect(a.map((x) => `${x.what}@${x.offset}`)).toEqual(b.map((x) => `${x.what}@${x.offset}`));
  a.forEach((x, i) => {
    const j = firstDiff(x.bytes, b[i]!.bytes);
    expect(j, `${x.what} at ${x.offset}: first difference at byte ${j}`).toBe(-1);
  });
}

interface RawMapping {
  /** L2 table offset (0n: none). */
  l2: bigint;
  /** The raw L2 entry and (extended L2) its bitmap. */
  entry: bigint;
  bitmap: bigint;
  compressed: boolean;
  /** Host offset of the data: cluster offset, or the compressed data's byte offset. */
  host: bigint;
  /** Compressed: the descriptor's additional-sectors field. */
  sectors: bigint;
}

function rawMapping(path: string, guest: number): RawMapping {
  const h = rawHeader(path);
  const cs = 2 ** h.clusterBits;
  const esz = h.extendedL2 ? 16 : 8;
  const l2Entries = cs / esz;
  const cluster = Math.floor(guest / cs);
  const l1e = pread(path, h.l1Offset + BigInt(Math.floor(cluster / l2Entries) * 8), 8).readBigUInt64BE(0);
  const l2 = l1e & OFFSET_MASK;
  if (l2 === 0n) return { l2, entry: 0n, bitmap: 0n, compressed: false, host: 0n, sectors: 0n };
  const raw = pread(path, l2 + BigInt((cluster % l2Entries) * esz), esz);
  const entry = raw.readBigUInt64BE(0);
  const bitmap = esz === 16 ? raw.readBigUInt64BE(8) : 0n;
  const compressed = ((entry >> 62n) & 1n) === 1n;
  if (!compressed) return { l2, entry, bitmap, compressed, host: entry & OFFSET_MASK, sectors: 0n };
  const shift = BigInt(62 - (h.clusterBits - 8));
  return {
    l2,
    entry,
    bitmap,
    compressed,
    host: entry & ((1n << shift) - 1n),
    sectors: (entry >> shift) & ((1n << BigInt(h.clusterBits - 8)) - 1n),
  };
}

/** Offset of the refcount block describing host offset `host` (0n: none). */
function rawRefblockFor(path: string, host: bigint): bigint {
  const h = rawHeader(path);
  const perBlock = BigInt(2 ** (h.clusterBits + 3 - h.refcountOrder));
  const index = (host >> BigInt(h.clusterBits)) / perBlock;
  return pread(path, h.reftableOffset + index * 8n, 8).readBigUInt64BE(0) & ~0x1ffn;
}

/** What a scenario must have reached, checked in both images (QEMU's twin proves the scenario, ours the driver). */
type Reach =
  | { what: 'data'; guest: number; above: number }
  | { what: 'compressed'; guest: number; above: number }
  | { what: 'l2'; guest: number; above: number }
  | { what: 'reftable'; above: number }
  | { what: 'refblock-of-data'; guest: number; above: number };

function checkReach(path: string, r: Reach): void {
  const label = `${path.replace(/.*\//, '')}: ${JSON.stringify(r)}`;
  if (r.what === 'reftable') {
    expect(rawHeader(path).reftableOffset, label).toBeGreaterThanOrEqual(BigInt(r.above));
    return;
  }
  const m = rawMapping(path, r.guest);
  switch (r.what) {
    case 'data':
      expect(m.compressed, label).toBe(false);
      expect(m.host, label).toBeGreaterThanOrEqual(BigInt(r.above));
      break;
    case 'compressed':
      expect(m.compressed, label).toBe(true);
      expect(m.host, label).toBeGreaterThanOrEqual(BigInt(r.above));
      break;
    case 'l2':
      expect(m.l2, label).toBeGreaterThanOrEqual(BigInt(r.above));
      break;
    case 'refblock-of-data':
      expect(m.compressed, label).toBe(false);
      expect(m.host, label).not.toBe(0n);
      expect(rawRefblockFor(path, m.host), label).toBeGreaterThanOrEqual(BigInt(r.above));
      break;
  }
}

/**
 * QEMU's packing of consecutive compressed writes (qcow2_alloc_bytes): each one's data starts where the previous
 * one's ends — inside the previous descriptor's last sector — or, when a new cluster that is not adjacent had to
 * be taken, at that cluster's start. Compressed sizes depend on the codec build, so the offsets themselves are not
 * QEMU's; the rule is. Returns whether some compressed data crosses a host cluster boundary.
 */
function checkPacking(path: string, guests: number[]): boolean {
  const cs = BigInt(2 ** rawHeader(path).clusterBits);
  let crosses = false;
  let prev: RawMapping | null = null;
  for (const g of guests) {
    const m = rawMapping(path, g);
    const label = `${path.replace(/.*\//, '')}: compressed cluster at guest ${hexAt(g)}`;
    expect(m.compressed, label).toBe(true);
    const end = (m.host / 512n) * 512n + (m.sectors + 1n) * 512n;
    if (m.host / cs !== (end - 1n) / cs) crosses = true;
    if (prev) {
      const prevEnd = (prev.host / 512n) * 512n + (prev.sectors + 1n) * 512n;
      const adjacent = m.host > prev.host && m.host <= prevEnd;
      const fresh = m.host > prev.host && m.host % cs === 0n;
      expect(adjacent || fresh, `${label}: ${m.host} after ${prev.host} (+${prev.sectors} sectors)`).toBe(true);
    }
    prev = m;
  }
  return crosses;
}

// --- guest content as QEMU sees it -------------------------------------------------------------------------------

/** [offset, offset + bytes) of the guest disk, converted by qemu-img (a raw filter with offset/size on top). */
function qemuRange(w: Workdir, image: string, offset: number, bytes: number): Uint8Array {
  const out = w.path('range.raw');
  const opts = `driver=raw,offset=${offset},size=${bytes},file.driver=qcow2,file.file.driver=file,file.file.filename=${w.path(image)}`;
  const r = run('qemu-img', ['convert', '-U', '-O', 'raw', '--image-opts', opts, out], w.dir);
  if (r.status !== 0) throw new Error(`qemu-img convert failed: ${r.out}`);
  return new Uint8Array(readFileSync(out));
}

const hexAt = (o: number): string => '0x' + o.toString(16);

function expectSame(got: Uint8Array, want: Uint8Array, what: string, base: number): void {
  const i = firstDiff(got, want);
  expect(i, i < 0 ? what : `${what}: first difference at guest ${hexAt(base + i)} (got ${got[i]}, want ${want[i]})`).toBe(-1);
}

// --- scenarios ---------------------------------------------------------------------------------------------------

interface Scenario {
  name: string;
  /** qemu-img create size and -o options (ours and the twin are created identically), then a resize. */
  size: string;
  opts: string[];
  resize?: string;
  /** Extra preparation of the (single) created image before it is copied to the twin. */
  prepare?: (w: Workdir, image: string) => void;
  clusterSize: number;
  ops: Op[];
  /** Guest ranges read back through our driver (from both images) and through qemu-img. */
  ranges: [number, number][];
  reach: Reach[];
  /**
   * The host layout must be QEMU's: `qemu-img map --output=json` and the raw entries of `reach` agree. Not with
   * compressed clusters whose size shifts later allocations (sizes depend on the zlib/zstd build).
   */
  sameLayout: boolean;
  /** Runs of guest offsets of consecutive compressed writes, checked against QEMU's packing rule in both images. */
  packed?: number[][];
  /** Runtime options for our read-write open of ours. */
  openOptions?: Options;
  /** Our driver gets all requests at once (disjoint clusters); qemu-io runs them in order. */
  concurrent?: boolean;
}

/**
 * Small caches (4 KiB L2 slices: slice offsets inside L2 tables above 4 GiB; constant evictions and re-reads),
 * every overlap check (inactive L2 tables of snapshots included) and discards of every freed cluster in the file.
 */
const STRESS_OPTIONS: Options = {
  'overlap-check': 'all',
  'l2-cache-entry-size': '4096',
  'l2-cache-size': '64k',
  'refcount-cache-size': '256k',
  'pass-discard-other': true,
};

const PREALLOC_6G_TO_8G = { size: '6G', resize: '8G' };
/** BDRV_REQUEST_MAX_BYTES rounded down to 64 KiB clusters: qemu-io refuses longer requests. */
const MAX_REQUEST = 2 * GiB - 64 * KiB;

function compressedScenario(type: 'zlib' | 'zstd', clusterSize: number): Scenario {
  const cs = clusterSize;
  const base = 6 * GiB;
  if (cs === 2 * MiB) {
    return {
      name: `${type}, 2 MiB clusters: compressed descriptors with host offsets above 6 GiB`,
      ...PREALLOC_6G_TO_8G,
      opts: ['cluster_size=2M', 'preallocation=metadata', `compression_type=${type}`],
      clusterSize: cs,
      ops: [
        W(G4 - MiB, 3 * MiB, rnd(10)),
        C(base, cs, rnd(11, 4)),
        C(base + cs, cs, 0x41),
        W(base + 2 * cs + 1000, 5000, 0x42),
        C(7 * GiB, cs, rnd(12, 8)),
        C(8 * GiB - cs, cs, rnd(13, 2)),
        // Preallocated: QEMU refuses to compress over an allocated cluster.
        C(5 * GiB, cs, 0x44, true),
        // Copy-on-write out of a compressed cluster whose data lies above 6 GiB.
        W(base + 100000, 4096, 0x43),
        Z(7 * GiB, cs, true),
        D(base + cs, cs),
        C(base + cs, cs, rnd(14, 4)),
        C(base + 3 * cs, cs, rnd(15, 64)),
        // Incompressible: stored as a normal cluster.
        C(base + 4 * cs, cs, rnd(16)),
      ],
      ranges: [
        [G4 - 2 * MiB, 6 * MiB],
        [5 * GiB, cs],
        [base, 5 * cs],
        [7 * GiB, cs],
        [8 * GiB - cs, cs],
      ],
      reach: [
        { what: 'data', guest: G4, above: G4 },
        { what: 'compressed', guest: base + cs, above: base },
        { what: 'compressed', guest: base + 3 * cs, above: base },
        { what: 'compressed', guest: 8 * GiB - cs, above: base },
        { what: 'data', guest: base + 4 * cs, above: base },
      ],
      sameLayout: false,
      // The compressed clusters still there at the end, in the order they were written.
      packed: [[8 * GiB - cs, base + cs, base + 3 * cs]],
    };
  }
  const comp: Op[] = [];
  const alphabets = [2, 4, 16, 64];
  for (let i = 0; i < 24; i++) comp.push(C(base + i * cs, cs, i % 3 === 0 ? 0x50 + i : rnd(20 + i, alphabets[i % 4]!)));
  return {
    name: `${type}, 64 KiB clusters: packed compressed clusters above 6 GiB`,
    ...PREALLOC_6G_TO_8G,
    opts: ['preallocation=metadata', `compression_type=${type}`],
    clusterSize: cs,
    ops: [
      ...comp,
      C(base + 24 * cs, cs, rnd(99)),
      W(base + 5 * cs + 100, 1000, 0x61),
      Z(base + 7 * cs, cs, true),
      // Without MAY_UNMAP too: a compressed cluster is always dropped.
      Z(base + 8 * cs, cs),
      D(base + 9 * cs, cs),
      C(base + 9 * cs, cs, rnd(60, 4)),
      W(5 * GiB, cs, 0x62),
      C(5 * GiB + cs, cs, 0x63, true),
      W(G4 - 32 * KiB, cs, rnd(61)),
      C(8 * GiB - cs, cs, rnd(62, 4)),
    ],
    ranges: [
      [base, 26 * cs],
      [5 * GiB, 2 * cs],
      [G4 - cs, 2 * cs],
      [8 * GiB - cs, cs],
    ],
    reach: [
      { what: 'compressed', guest: base + cs, above: base },
      { what: 'compressed', guest: base + 9 * cs, above: base },
      { what: 'compressed', guest: base + 23 * cs, above: base },
      { what: 'compressed', guest: 8 * GiB - cs, above: base },
      { what: 'data', guest: base + 24 * cs, above: base },
      { what: 'data', guest: G4, above: G4 },
    ],
    sameLayout: false,
    // Clusters 5, 7, 8 and 9 were rewritten, zeroed or discarded.
    packed: [
      [0, 1, 2, 3, 4].map((i) => base + i * cs),
      Array.from({ length: 14 }, (_, i) => base + (10 + i) * cs),
    ],
  };
}

const SCENARIOS: Scenario[] = [
  {
    name: '64 KiB clusters, preallocated 6 GiB grown to 8 GiB: data, zero writes and discards at host offsets across 2^31, 2^32 and beyond 6 GiB',
    ...PREALLOC_6G_TO_8G,
    opts: ['preallocation=metadata'],
    clusterSize: 64 * KiB,
    ops: [
      W(G4 - 3 * MiB, 4 * MiB, rnd(1)),
      // New L2 tables and clusters beyond the preallocated 6 GiB.
      W(6 * GiB + 100, 4096, 0x34),
      W(7 * GiB + 5, 200 * KiB, rnd(2, 16)),
      W(G2 - 1000, 3000, 0x31),
      W(G2 + 64 * KiB - 1, 2, 0x3a),
      W(5 * GiB + 12345, 70000, 0x32),
      Z(5 * GiB + MiB, 256 * KiB),
      Z(5 * GiB + 2 * MiB, 256 * KiB, true),
      D(5 * GiB + 3 * MiB, 128 * KiB),
      // Reuses a cluster freed above 5 GiB.
      W(5 * GiB + 2 * MiB + 64 * KiB, 64 * KiB, 0x33),
      Z(7 * GiB + 64 * KiB, 64 * KiB, true),
      W(8 * GiB - 1000, 1000, 0x35),
      Z(G4 - 64 * KiB, 128 * KiB, true),
      D(G4 + 4 * 64 * KiB, 2 * 64 * KiB),
      W(G4 + 4 * 64 * KiB + 512, 512, 0x36),
      W(G4 - 32 * KiB, 64 * KiB, 0x37),
    ],
    ranges: [
      [G2 - 64 * KiB, 192 * KiB],
      [G4 - 4 * MiB, 5 * MiB],
      [5 * GiB, 4 * MiB],
      [6 * GiB, 64 * KiB],
      [7 * GiB, 320 * KiB],
      [8 * GiB - 64 * KiB, 64 * KiB],
    ],
    reach: [
      { what: 'data', guest: G2, above: G2 },
      { what: 'data', guest: G4 + MiB, above: G4 },
      { what: 'data', guest: 5 * GiB, above: 5 * GiB },
      { what: 'data', guest: 6 * GiB, above: 6 * GiB },
      { what: 'data', guest: 7 * GiB, above: 6 * GiB },
      // Not the L2 table of 6 GiB: it takes the low cluster the resize freed when it moved the L1 table. The one
      // of 7.5 GiB reuses a cluster freed above 5 GiB.
      { what: 'l2', guest: 7 * GiB, above: 6 * GiB },
      { what: 'l2', guest: 8 * GiB - 1, above: G4 },
    ],
    sameLayout: true,
    openOptions: STRESS_OPTIONS,
  },
  compressedScenario('zlib', 2 * MiB),
  compressedScenario('zstd', 2 * MiB),
  compressedScenario('zlib', 64 * KiB),
  compressedScenario('zstd', 64 * KiB),
  {
    name: 'extended L2, preallocated 6 GiB grown to 8 GiB: subcluster writes, zeroes and compressed clusters above 4 GiB',
    ...PREALLOC_6G_TO_8G,
    opts: ['extended_l2=on', 'preallocation=metadata'],
    clusterSize: 64 * KiB,
    ops: [
      W(5 * GiB + 3 * 2048, 2 * 2048, 0x71),
      W(5 * GiB + 64 * KiB + 100, 300, 0x72),
      Z(5 * GiB + 128 * KiB + 4096, 8192),
      Z(5 * GiB + 192 * KiB, 64 * KiB, true),
      W(5 * GiB + 192 * KiB + 2048, 2048, 0x73),
      W(G4 - 2048, 4096, 0x74),
      C(6 * GiB + 64 * KiB, 64 * KiB, rnd(70, 4)),
      // Before anything frees a compressed cluster: QEMU 7.2 would pack this one into a freed and reused cluster
      // (see semantics.test.ts) and corrupt its own twin.
      C(7 * GiB + MiB, 64 * KiB, rnd(72, 2)),
      W(6 * GiB + 64 * KiB + 2048, 2048, 0x75),
      D(6 * GiB + 128 * KiB, 64 * KiB),
      W(6 * GiB + 3 * 64 * KiB + 6144, 2048, 0x76),
      Z(6 * GiB + 3 * 64 * KiB, 2048),
      W(7 * GiB, 200 * KiB, rnd(71)),
      Z(7 * GiB + 64 * KiB + 4096, 4096, true),
    ],
    ranges: [
      [5 * GiB, 256 * KiB],
      [G4 - 64 * KiB, 128 * KiB],
      [6 * GiB, 256 * KiB],
      [7 * GiB, 256 * KiB],
      [7 * GiB + MiB, 64 * KiB],
    ],
    reach: [
      { what: 'data', guest: 5 * GiB + 3 * 2048, above: 5 * GiB },
      { what: 'data', guest: 6 * GiB + 3 * 64 * KiB + 6144, above: 6 * GiB },
      { what: 'data', guest: 7 * GiB, above: 6 * GiB },
      { what: 'l2', guest: 7 * GiB, above: 6 * GiB },
      { what: 'compressed', guest: 7 * GiB + MiB, above: 6 * GiB },
    ],
    sameLayout: true,
    openOptions: { 'l2-cache-entry-size': '4096', 'overlap-check': 'all' },
  },
  {
    name: 'plain 8 GiB image, 64 KiB clusters: guest offsets across 2^31 and 2^32 (small host offsets)',
    size: '8G',
    opts: [],
    clusterSize: 64 * KiB,
    ops: [
      W(G2 - 512, 1024, 0x81),
      W(G4 - 100, 200, 0x82),
      W(5 * GiB + 3, 100 * KiB, rnd(80)),
      // Over the cluster the previous write allocated: refused by both.
      C(G4, 64 * KiB, 0x83, true),
      C(G4 + 64 * KiB, 64 * KiB, 0x83),
      C(5 * GiB + MiB, 64 * KiB, rnd(81, 4)),
      Z(5 * GiB, 64 * KiB, true),
      D(5 * GiB + 64 * KiB, 64 * KiB),
      W(8 * GiB - 64 * KiB, 64 * KiB, 0x84),
      Z(G4 - 64 * KiB, 64 * KiB),
      W(G4 + 3 * 64 * KiB, 1, 0x85),
      W(G4 + 4 * 64 * KiB - 7, 14, 0x86),
    ],
    ranges: [
      [G2 - 64 * KiB, 128 * KiB],
      [G4 - 64 * KiB, 320 * KiB],
      [5 * GiB, 2 * MiB],
      [8 * GiB - 128 * KiB, 128 * KiB],
    ],
    reach: [
      { what: 'compressed', guest: G4 + 64 * KiB, above: 0 },
      { what: 'compressed', guest: 5 * GiB + MiB, above: 0 },
      { what: 'data', guest: 8 * GiB - 1, above: 0 },
    ],
    sameLayout: true,
  },
  {
    name: 'plain 8 GiB image: discards and zero writes where no L2 table exists (beyond 2^32)',
    size: '8G',
    opts: [],
    clusterSize: 64 * KiB,
    ops: [
      W(G4 + 64 * KiB, 64 * KiB, 0x87),
      D(3 * GiB, MiB),
      D(5 * GiB, MiB),
      Z(6 * GiB, 128 * KiB),
      Z(7 * GiB, 128 * KiB, true),
      W(7 * GiB + 512 * MiB, 4096, 0x88),
    ],
    ranges: [
      [G4, 256 * KiB],
      [7 * GiB + 512 * MiB, 64 * KiB],
    ],
    reach: [{ what: 'data', guest: 7 * GiB + 512 * MiB, above: 0 }],
    // QEMU 7.2 allocates an (empty) L2 table to discard a range that has none; we skip it (cluster.ts,
    // clusterDiscard), so later allocations sit elsewhere. Content only.
    sameLayout: false,
  },
  {
    name: '512-byte clusters, 8 GiB: many L2 tables, compressed clusters and zeroes beyond 2^32',
    size: '8G',
    opts: ['cluster_size=512'],
    clusterSize: 512,
    ops: [
      W(G2 - 300, 600, 0x91),
      W(G4 - 700, 1400, rnd(90)),
      W(5 * GiB + 1, 5000, 0x92),
      C(5 * GiB + 64 * KiB, 512, rnd(91, 4)),
      C(G4 + 512 * 10, 2048, 0x93),
      Z(5 * GiB, 1024, true),
      D(5 * GiB + 4096, 1024),
      Z(7 * GiB + 512, 512),
      W(8 * GiB - 512, 512, 0x94),
      W(5 * GiB + 64 * KiB + 100, 50, 0x95),
    ],
    ranges: [
      [G2 - 4096, 8192],
      [G4 - 4096, 16 * KiB],
      [5 * GiB, 72 * KiB],
      [7 * GiB, 4096],
      [8 * GiB - 4096, 4096],
    ],
    reach: [
      { what: 'compressed', guest: G4 + 512 * 10, above: 0 },
      { what: 'data', guest: 5 * GiB + 64 * KiB, above: 0 },
    ],
    sameLayout: true,
  },
  {
    name: 'refcount_bits=64: refcount table and blocks above 4 GiB, a new refcount block at 6 GiB',
    // End of file just below 6 GiB after the amend; refcount blocks cover 512 MiB each.
    size: String(6 * GiB - 2 * MiB),
    opts: ['preallocation=metadata'],
    prepare: (w, image) => {
      w.qemuImg('amend', '-o', 'refcount_bits=64', image);
      w.qemuImg('resize', '-q', image, '8G');
    },
    clusterSize: 64 * KiB,
    ops: [
      W(7 * GiB, MiB, rnd(100)),
      W(7 * GiB + 512 * MiB, 64 * KiB, 0xa1),
      Z(5 * GiB, 512 * KiB, true),
      W(7 * GiB + 2 * MiB, 2 * MiB, rnd(101)),
      C(6 * GiB + 64 * MiB, 64 * KiB, rnd(102, 4)),
      W(G4 + 12345, 100, 0xa2),
      W(G2 + 5, 100, 0xa3),
    ],
    ranges: [
      [7 * GiB, 4 * MiB],
      [7 * GiB + 512 * MiB, 64 * KiB],
      [5 * GiB, MiB],
      [6 * GiB + 64 * MiB, 64 * KiB],
      [G4, 64 * KiB],
      [G2, 64 * KiB],
    ],
    reach: [
      { what: 'reftable', above: G4 },
      { what: 'refblock-of-data', guest: G4, above: G4 },
      { what: 'refblock-of-data', guest: 7 * GiB + 4 * MiB - 1, above: 6 * GiB },
      { what: 'data', guest: 7 * GiB + 4 * MiB - 1, above: 6 * GiB },
    ],
    sameLayout: true,
    openOptions: STRESS_OPTIONS,
  },
  {
    name: 'requests of almost 2 GiB (the largest qemu-io sends): zeroing and discarding the whole host range 2 GiB..6 GiB',
    ...PREALLOC_6G_TO_8G,
    opts: ['preallocation=metadata'],
    clusterSize: 64 * KiB,
    ops: [
      W(G2 + 100 * MiB, MiB, rnd(130)),
      W(G4 + 100 * MiB, MiB, rnd(131)),
      W(6 * GiB + 100 * MiB, MiB, rnd(132)),
      Z(G2 - 64 * KiB, MAX_REQUEST, true),
      D(G4 - 64 * KiB, MAX_REQUEST),
      Z(6 * GiB - 64 * KiB, MAX_REQUEST),
      // First fit: these land in the freed range near 2 GiB.
      W(7 * GiB, 2 * MiB, rnd(133)),
      W(G4 + 200 * MiB, 64 * KiB, 0xd1),
    ],
    ranges: [
      [G2 + 100 * MiB, MiB],
      [G4 - 128 * KiB, 256 * KiB],
      [G4 + 100 * MiB, MiB],
      [G4 + 200 * MiB, 64 * KiB],
      [6 * GiB + 100 * MiB, MiB],
      [7 * GiB, 2 * MiB],
    ],
    reach: [
      { what: 'data', guest: 7 * GiB, above: G2 },
      { what: 'data', guest: G4 + 200 * MiB, above: G2 },
    ],
    sameLayout: true,
  },
  {
    name: 'concurrent requests above 4 GiB: allocating, copy-on-write, compressed and zero writes in flight together',
    ...PREALLOC_6G_TO_8G,
    opts: ['preallocation=metadata'],
    clusterSize: 64 * KiB,
    concurrent: true,
    ops: Array.from({ length: 8 }, (_, i) => [
      W(6 * GiB + i * 192 * KiB + 1000, 100 * KiB, rnd(200 + i)),
      W(5 * GiB + i * MiB + 777, 5000, 0x10 + i),
      C(7 * GiB + i * 64 * KiB, 64 * KiB, rnd(210 + i, 4)),
      Z(5 * GiB + 512 * MiB + i * 128 * KiB, 64 * KiB, true),
      W(G4 - 4 * MiB + i * 512 * KiB, 512 * KiB, rnd(220 + i)),
    ]).flat(),
    ranges: [
      [6 * GiB, 8 * 192 * KiB],
      [5 * GiB, 8 * MiB],
      [7 * GiB, 8 * 64 * KiB],
      [5 * GiB + 512 * MiB, MiB],
      [G4 - 4 * MiB, 4 * MiB],
    ],
    reach: [
      { what: 'data', guest: 6 * GiB + 1000, above: 6 * GiB },
      // (Possibly in clusters the concurrent zero writes freed above 5.5 GiB.)
      { what: 'compressed', guest: 7 * GiB + 7 * 64 * KiB, above: G4 },
      { what: 'data', guest: G4 - 1, above: G2 },
    ],
    sameLayout: false,
    openOptions: STRESS_OPTIONS,
  },
  {
    name: 'resize through the driver: metadata preallocation beyond 6 GiB, growth past 2^33, shrink',
    size: '6G',
    opts: ['preallocation=metadata'],
    clusterSize: 64 * KiB,
    ops: [
      R(8 * GiB, 'metadata'),
      W(7 * GiB + 3, 100 * KiB, rnd(120)),
      W(6 * GiB - 32 * KiB, 64 * KiB, 0xc1),
      R(10 * GiB),
      W(9 * GiB + 512 * MiB, 64 * KiB, 0xc2),
      C(9 * GiB + 512 * MiB + 64 * KiB, 64 * KiB, 0xc3),
      W(8 * GiB + 100, 64 * KiB, rnd(121)),
      R(7 * GiB + 512 * MiB),
      R(9 * GiB),
      W(8 * GiB + 512 * MiB, 4096, 0xc4),
    ],
    ranges: [
      [6 * GiB - 64 * KiB, 128 * KiB],
      [7 * GiB, 128 * KiB],
      [7 * GiB + 512 * MiB - 64 * KiB, 64 * KiB],
      [8 * GiB, 128 * KiB],
      [8 * GiB + 512 * MiB, 64 * KiB],
      [9 * GiB - 64 * KiB, 64 * KiB],
    ],
    reach: [
      { what: 'data', guest: 6 * GiB, above: 6 * GiB },
      { what: 'data', guest: 7 * GiB, above: 6 * GiB },
      { what: 'data', guest: 7 * GiB + 512 * MiB - 1, above: 6 * GiB },
      { what: 'l2', guest: 7 * GiB, above: 6 * GiB },
      { what: 'data', guest: 8 * GiB + 512 * MiB, above: 0 },
    ],
    sameLayout: true,
  },
  {
    name: 'internal snapshots of a preallocated image: COW of shared clusters above 4 GiB, snapshot L1 tables beyond 6 GiB',
    ...PREALLOC_6G_TO_8G,
    opts: ['preallocation=metadata'],
    clusterSize: 64 * KiB,
    ops: [
      W(G4 - 64 * KiB, 128 * KiB, rnd(110)),
      W(7 * GiB, 128 * KiB, 0xb1),
      C(7 * GiB + MiB, 64 * KiB, rnd(111, 4)),
      { kind: 'snapshot', name: 's1' },
      W(G4 - 32 * KiB, 64 * KiB, 0xb2),
      W(7 * GiB + 64 * KiB, 64 * KiB, 0xb3),
      Z(7 * GiB + MiB, 64 * KiB, true),
      { kind: 'snapshot', name: 's2' },
      D(7 * GiB, 64 * KiB),
      { kind: 'apply', name: 's1' },
      W(5 * GiB, 4096, 0xb4),
      { kind: 'snapshot', name: 's3' },
      { kind: 'apply', name: 's2' },
      W(7 * GiB + 2 * MiB, 4096, 0xb5),
    ],
    ranges: [
      [G4 - 64 * KiB, 128 * KiB],
      [5 * GiB, 64 * KiB],
      [7 * GiB, 3 * MiB],
    ],
    reach: [
      { what: 'data', guest: G4 - 1, above: 6 * GiB },
      { what: 'data', guest: 7 * GiB + 2 * MiB, above: 6 * GiB },
      { what: 'l2', guest: 7 * GiB, above: 6 * GiB },
    ],
    sameLayout: true,
    openOptions: STRESS_OPTIONS,
  },
];

/** Block status of every probed guest offset, through our driver. */
async function probeStatus(be: BlockBackend, reach: Reach[]): Promise<(BlockStatusResult | null)[]> {
  const out: (BlockStatusResult | null)[] = [];
  for (const r of reach) out.push(r.what === 'data' || r.what === 'compressed' ? await be.blockStatus(r.guest, 1) : null);
  return out;
}

/** Our block status must point where the image file's L2 entry does (host offsets above 4 GiB included). */
function checkStatus(path: string, clusterSize: number, reach: Reach[], status: (BlockStatusResult | null)[]): void {
  reach.forEach((r, i) => {
    const st = status[i];
    if (!st || (r.what !== 'data' && r.what !== 'compressed')) return;
    const label = `block status of ${path.replace(/.*\//, '')} at ${hexAt(r.guest)}`;
    expect(st.ret & BlockStatus.DATA, label).toBe(BlockStatus.DATA);
    if (r.what === 'compressed') {
      expect(st.ret & BlockStatus.OFFSET_VALID, label).toBe(0);
    } else {
      expect(st.ret & BlockStatus.OFFSET_VALID, label).toBe(BlockStatus.OFFSET_VALID);
      expect(st.map, label).toBe(Number(rawMapping(path, r.guest).host) + (r.guest % clusterSize));
    }
  });
}

/** Our standalone check (read-only) must report exactly what `qemu-img check --output=json` reports. */
async function expectCheckParity(w: Workdir, image: string): Promise<void> {
  const io = new FileImageIO(w.path(image));
  let result;
  try {
    result = await checkImage(io, 'none');
  } finally {
    io.close();
  }
  const q = qemuCheckJson(w.path(image));
  expect(result.messages, `${image}: check messages`).toEqual(q.lines);
  expect(formatCheckJson(result, image), `${image}: check report`).toBe(q.stdout);
  expect(checkExitCode(result, 'none')).toBe(q.status);
}

/** `qemu-img map --output=json`. */
const qemuMap = (w: Workdir, image: string): string => {
  const r = run('qemu-img', ['map', '-U', '--output=json', image], w.dir);
  expect(r.status, r.out).toBe(0);
  return r.out;
};

async function runScenario(sc: Scenario): Promise<void> {
  const w = new Workdir();
  try {
    const ours = 'ours.qcow2';
    const twin = 'twin.qcow2';
    w.create(ours, sc.size, sc.opts);
    if (sc.resize) w.qemuImg('resize', '-q', ours, sc.resize);
    sc.prepare?.(w, ours);
    const cp = run('cp', ['--sparse=always', w.path(ours), w.path(twin)]);
    expect(cp.status, cp.out).toBe(0);

    const qemu = applyQemu(w, twin, sc.ops);
    const refusals = sc.ops.filter((o) => o.kind === 'compressed' && o.fails).length;
    expect(qemu.failed).toBe(refusals);

    // Ours: the sequence, then read back in the same session (cached tables).
    let graph = newGraph();
    const { node, be } = await openQcow2(graph, w.path(ours), sc.openOptions ? { options: sc.openOptions } : {});
    const got = await applyOurs(node, be, sc.ops, sc.concurrent);
    expect(got.failed).toBe(refusals);
    const oursLive: Uint8Array[] = [];
    for (const [off, n] of sc.ranges) oursLive.push(await be.read(off, n));
    const oursStatus = await probeStatus(be, sc.reach);
    await graph.close();

    const chk = qemuCheck(w.path(ours));
    expect(chk.out).toContain('No errors were found on the image.');
    expect(chk.status).toBe(0);
    const cmp = run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', ours, twin], w.dir);
    expect(cmp.out).toContain('Images are identical');
    expect(qemuCheck(w.path(twin)).status).toBe(0);

    // QEMU's twin read through our driver (read-only, fresh open: QEMU's layout, our decoding).
    graph = newGraph();
    const t = await openQcow2(graph, w.path(twin), { readOnly: true });
    const twinByUs: Uint8Array[] = [];
    for (const [off, n] of sc.ranges) twinByUs.push(await t.be.read(off, n));
    const twinStatus = await probeStatus(t.be, sc.reach);
    const twinMapByUs = await blockgraphMap(t.node);
    await graph.close();
    expect(twinMapByUs).toEqual(qemuImgMap(w, twin));

    sc.ranges.forEach(([off, n], i) => {
      const want = expected(sc.ops, sc.clusterSize, off, n);
      expectSame(qemuRange(w, twin, off, n), want, `qemu reading the twin at ${hexAt(off)}`, off);
      expectSame(qemuRange(w, ours, off, n), want, `qemu reading ours at ${hexAt(off)}`, off);
      expectSame(oursLive[i]!, want, `our driver reading ours at ${hexAt(off)}`, off);
      expectSame(twinByUs[i]!, want, `our driver reading the twin at ${hexAt(off)}`, off);
    });

    for (const r of sc.reach) {
      checkReach(w.path(twin), r);
      checkReach(w.path(ours), r);
    }
    checkStatus(w.path(ours), sc.clusterSize, sc.reach, oursStatus);
    checkStatus(w.path(twin), sc.clusterSize, sc.reach, twinStatus);
    await expectCheckParity(w, ours);
    await expectCheckParity(w, twin);

    if (sc.packed) {
      // Both images must have compressed data spanning host clusters (the descriptor's sector count matters).
      expect(sc.packed.map((run) => checkPacking(w.path(twin), run))).toContain(true);
      expect(sc.packed.map((run) => checkPacking(w.path(ours), run))).toContain(true);
    }

    if (sc.sameLayout) {
      for (const r of sc.reach) {
        if (r.what === 'compressed') {
          // Compressed sizes (so the byte offsets) depend on the codec build; the cluster is what must match.
          const a = rawMapping(w.path(ours), r.guest);
          const b = rawMapping(w.path(twin), r.guest);
          expect(a.l2).toBe(b.l2);
          expect(a.host >> BigInt(rawHeader(w.path(ours)).clusterBits)).toBe(b.host >> BigInt(rawHeader(w.path(twin)).clusterBits));
        } else if (r.what === 'reftable') {
          expect(rawHeader(w.path(ours)).reftableOffset).toBe(rawHeader(w.path(twin)).reftableOffset);
        } else {
          expect(rawMapping(w.path(ours), r.guest), JSON.stringify(r)).toEqual(rawMapping(w.path(twin), r.guest));
        }
      }
      expect(qemuMap(w, ours)).toBe(qemuMap(w, twin));
    }
  } finally {
    w.cleanup();
  }
}

describe.skipIf(!hasQemu)('offsets at and beyond 2^31 and 2^32 against qemu-io 7.2', () => {
  test.each(SCENARIOS.map((s) => [s.name, s] as const))('%s', async (_name, sc) => {
    await runScenario(sc);
  });

  test.each([
    ['64 KiB clusters', '6G', { clusterSize: 65536 }, ['cluster_size=64k']],
    ['refcount_bits=64 (refcount blocks every 512 MiB, above 4 GiB)', '6G', { refcountBits: 64 }, ['refcount_bits=64']],
    ['2 MiB clusters, extended L2', '9G', { clusterSize: 2 * MiB, extendedL2: true }, ['cluster_size=2M', 'extended_l2=on']],
  ] as const)('creation with preallocation=metadata, %s: the metadata qemu-img create writes', async (_n, size, opts, qemuOpts) => {
    const w = new Workdir();
    try {
      const graph = newGraph();
      await graph.createImage('qcow2', { filename: w.path('ours.qcow2'), size, preallocation: 'metadata', ...opts });
      await graph.close();
      w.create('twin.qcow2', size, ['preallocation=metadata', ...qemuOpts]);
      // Sparse: metadata only.
      expect(statSync(w.path('ours.qcow2')).blocks * 512).toBeLessThan(64 * MiB);
      expect(statSync(w.path('ours.qcow2')).size).toBe(statSync(w.path('twin.qcow2')).size);
      expect(statSync(w.path('ours.qcow2')).size).toBeGreaterThan(G4);
      expectSameMetadata(w.path('ours.qcow2'), w.path('twin.qcow2'));
      expect(qemuMap(w, 'ours.qcow2')).toBe(qemuMap(w, 'twin.qcow2'));
      expect(qemuCheck(w.path('ours.qcow2')).status).toBe(0);
    } finally {
      w.cleanup();
    }
  });

  test.each([
    ['refcount_bits=64', String(6 * GiB - 2 * MiB), { refcountBits: 64 }, 'refcount_bits=64'],
    ['compat=0.10 (zero clusters above 4 GiB expanded)', '6G', { compat: '0.10' }, 'compat=0.10'],
  ] as const)('amend through the driver on a preallocated image, %s: the metadata qemu-img amend writes', async (_n, size, opts, qemuOpt) => {
    const w = new Workdir();
    try {
      w.create('ours.qcow2', size, ['preallocation=metadata']);
      // Data above 4 GiB, zero clusters that keep their cluster above 5 GiB (ZERO_ALLOC: v2 gets a zeroed data
      // cluster), unmapped zero clusters (ZERO_PLAIN: unallocated in v2), a compressed one.
      w.qemuIo(
        'ours.qcow2',
        `write -q -P 0xf1 ${G4 - 32 * KiB} 64k`,
        `write -q -z ${5 * GiB + 4 * MiB} 256k`,
        `write -q -z -u ${5 * GiB} 1M`,
        `write -q -P 0xf2 ${5 * GiB + 64 * KiB} 4k`,
        `discard -q ${5 * GiB + 2 * MiB} 128k`,
        `write -q -c -P 0xf3 ${5 * GiB + 2 * MiB} 64k`,
      );
      expect(run('cp', ['--sparse=always', w.path('ours.qcow2'), w.path('twin.qcow2')]).status).toBe(0);
      const graph = newGraph();
      const { node, be } = await openQcow2(graph, w.path('ours.qcow2'));
      await node.impl.amend!(opts);
      const back = await be.read(G4 - 32 * KiB, 64 * KiB);
      await graph.close();
      expect(back.every((b) => b === 0xf1)).toBe(true);
      w.qemuImg('amend', '-o', qemuOpt, 'twin.qcow2');
      expectSameMetadata(w.path('ours.qcow2'), w.path('twin.qcow2'));
      expect(qemuMap(w, 'ours.qcow2')).toBe(qemuMap(w, 'twin.qcow2'));
      const chk = qemuCheck(w.path('ours.qcow2'));
      expect(chk.out).toContain('No errors were found on the image.');
      expect(run('qemu-img', ['compare', 'ours.qcow2', 'twin.qcow2'], w.dir).out).toContain('Images are identical');
      expect(statSync(w.path('ours.qcow2')).blocks * 512).toBeLessThan(64 * MiB);
    } finally {
      w.cleanup();
    }
  });

  test('check and repair with refcount structures above 4 GiB: same findings, same repaired metadata as qemu-img check -r', async () => {
    const w = new Workdir();
    try {
      const img = 'img.qcow2';
      w.create(img, String(6 * GiB - 2 * MiB), ['preallocation=metadata']);
      w.qemuImg('amend', '-o', 'refcount_bits=64', img);
      w.qemuImg('resize', '-q', img, '8G');
      w.qemuIo(img, 'write -q -P 0xe1 7G 1M', 'write -q -P 0xe2 4G 64k', 'write -q -c -P 0xe3 7680M 64k');
      const h = rawHeader(w.path(img));
      const cs = 2 ** h.clusterBits;
      const refcountAt = (host: bigint): bigint => {
        const block = rawRefblockFor(w.path(img), host);
        expect(block).toBeGreaterThan(BigInt(G4));
        return block + ((host / BigInt(cs)) % BigInt(cs / 8)) * 8n;
      };
      const u64 = (v: bigint): Uint8Array => {
        const b = Buffer.alloc(8);
        b.writeBigUInt64BE(v);
        return b;
      };
      // A leak just below the end of the file (grown by two clusters), in the refcount block at 6 GiB.
      const end = BigInt(statSync(w.path(img)).size);
      const fd = openSync(w.path(img), 'r+');
      ftruncateSync(fd, Number(end) + 2 * cs);
      closeSync(fd);
      const leak = end + BigInt(cs);
      expect(leak).toBeGreaterThan(BigInt(6 * GiB));
      pwrite(w.path(img), refcountAt(leak), u64(1n));
      // A data cluster above 6 GiB counted twice, one above 4 GiB not counted at all.
      const high = rawMapping(w.path(img), 7 * GiB + MiB - 1).host;
      expect(high).toBeGreaterThan(BigInt(6 * GiB));
      pwrite(w.path(img), refcountAt(high), u64(2n));
      const mid = rawMapping(w.path(img), G4).host;
      expect(mid).toBeGreaterThan(BigInt(G4));
      pwrite(w.path(img), refcountAt(mid), u64(0n));

      for (const fix of ['leaks', 'all'] as const) {
        const ours = `ours-${fix}.qcow2`;
        const theirs = `qemu-${fix}.qcow2`;
        for (const f of [ours, theirs]) expect(run('cp', ['--sparse=always', w.path(img), w.path(f)]).status).toBe(0);
        const io = new FileImageIO(w.path(ours));
        let result;
        try {
          result = await checkImage(io, fix);
        } finally {
          io.close();
        }
        const q = qemuCheckJson(w.path(theirs), fix);
        expect(result.messages, `${fix}: messages`).toEqual(q.lines);
        expect(formatCheckJson(result, theirs), `${fix}: report`).toBe(q.stdout);
        expect(checkExitCode(result, fix)).toBe(q.status);
        expectSameMetadata(w.path(ours), w.path(theirs));
        expect(qemuCheck(w.path(ours)).status).toBe(qemuCheck(w.path(theirs)).status);
      }
      // After -r all the image is clean, and it is still the same disk.
      expect(qemuCheck(w.path('ours-all.qcow2')).status).toBe(0);
      expect(run('qemu-img', ['compare', 'ours-all.qcow2', img], w.dir).out).toContain('Images are identical');

      // A refcount table entry pointing at an unaligned refcount block (the one at 6 GiB): rebuilt by -r all.
      const broken = 'broken.qcow2';
      expect(run('cp', ['--sparse=always', w.path('ours-all.qcow2'), w.path(broken)]).status).toBe(0);
      const bh = rawHeader(w.path(broken));
      const index = Number((BigInt(6 * GiB) / BigInt(cs)) / BigInt(cs / 8));
      const entryAt = bh.reftableOffset + BigInt(index * 8);
      const entry = pread(w.path(broken), entryAt, 8).readBigUInt64BE(0);
      expect(entry).toBeGreaterThanOrEqual(BigInt(6 * GiB));
      pwrite(w.path(broken), entryAt, u64(entry + 512n));
      const ours = 'ours-rebuild.qcow2';
      const theirs = 'qemu-rebuild.qcow2';
      for (const f of [ours, theirs]) expect(run('cp', ['--sparse=always', w.path(broken), w.path(f)]).status).toBe(0);
      const io = new FileImageIO(w.path(ours));
      let result;
      try {
        result = await checkImage(io, 'all');
      } finally {
        io.close();
      }
      const q = qemuCheckJson(w.path(theirs), 'all');
      expect(q.lines.join('\n')).toMatch(/Rebuilding refcount structure/);
      expect(result.messages).toEqual(q.lines);
      expect(formatCheckJson(result, theirs)).toBe(q.stdout);
      expect(checkExitCode(result, 'all')).toBe(q.status);
      expectSameMetadata(w.path(ours), w.path(theirs));
      expect(rawHeader(w.path(ours)).reftableOffset).toBeGreaterThan(BigInt(G4));
      expect(qemuCheck(w.path(ours)).status).toBe(0);
      expect(run('qemu-img', ['compare', ours, img], w.dir).out).toContain('Images are identical');
    } finally {
      w.cleanup();
    }
  });
});
