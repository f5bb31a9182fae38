/**
 * `blkdebug` (QEMU's block/blkdebug.c): a filter for tests that injects I/O errors, runs a small state
 * machine driven by block-layer events, and parks requests at breakpoints until the test resumes them.
 *
 * Options are blockdev-add's where they apply: `image` (the child), `inject-error` and `set-state` (lists of
 * rules), `align`, `max-transfer`, `take-child-perms`, `unshare-child-perms`. Breakpoints are the qemu-io
 * commands `break <event> <tag>`, `wait_break <tag>`, `resume <tag>`, `remove_break <tag>`, as methods of the
 * controller that {@link blkdebugOf} / {@link findBlkdebug} return.
 *
 * Events. In QEMU the layer above raises an event on its `file` child (qcow2 and raw raise `read_aio` before a
 * read, io.c raises `flush_to_disk` before flushing a node's data); here blkdebug raises them itself, at the start
 * of each of its own requests, which is the same point for the request that triggered them:
 *   read → `read_aio`; write → `cor_write` (WRITE_UNCHANGED writes only), `write_aio`, `pwritev`, and
 *   `pwritev_done` once written; zero write → `cor_write` (WRITE_UNCHANGED only), `pwritev_zero`; flush →
 *   `flush_to_os`, and `flush_to_disk` when something was written since the last successful flush (QEMU skips a
 *   clean node's flush the same way).
 * Other events (l2_load, refblock_alloc, ...) are accepted in rules and can be raised with `event()`, e.g. by a
 * format driver that wants to be debuggable.
 *
 * Semantics as QEMU 7.2: the state starts at 1; a rule with `state` 0 (the default) applies in every state.
 * When an event fires, every rule for it whose state matches is processed: `set-state` rules pick the new state
 * (it changes after all rules are processed), `inject-error` rules become the active rules (replacing those of
 * an earlier event), breakpoints suspend the request. A request then fails with the first active rule whose
 * `sector`/`offset` lies in its range (or that has none) and whose `iotype` matches (default: read, write,
 * write-zeroes, discard, flush); `once` removes the rule after it fired; without `immediately` the error is
 * returned after one turn of the event loop. Platform-neutral.
 */
import {
  BlockError,
  BlockStatus,
  ChildRole,
  defaultChildPerms,
  defineBlockDriver,
  ERRNO,
  Perm,
  ReqFlag,
  parseQemuBool,
  parseQemuInteger,
  type BlockBackend,
  type BlockDriver,
  type BlockErrorCode,
  type BlockLimits,
  type BlockNode,
  type Child,
  type IOVector,
  type Options,
  type ReqFlags,
} from '@blockgraph/block-core';
import { childCapabilities, childWriteFlags, childZeroFlags, PASSTHROUGH_FILTER_CAPABILITIES } from './child-passthrough.js';

/** QAPI BlkdebugEvent (QEMU 7.2). */
export const BLKDEBUG_EVENTS = [
  'l1_update', 'l1_grow_alloc_table', 'l1_grow_write_table', 'l1_grow_activate_table',
  'l2_load', 'l2_update', 'l2_update_compressed', 'l2_alloc_cow_read', 'l2_alloc_write',
  'read_aio', 'read_backing_aio', 'read_compressed', 'write_aio', 'write_compressed',
  'vmstate_load', 'vmstate_save', 'cow_read', 'cow_write',
  'reftable_load', 'reftable_grow', 'reftable_update',
  'refblock_load', 'refblock_update', 'refblock_update_part', 'refblock_alloc', 'refblock_alloc_hookup',
  'refblock_alloc_write', 'refblock_alloc_write_blocks', 'refblock_alloc_write_table', 'refblock_alloc_switch_table',
  'cluster_alloc', 'cluster_alloc_bytes', 'cluster_free', 'flush_to_os', 'flush_to_disk',
  'pwritev_rmw_head', 'pwritev_rmw_after_head', 'pwritev_rmw_tail', 'pwritev_rmw_after_tail',
  'pwritev', 'pwritev_zero', 'pwritev_done', 'empty_image_prepare',
  'l1_shrink_write_table', 'l1_shrink_free_l2_clusters', 'cor_write', 'cluster_alloc_space', 'none',
] as const;
export type BlkdebugEvent = (typeof BLKDEBUG_EVENTS)[number];

/** QAPI BlkdebugIOType. */
export const BLKDEBUG_IO_TYPES = ['read', 'write', 'write-zeroes', 'discard', 'flush', 'block-status'] as const;
export type BlkdebugIoType = (typeof BLKDEBUG_IO_TYPES)[number];

/** QAPI BlockPermission names, as take-child-perms / unshare-child-perms list them. */
const PERM_BY_NAME: Record<string, number> = {
  'consistent-read': Perm.CONSISTENT_READ,
  write: Perm.WRITE,
  'write-unchanged': Perm.WRITE_UNCHANGED,
  resize: Perm.RESIZE,
};

/** An `inject-error` rule (BlkdebugInjectErrorOptions). */
export interface BlkdebugInjectError {
  event: BlkdebugEvent;
  /** Only in this state; 0 or absent: any state. */
  state?: number;
  /** Only requests of this type (default: read, write, write-zeroes, discard, flush). */
  iotype?: BlkdebugIoType;
  /** errno number (5 = EIO, 28 = ENOSPC) or code; default EIO. */
  errno?: number | BlockErrorCode;
  /** Only requests covering this 512-byte sector (QEMU's option). */
  sector?: number;
  /** Only requests covering this byte (an extension: `sector` in bytes). */
  offset?: number;
  /** Remove the rule once it has failed a request. */
  once?: boolean;
  /** Fail at once instead of after one turn of the event loop. */
  immediately?: boolean;
  /** Wait this long before failing (`delay-ns` of later QEMU versions). */
  delayNs?: number;
}

/** A `set-state` rule (BlkdebugSetStateOptions); `new_state` is QEMU's spelling, `newState` ours. */
export interface BlkdebugSetState {
  event: BlkdebugEvent;
  state?: number;
  newState?: number;
  new_state?: number;
}

export type BlkdebugPermName = 'consistent-read' | 'write' | 'write-unchanged' | 'resize';

/** blockdev-add options of a blkdebug node (kebab-case keys are accepted as well). */
export interface BlkdebugOptions {
  driver: 'blkdebug';
  nodeName?: string;
  image: string | Options;
  injectError?: BlkdebugInjectError[];
  setState?: BlkdebugSetState[];
  align?: number;
  maxTransfer?: number;
  takeChildPerms?: BlkdebugPermName[];
  unshareChildPerms?: BlkdebugPermName[];
  [common: string]: unknown;
}

type Rule =
  | { action: 'inject'; event: BlkdebugEvent; state: number; code: BlockErrorCode; iotypes: readonly BlkdebugIoType[]; offset: number; once: boolean; immediately: boolean; delayMs: number }
  | { action: 'set-state'; event: BlkdebugEvent; state: number; newState: number }
  | { action: 'suspend'; event: BlkdebugEvent; state: 0; tag: string };

type InjectRule = Extract<Rule, { action: 'inject' }>;

interface SuspendedRequest {
  tag: string;
  resume: () => void;
}

const DEFAULT_IOTYPES: readonly BlkdebugIoType[] = ['read', 'write', 'write-zeroes', 'discard', 'flush'];
const CODE_BY_ERRNO = new Map<number, BlockErrorCode>(Object.entries(ERRNO).map(([code, n]) => [n, code as BlockErrorCode]));

function invalid(message: string): never {
  throw new BlockError('EINVAL', message);
}

function eventName(v: unknown): BlkdebugEvent {
  if (v === undefined || v === null) invalid('Missing event name for rule');
  if (typeof v !== 'string' || !(BLKDEBUG_EVENTS as readonly string[]).includes(v)) {
    invalid(`Invalid parameter '${String(v)}'`);
  }
  return v as BlkdebugEvent;
}

function int(name: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  const n = typeof v === 'string' ? parseQemuInteger(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n)) invalid(`Parameter '${name}' expects a number`);
  return n;
}

function bool(name: string, v: unknown): boolean {
  if (v === undefined) return false;
  const b = typeof v === 'boolean' ? v : typeof v === 'string' ? parseQemuBool(v) : undefined;
  if (b === undefined) invalid(`Parameter '${name}' expects 'on' or 'off'`);
  return b;
}

function errnoCode(v: unknown): BlockErrorCode {
  if (v === undefined) return 'EIO';
  if (typeof v === 'string' && v in ERRNO) return v as BlockErrorCode;
  const n = Math.abs(int('errno', v, 5));
  const code = CODE_BY_ERRNO.get(n);
  if (!code) invalid(`Parameter 'errno': errno ${n} is not supported`);
  return code;
}

function field(o: Record<string, unknown>, ...names: string[]): unknown {
  for (const n of names) if (o[n] !== undefined) return o[n];
  return undefined;
}

function list(name: string, v: unknown): Record<string, unknown>[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) invalid(`Parameter '${name}' expects a list`);
  return v.map((e) => {
    if (typeof e !== 'object' || e === null) invalid(`Parameter '${name}' expects a list of objects`);
    return e as Record<string, unknown>;
  });
}

const sectorOffset = (sector: number): number => (sector === -1 ? -1 : sector * 512);

function parseInject(o: Record<string, unknown>): InjectRule {
  const sector = field(o, 'sector');
  const offset = field(o, 'offset');
  const iotype = field(o, 'iotype');
  if (iotype !== undefined && !(BLKDEBUG_IO_TYPES as readonly unknown[]).includes(iotype)) {
    invalid(`Parameter 'iotype' does not accept value '${String(iotype)}'`);
  }
  const delayNs = int('delay-ns', field(o, 'delay-ns', 'delayNs', 'delay_ns'), 0);
  return {
    action: 'inject',
    event: eventName(o.event),
    state: int('state', o.state, 0),
    code: errnoCode(o.errno),
    iotypes: iotype === undefined ? DEFAULT_IOTYPES : [iotype as BlkdebugIoType],
    offset: offset !== undefined ? int('offset', offset, -1) : sectorOffset(int('sector', sector, -1)),
    once: bool('once', o.once),
    immediately: bool('immediately', o.immediately),
    delayMs: delayNs / 1e6,
  };
}

function parseSetState(o: Record<string, unknown>): Rule {
  return {
    action: 'set-state',
    event: eventName(o.event),
    state: int('state', o.state, 0),
    newState: int('new_state', field(o, 'new_state', 'newState', 'new-state'), 0),
  };
}

function parsePerms(name: string, v: unknown): number {
  if (v === undefined) return 0;
  if (!Array.isArray(v)) invalid(`Parameter '${name}' expects a list`);
  let bits = 0;
  for (const p of v) {
    const bit = typeof p === 'string' ? PERM_BY_NAME[p] : undefined;
    if (bit === undefined) invalid(`Parameter '${name}' does not accept value '${String(p)}'`);
    bits |= bit;
  }
  return bits;
}

/**
 * QEMU's blkdebug config file (`blkdebug:config:image`): `[inject-error]` and `[set-state]` sections of
 * `key = "value"` lines. Returns the rules as blockdev-add options take them.
 */
export function parseBlkdebugConfig(text: string): { injectError: BlkdebugInjectError[]; setState: BlkdebugSetState[] } {
  const injectError: BlkdebugInjectError[] = [];
  const setState: BlkdebugSetState[] = [];
  let cur: Record<string, unknown> | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const section = /^\[([a-z-]+)\]$/.exec(line);
    if (section) {
      cur = {};
      if (section[1] === 'inject-error') injectError.push(cur as unknown as BlkdebugInjectError);
      else if (section[1] === 'set-state') setState.push(cur as unknown as BlkdebugSetState);
      else invalid(`Invalid group '${section[1]}' in blkdebug config`);
      continue;
    }
    const kv = /^([a-z_-]+)\s*=\s*"?([^"]*)"?$/.exec(line);
    if (!kv || !cur) invalid(`Could not parse blkdebug config line '${line}'`);
    const [, key, value] = kv;
    cur[key!] = /^-?\d+$/.test(value!) ? Number(value) : value;
  }
  return { injectError, setState };
}

/** The per-node debugging state; obtained with {@link blkdebugOf} or {@link findBlkdebug}. */
export class BlkdebugController {
  private st = 1;
  /** Rules per event, newest first (QEMU inserts at the list head). */
  private readonly rules = new Map<BlkdebugEvent, Rule[]>();
  private active: InjectRule[] = [];
  private readonly suspended: SuspendedRequest[] = [];
  private readonly suspendWaiters = new Map<string, (() => void)[]>();

  constructor(readonly node: BlockNode) {}

  /** The state machine's current state (starts at 1). */
  get state(): number {
    return this.st;
  }

  /** @internal */
  addRule(rule: Rule): void {
    const l = this.rules.get(rule.event) ?? [];
    l.unshift(rule);
    this.rules.set(rule.event, l);
  }

  private removeRule(rule: Rule): void {
    const l = this.rules.get(rule.event);
    const i = l ? l.indexOf(rule) : -1;
    if (i >= 0) l!.splice(i, 1);
  }

  /**
   * bdrv_debug_event(): process the rules for `event`; resolves when every breakpoint it hit was resumed.
   * The driver raises its own events; call this to raise others (a format driver above, a test).
   */
  async event(event: BlkdebugEvent): Promise<void> {
    let newState = this.st;
    let injects = 0;
    const parked: Promise<void>[] = [];
    for (const rule of [...(this.rules.get(event) ?? [])]) {
      if (rule.state && rule.state !== this.st) continue;
      switch (rule.action) {
        case 'inject':
          if (++injects === 1) this.active = [];
          this.active.unshift(rule);
          break;
        case 'set-state':
          newState = rule.newState;
          break;
        case 'suspend':
          this.removeRule(rule);
          parked.push(this.suspend(rule.tag));
          break;
      }
    }
    this.st = newState;
    for (const p of parked) await p;
  }

  private suspend(tag: string): Promise<void> {
    return new Promise<void>((resolve) => {
      this.suspended.push({ tag, resume: resolve });
      const waiters = this.suspendWaiters.get(tag);
      if (waiters) {
        this.suspendWaiters.delete(tag);
        for (const w of waiters) w();
      }
      this.node.graph.kick();
    });
  }

  /** rule_check(): fail the request if an active rule matches it. */
  async check(offset: number, bytes: number, iotype: BlkdebugIoType): Promise<void> {
    const rule = this.active.find(
      (r) => (r.offset === -1 || (bytes > 0 && r.offset >= offset && r.offset < offset + bytes)) && r.iotypes.includes(iotype),
    );
    if (!rule) return;
    if (rule.once) {
      this.active.splice(this.active.indexOf(rule), 1);
      this.removeRule(rule);
    }
    if (rule.delayMs > 0) await new Promise((r) => setTimeout(r, rule.delayMs));
    if (!rule.immediately) await new Promise((r) => setTimeout(r, 0));
    throw new BlockError(rule.code);
  }

  /** qemu-io `break <event> <tag>`: the next request raising `event` parks until resumed (one-shot). */
  break(event: BlkdebugEvent, tag: string): void {
    this.addRule({ action: 'suspend', event: eventName(event), state: 0, tag });
  }

  /** qemu-io `wait_break <tag>`: resolves once a request is parked at breakpoint `tag`. */
  waitBreak(tag: string): Promise<void> {
    if (this.isSuspended(tag)) return Promise.resolve();
    return new Promise((resolve) => {
      const l = this.suspendWaiters.get(tag) ?? [];
      l.push(resolve);
      this.suspendWaiters.set(tag, l);
    });
  }

  /** qemu-io `resume <tag>`: let the (first) request parked at `tag` go on. */
  resume(tag: string): void {
    const i = this.suspended.findIndex((r) => r.tag === tag);
    if (i < 0) throw new BlockError('ENOENT', `No suspended request with tag '${tag}'`);
    const [r] = this.suspended.splice(i, 1);
    r!.resume();
  }

  /** qemu-io `remove_break <tag>`: drop the breakpoint and resume every request parked at it. */
  removeBreak(tag: string): void {
    let found = false;
    for (const l of this.rules.values()) {
      for (const r of [...l]) {
        if (r.action === 'suspend' && r.tag === tag) {
          this.removeRule(r);
          found = true;
        }
      }
    }
    for (let i = this.suspended.findIndex((r) => r.tag === tag); i >= 0; i = this.suspended.findIndex((r) => r.tag === tag)) {
      this.suspended.splice(i, 1)[0]!.resume();
      found = true;
    }
    if (!found) throw new BlockError('ENOENT', `No breakpoint or suspended request with tag '${tag}'`);
  }

  /** Is a request parked at breakpoint `tag`? */
  isSuspended(tag: string): boolean {
    return this.suspended.some((r) => r.tag === tag);
  }

  /** Tags of the parked requests, oldest first. */
  suspendedTags(): string[] {
    return this.suspended.map((r) => r.tag);
  }

  /** Resume every parked request (a parked request keeps its node busy: drains and close wait for it). */
  resumeAll(): void {
    for (const r of this.suspended.splice(0)) r.resume();
  }
}

const controllers = new WeakMap<BlockNode, BlkdebugController>();

/** The controller of a blkdebug node. */
export function blkdebugOf(node: BlockNode): BlkdebugController {
  const c = controllers.get(node);
  if (!c) throw new BlockError('EINVAL', `Node '${node.nodeName}' is not a blkdebug node`);
  return c;
}

/**
 * The first blkdebug node at or below `start` following primary and filtered children, as QEMU's
 * `bdrv_debug_breakpoint()` looks for one below a device (qemu-io `break` on a BlockBackend).
 */
export function findBlkdebug(start: BlockNode | BlockBackend): BlkdebugController {
  let n: BlockNode | undefined = 'parentKind' in start && start.parentKind === 'backend' ? (start as BlockBackend).node : (start as BlockNode);
  const first = n;
  while (n) {
    const c = controllers.get(n);
    if (c) return c;
    n = (n.children.find((ch) => ch.role & ChildRole.PRIMARY) ?? n.filteredChild())?.node;
  }
  throw new BlockError('ENOTSUP', `No blkdebug node below '${first?.nodeName ?? '?'}'`);
}


export const blkdebugDriver: BlockDriver = defineBlockDriver({
  name: 'blkdebug',
  kind: 'filter',
  description: 'Error injection, state machine and breakpoints for tests (QEMU block/blkdebug.c)',
  capabilities: PASSTHROUGH_FILTER_CAPABILITIES,
  options: {
    image: { type: 'ref', required: true, description: 'the node to filter' },
    config: { type: 'string', description: 'not supported: use parseBlkdebugConfig() and inject-error/set-state' },
    injectError: { type: 'object', description: 'list of inject-error rules' },
    setState: { type: 'object', description: 'list of set-state rules' },
    align: { type: 'size', description: 'required request alignment in bytes' },
    maxTransfer: { type: 'size', description: 'maximum transfer size in bytes' },
    takeChildPerms: { type: 'object', description: 'permissions to take on the child in addition' },
    unshareChildPerms: { type: 'object', description: 'permissions not to share on the child' },
  },
  async open(ctx, o) {
    if (o.config !== undefined) {
      throw new BlockError('ENOTSUP', "blkdebug config files are not supported here: pass the rules with 'inject-error' and 'set-state' (see parseBlkdebugConfig())");
    }
    const dbg = new BlkdebugController(ctx.node);
    // QEMU adds every inject-error rule, then every set-state rule, each at the head of its event's list.
    for (const r of list('inject-error', o.injectError)) dbg.addRule(parseInject(r));
    for (const r of list('set-state', o.setState)) dbg.addRule(parseSetState(r));
    const take = parsePerms('take-child-perms', o.takeChildPerms);
    const unshare = parsePerms('unshare-child-perms', o.unshareChildPerms);
    const align = o.align as number | undefined;
    if (align !== undefined && (align <= 0 || align >= 2 ** 31 || align & (align - 1))) {
      throw new BlockError('EINVAL', `Cannot meet constraints with align ${align}`);
    }
    const file = (await ctx.openChild('image', o.image, ChildRole.FILTERED | ChildRole.PRIMARY)) as Child;
    const effAlign = Math.max(align ?? 0, file.node.limits.requestAlignment);
    const maxTransfer = o.maxTransfer as number | undefined;
    if (maxTransfer !== undefined && maxTransfer !== 0 && (maxTransfer >= 2 ** 31 || maxTransfer % effAlign)) {
      throw new BlockError('EINVAL', `Cannot meet constraints with max-transfer ${maxTransfer}`);
    }
    controllers.set(ctx.node, dbg);

    return {
      getLength: () => file.node.totalBytes,
      get capabilities() {
        return childCapabilities(file);
      },
      get supportedWriteFlags() {
        return childWriteFlags(file);
      },
      get supportedZeroFlags() {
        return childZeroFlags(file);
      },
      refreshLimits(merged: BlockLimits): Partial<BlockLimits> {
        return {
          requestAlignment: align ?? Math.max(1, file.node.limits.requestAlignment),
          maxTransfer: maxTransfer || merged.maxTransfer,
        };
      },
      childPerm(_child, role, parent) {
        const p = defaultChildPerms(role, parent, !ctx.node.readOnly);
        return { perm: p.perm | take, shared: p.shared & ~unshare };
      },
      async preadv(offset: number, bytes: number, qiov: IOVector, flags: ReqFlags) {
        await dbg.event('read_aio');
        await dbg.check(offset, bytes, 'read');
        await file.preadv(offset, bytes, qiov, flags);
      },
      async pwritev(offset: number, bytes: number, qiov: IOVector, flags: ReqFlags) {
        if (flags & ReqFlag.WRITE_UNCHANGED) await dbg.event('cor_write');
        await dbg.event('write_aio');
        await dbg.event('pwritev');
        await dbg.check(offset, bytes, 'write');
        await file.pwritev(offset, bytes, qiov, flags);
        await dbg.event('pwritev_done');
      },
      async pwriteZeroes(offset: number, bytes: number, flags: ReqFlags) {
        // Copy-on-read writes all-zero data back as a zero write; QEMU raises cor_write before either kind.
        if (flags & ReqFlag.WRITE_UNCHANGED) await dbg.event('cor_write');
        await dbg.event('pwritev_zero');
        await dbg.check(offset, bytes, 'write-zeroes');
        await file.pwriteZeroes(offset, bytes, flags);
        await dbg.event('pwritev_done');
      },
      async pdiscard(offset: number, bytes: number) {
        await dbg.check(offset, bytes, 'discard');
        await file.pdiscard(offset, bytes);
      },
      async flushToOs() {
        await dbg.event('flush_to_os');
      },
      async flushToDisk() {
        await dbg.event('flush_to_disk');
        await dbg.check(0, 0, 'flush');
      },
      async blockStatus(_wantZero: boolean, offset: number, bytes: number) {
        await dbg.check(offset, bytes, 'block-status');
        return { status: BlockStatus.RAW | BlockStatus.OFFSET_VALID, pnum: bytes, map: offset, file: file.node };
      },
      passthroughChild(offset: number) {
        return { child: file, offset };
      },
      async reopenPrepare() {
        // nothing to change (blkdebug_reopen_prepare)
      },
    };
  },
});
