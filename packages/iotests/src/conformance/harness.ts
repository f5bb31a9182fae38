/**
 * What every conformance test runs inside: a seeded PRNG, subjects from the factory (checked against the
 * capabilities seen when the suite was registered), BlockBackends that are released afterwards, I/O helpers that
 * log what they did, and failure messages that carry the seed, the driver and the last operations.
 */
import {
  alignDown,
  alignUp,
  BlockStatus,
  IOVector,
  type BackendOptions,
  type BlockBackend,
  type BlockLimits,
  type BlockNode,
  type DriverCapabilities,
  type DriverKind,
  type ReqFlags,
} from '@blockgraph/block-core';
import { ConformanceError, describeError, assertRejects, within } from '../assert.js';
import { describeMismatch, type ByteModel } from '../model.js';
import { deriveSeed, formatSeed, xorshift, type Prng } from '../prng.js';
import type { ConformanceOptions, ConformanceSubject } from './types.js';

export const MiB = 1024 * 1024;
export const KiB = 1024;
/** Node size the suite asks for unless the driver's granularity needs more. */
export const DEFAULT_SIZE = MiB;
/** Environment variable (read through globalThis.process when present) that sets the base seed. */
export const SEED_ENV = 'BLOCKGRAPH_IOTESTS_SEED';
export const DEFAULT_BASE_SEED = 0x5eed0001;
/** How long closing a graph or node may take before the suite calls it a hang. */
export const HANG_MS = 15_000;

/** What the suite learnt from the first factory call; every test is registered from this. */
export interface SuiteInfo {
  readonly suite: string;
  readonly baseSeed: number;
  readonly driver: string;
  readonly kind: DriverKind;
  readonly caps: Readonly<DriverCapabilities>;
  readonly limits: Readonly<BlockLimits>;
  readonly clusterSize: number | undefined;
  /** Largest alignment the driver cares about: request, discard, zero-write alignment, cluster size. */
  readonly granule: number;
  /** Discards of whole blocks of this size must take effect when the driver says `discardZeroes`. */
  readonly discardGranule: number;
  /** Node size every test asks the factory for. */
  readonly size: number;
}

/** The base seed: BLOCKGRAPH_IOTESTS_SEED (a number, hex with 0x, or `random`), else a fixed default. */
export function resolveBaseSeed(): number {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.[SEED_ENV];
  if (!env) return DEFAULT_BASE_SEED;
  if (env === 'random') return Math.floor(Math.random() * 0x100000000) >>> 0;
  const n = Number(env);
  if (!Number.isFinite(n)) throw new ConformanceError(`${SEED_ENV}=${env} is neither a number nor 'random'`);
  return n >>> 0;
}

function pow2AtLeast(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** Open one node to learn the capabilities and limits that decide which tests are registered. */
export async function probeSubject(opts: ConformanceOptions, baseSeed: number): Promise<SuiteInfo> {
  const s = await opts.factory({ size: DEFAULT_SIZE });
  try {
    const node = s.node;
    const limits = { ...node.limits };
    const clusterSize = node.impl.getInfo?.().clusterSize;
    const granule = Math.max(
      limits.requestAlignment,
      limits.pdiscardAlignment || 1,
      limits.pwriteZeroesAlignment || 1,
      clusterSize || 1,
    );
    const discardGranule = Math.max(limits.requestAlignment, limits.pdiscardAlignment || 1, clusterSize || 1);
    const size = Math.max(DEFAULT_SIZE, alignUp(16 * granule, pow2AtLeast(granule)));
    return {
      suite: opts.name,
      baseSeed,
      driver: node.driver.name,
      kind: node.driver.kind,
      caps: { ...node.capabilities },
      limits,
      clusterSize,
      granule,
      discardGranule,
      size,
    };
  } finally {
    try {
      await within(HANG_MS, s.graph.close(), 'closing the probe graph');
    } finally {
      await s.cleanup?.();
    }
  }
}

export interface StatusAnswer {
  offset: number;
  pnum: number;
  ret: number;
}

export function statusNames(ret: number): string {
  const names = Object.entries(BlockStatus)
    .filter(([, v]) => ret & v)
    .map(([k]) => k);
  return `0x${ret.toString(16)}${names.length ? ` (${names.join('|')})` : ''}`;
}

const contextual = new WeakSet<Error>();

/** One registered test while it runs. */
export class TestRun {
  readonly seed: number;
  readonly rng: Prng;
  readonly caps: Readonly<DriverCapabilities>;
  readonly size: number;
  private readonly subjects: ConformanceSubject[] = [];
  private readonly backends = new Set<BlockBackend>();
  private readonly history: string[] = [];
  private ops = 0;

  constructor(
    readonly opts: ConformanceOptions,
    readonly info: SuiteInfo,
    readonly testName: string,
  ) {
    this.seed = deriveSeed(info.baseSeed, `${info.suite}/${testName}`);
    this.rng = xorshift(this.seed);
    this.caps = info.caps;
    this.size = info.size;
  }

  // --- failure reporting --------------------------------------------------------------------------------------

  /** Remember an operation; the last ones are printed when the test fails. */
  log(op: string): void {
    this.ops++;
    this.history.push(`#${this.ops} ${op}`);
    if (this.history.length > 16) this.history.shift();
  }

  /** A ConformanceError whose message carries everything needed to reproduce the failure. */
  error(message: string, cause?: unknown): ConformanceError {
    const i = this.info;
    const lines = [
      `[${i.suite}] ${this.testName}: ${message}`,
      `  seed ${formatSeed(this.seed)} (reproduce with ${SEED_ENV}=${formatSeed(i.baseSeed)})`,
      `  driver '${i.driver}' (${i.kind}), node size ${i.size}, request alignment ${i.limits.requestAlignment}` +
        (i.limits.maxTransfer ? `, max transfer ${i.limits.maxTransfer}` : '') +
        (i.clusterSize ? `, cluster size ${i.clusterSize}` : ''),
    ];
    if (this.history.length) lines.push(`  last operations:\n    ${this.history.join('\n    ')}`);
    if (cause !== undefined && !(cause instanceof ConformanceError)) lines.push(`  cause: ${describeError(cause)}`);
    const e = new ConformanceError(lines.join('\n'), cause === undefined ? undefined : { cause });
    contextual.add(e);
    return e;
  }

  fail(message: string, cause?: unknown): never {
    throw this.error(message, cause);
  }

  check(cond: unknown, message: string | (() => string)): void {
    if (!cond) this.fail(typeof message === 'function' ? message() : message);
  }

  /** Turn anything thrown by a test into a failure with context. */
  wrap(e: unknown): Error {
    if (e instanceof Error && contextual.has(e)) return e;
    if (e instanceof ConformanceError) return this.error(e.message, e.cause);
    return this.error(`unexpected error: ${describeError(e)}`, e);
  }

  // --- subjects and backends ------------------------------------------------------------------------------------

  /** A fresh subject from the factory, checked against what the suite was registered with. */
  async open(o: { readOnly?: boolean; size?: number } = {}): Promise<ConformanceSubject> {
    const size = o.size ?? this.size;
    const req: { size: number; readOnly?: boolean } = { size };
    if (o.readOnly) req.readOnly = true;
    this.log(`factory(${JSON.stringify(req)})`);
    let s: ConformanceSubject;
    try {
      s = await this.opts.factory(req);
    } catch (e) {
      return this.fail(`factory(${JSON.stringify(req)}) failed: ${describeError(e)}`, e);
    }
    this.subjects.push(s);
    const node = s.node;
    this.check(node && s.graph, 'factory must return { graph, node }');
    this.check(node.opened && !node.closed, `factory returned node '${node.nodeName}' that is not open`);
    this.check(s.graph.findNode(node.nodeName) === node, `node '${node.nodeName}' is not in the graph the factory returned`);
    const changed = (Object.keys(this.caps) as (keyof DriverCapabilities)[]).filter((k) => node.capabilities[k] !== this.caps[k]);
    this.check(
      changed.length === 0,
      () =>
        'node capabilities differ from the first factory call (the manifest must be stable): ' +
        changed.map((k) => `${k} ${String(this.caps[k])} → ${String(node.capabilities[k])}`).join(', '),
    );
    this.check(node.totalBytes === size, () => `factory({ size: ${size} }) returned a node of ${node.totalBytes} bytes`);
    if (o.readOnly) this.check(node.readOnly, `factory({ readOnly: true }) returned a writable node '${node.nodeName}'`);
    else if (this.caps.write) this.check(!node.readOnly, `factory({ size }) returned read-only node '${node.nodeName}' although the driver declares write`);
    return s;
  }

  backend(s: ConformanceSubject | BlockNode, opts: BackendOptions = {}): BlockBackend {
    const node = 'nodeName' in s ? s : s.node;
    const be = node.graph.backend(node, opts);
    this.backends.add(be);
    return be;
  }

  release(be: BlockBackend): void {
    this.backends.delete(be);
    be.remove();
  }

  /** Close every subject's graph (hang-guarded), then run the factory's cleanups. */
  async dispose(): Promise<void> {
    let err: unknown;
    for (const be of this.backends) {
      try {
        be.remove();
      } catch (e) {
        err ??= e;
      }
    }
    this.backends.clear();
    for (const s of this.subjects.splice(0)) {
      try {
        await within(HANG_MS, s.graph.close(), 'graph.close() after the test');
      } catch (e) {
        err ??= e;
      }
      try {
        await s.cleanup?.();
      } catch (e) {
        err ??= e;
      }
    }
    if (err !== undefined) throw err;
  }

  // --- random extents -----------------------------------------------------------------------------------------

  /** A random length: mostly small and odd, sometimes around the granule, sometimes large. */
  randomLength(max: number): number {
    const r = this.rng;
    const g = this.info.granule;
    let n: number;
    const k = r.int(10);
    if (k < 3) n = r.range(1, 17);
    else if (k < 6) n = r.range(1, 2 * Math.max(g, 512) + 17);
    else if (k < 8) n = r.pick([g - 1, g, g + 1, 2 * g, 512 - 1, 512 + 1, 4096 + 3].filter((x) => x > 0));
    else if (k < 9) n = r.range(1, 64 * KiB + 511);
    else n = r.range(64 * KiB, 256 * KiB + 1);
    return Math.max(1, Math.min(n, Math.floor(max)));
  }

  /** A random unaligned offset for `len` bytes in a device of `size`; biased towards boundaries. */
  randomOffset(len: number, size: number): number {
    const r = this.rng;
    const g = this.info.granule;
    const last = size - len;
    if (last <= 0) return 0;
    const k = r.int(10);
    let off: number;
    if (k < 2) off = alignDown(r.int(last + 1), g) + r.range(-3, 3);
    else if (k < 3) off = last - r.int(Math.min(last, 3) + 1);
    else if (k < 4) off = r.int(Math.min(last, 3) + 1);
    else off = r.int(last + 1);
    return Math.max(0, Math.min(off, last));
  }

  extent(size = this.size): { offset: number; bytes: number } {
    const bytes = this.randomLength(size);
    return { offset: this.randomOffset(bytes, size), bytes };
  }

  /** An IOVector over `buf` cut into up to `parts` slices at random points (the slices share `buf`). */
  iov(buf: Uint8Array, parts = 1): IOVector {
    if (parts <= 1 || buf.byteLength < 2) return IOVector.of(buf);
    const cuts = new Set<number>();
    const n = this.rng.range(1, parts - 1);
    for (let i = 0; i < n; i++) cuts.add(this.rng.range(1, buf.byteLength - 1));
    const sorted = [...cuts].sort((a, b) => a - b);
    const slices: Uint8Array[] = [];
    let prev = 0;
    for (const c of [...sorted, buf.byteLength]) {
      slices.push(buf.subarray(prev, c));
      prev = c;
    }
    return new IOVector(slices);
  }

  // --- I/O with logging -----------------------------------------------------------------------------------------

  private async io<T>(desc: string, p: () => Promise<T>): Promise<T> {
    this.log(desc);
    try {
      return await p();
    } catch (e) {
      return this.fail(`${desc} failed: ${describeError(e)}`, e);
    }
  }

  write(be: BlockBackend, offset: number, data: Uint8Array, flags: ReqFlags = 0, parts = 1): Promise<void> {
    const fl = flags ? ` flags 0x${flags.toString(16)}` : '';
    return this.io(`write [${offset}, +${data.byteLength})${fl}${parts > 1 ? ` in up to ${parts} slices` : ''}`, () =>
      be.pwritev(offset, data.byteLength, this.iov(data, parts), flags),
    );
  }

  read(be: BlockBackend, offset: number, bytes: number, parts = 1): Promise<Uint8Array> {
    return this.io(`read [${offset}, +${bytes})${parts > 1 ? ` in up to ${parts} slices` : ''}`, async () => {
      const buf = new Uint8Array(bytes);
      // Poison the buffer: a driver that leaves part of it untouched must not pass by luck.
      buf.fill(0xa5);
      await be.preadv(offset, bytes, this.iov(buf, parts));
      return buf;
    });
  }

  zero(be: BlockBackend, offset: number, bytes: number, flags: ReqFlags = 0): Promise<void> {
    return this.io(`write zeroes [${offset}, +${bytes})${flags ? ` flags 0x${flags.toString(16)}` : ''}`, () =>
      be.pwriteZeroes(offset, bytes, flags),
    );
  }

  discard(be: BlockBackend, offset: number, bytes: number): Promise<void> {
    return this.io(`discard [${offset}, +${bytes})`, () => be.pdiscard(offset, bytes));
  }

  flush(be: BlockBackend): Promise<void> {
    return this.io('flush', () => be.flush());
  }

  truncate(be: BlockBackend, size: number): Promise<void> {
    return this.io(`truncate to ${size}`, () => be.truncate(size, true, 'off'));
  }

  /** `p` must fail with a BlockError (with one of `codes`). */
  async rejects(what: string, p: () => Promise<unknown>, codes?: Parameters<typeof assertRejects>[1]): Promise<void> {
    this.log(`${what} (must fail${codes ? ` with ${codes.join('/')}` : ''})`);
    try {
      await assertRejects(p(), codes, what);
    } catch (e) {
      throw this.wrap(e);
    }
  }

  // --- model checks ----------------------------------------------------------------------------------------------

  /** Compare bytes read at `offset` with the model (settling bytes that had several candidates). */
  expect(model: ByteModel, offset: number, actual: Uint8Array, what: string): void {
    const m = model.check(offset, actual);
    if (m) this.fail(`${what}: content differs from the model: ${describeMismatch(m)}`);
  }

  /** Read [offset, +bytes) (default: the whole node) and compare with the model. */
  async verify(be: BlockBackend, model: ByteModel, what: string, offset = 0, bytes = model.size - offset): Promise<void> {
    const chunk = 4 * MiB;
    for (let done = 0; done < bytes; ) {
      const n = Math.min(chunk, bytes - done);
      const buf = await this.read(be, offset + done, n);
      this.expect(model, offset + done, buf, what);
      done += n;
    }
  }

  /** Does a discard on this node have to read back as zeroes (on whole discard granules)? */
  discardMustZero(node: BlockNode): boolean {
    return this.caps.discard && this.caps.discardZeroes && node.common.discard === 'unmap';
  }

  /**
   * What a discard of [offset, +bytes) leaves, per QEMU's semantics: discard is advisory, so each byte keeps its
   * data or reads as zero; with `discardZeroes` (and discard=unmap) whole discard granules read as zeroes.
   */
  modelDiscard(model: ByteModel, node: BlockNode, offset: number, bytes: number): void {
    if (this.discardMustZero(node)) {
      const g = this.info.discardGranule;
      const a = alignUp(offset, g);
      const b = alignDown(offset + bytes, g);
      if (a < b) {
        model.maybeZero(offset, a - offset);
        model.zero(a, b - a);
        model.maybeZero(b, offset + bytes - b);
        return;
      }
    }
    model.maybeZero(offset, bytes);
  }

  // --- block status ----------------------------------------------------------------------------------------------

  /**
   * Ask block status from `offset` to `end` until covered and check the answers' shape: each starts where the
   * previous ended, covers > 0 bytes and no more than asked, EOF exactly on the answer that reaches the end of the
   * node, DATA implies ALLOCATED.
   */
  async statusWalk(be: BlockBackend, offset: number, end: number, wantZero: boolean): Promise<StatusAnswer[]> {
    const total = be.getLength();
    const out: StatusAnswer[] = [];
    let off = offset;
    while (off < end) {
      const desc = `block status [${off}, +${end - off}) wantZero=${wantZero}`;
      const r = await this.io(desc, () => be.blockStatus(off, end - off, wantZero));
      this.check(Number.isSafeInteger(r.pnum) && r.pnum > 0, `${desc}: answer covers ${r.pnum} bytes (must be > 0 before the end)`);
      this.check(r.pnum <= end - off, `${desc}: answer covers ${r.pnum} bytes, more than the ${end - off} asked for`);
      const eof = (r.ret & BlockStatus.EOF) !== 0;
      this.check(eof === (off + r.pnum === total), () =>
        `${desc}: answer [${off}, +${r.pnum}) ${eof ? 'has' : 'lacks'} EOF but ${eof ? 'does not reach' : 'reaches'} the end of the node (${total}); status ${statusNames(r.ret)}`,
      );
      if (r.ret & BlockStatus.DATA) {
        this.check(r.ret & BlockStatus.ALLOCATED, `${desc}: DATA without ALLOCATED: ${statusNames(r.ret)}`);
      }
      out.push({ offset: off, pnum: r.pnum, ret: r.ret });
      off += r.pnum;
      this.check(out.length <= 4 * MiB, `${desc}: more than ${4 * MiB} answers, the walk does not advance`);
    }
    return out;
  }

  /**
   * The answers must agree with the content (`content` holds the node's bytes from `contentOffset`): a ZERO
   * answer reads as zeroes, and a range holding non-zero bytes is reported allocated (this layer or below
   * determines its content) and never ZERO.
   */
  checkStatusContent(answers: readonly StatusAnswer[], content: Uint8Array, contentOffset: number, what: string): void {
    for (const a of answers) {
      const part = content.subarray(a.offset - contentOffset, a.offset - contentOffset + a.pnum);
      const nz = part.findIndex((b) => b !== 0);
      if (nz < 0) continue;
      const at = a.offset + nz;
      this.check(!(a.ret & BlockStatus.ZERO), () =>
        `${what}: block status says [${a.offset}, +${a.pnum}) reads as zeroes (${statusNames(a.ret)}) but offset ${at} holds 0x${part[nz]!.toString(16)}`,
      );
      this.check(a.ret & BlockStatus.ALLOCATED, () =>
        `${what}: block status says [${a.offset}, +${a.pnum}) is unallocated (${statusNames(a.ret)}) but offset ${at} holds data 0x${part[nz]!.toString(16)} written through this node`,
      );
    }
  }
}
