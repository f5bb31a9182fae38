import { BlockBackend, type BackendOptions } from './backend.js';
import { Child, type ChildParent } from './child.js';
import { drainBeginNoPoll, drainEnd, drainPoll, withDrained } from './drain.js';
import { BlockError, isBlockError } from './errors.js';
import { alignUp, driverPreadv, flush } from './io.js';
import { IOVector } from './iovec.js';
import type { Job } from './job.js';
import { BlockNode, type CommonNodeOptions } from './node.js';
import { kebabCase, normaliseOptions, validateOptions, type Options } from './options.js';
import { parseQemuBool } from './option-values.js';
import { ChildRole, Perm, PERM_ALL, type ChildRoles } from './perm.js';
import { cumulativePerms, refreshPerms, setEdgePerms } from './permission.js';
import { DriverRegistry } from './registry.js';
import type { BlockDriver, OpenContext } from './spec.js';
import { Transaction } from './transaction.js';
import { ConditionWaiter } from './wait-queue.js';
import { parseJsonFilename, resolveRelativeFilename } from './filename.js';

/** blockdev-add options: the driver's own plus the common ones (camelCase or QEMU's kebab-case). */
export interface NodeOptions {
  driver: string;
  nodeName?: string;
  readOnly?: boolean;
  discard?: 'ignore' | 'unmap';
  detectZeroes?: 'off' | 'on' | 'unmap';
  forceShare?: boolean;
  cache?: { direct?: boolean; noFlush?: boolean };
  [option: string]: unknown;
}

export interface GraphEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

const COMMON_KEYS = new Set(['driver', 'nodeName', 'readOnly', 'autoReadOnly', 'discard', 'detectZeroes', 'forceShare', 'cache']);
const NODE_NAME_RE = /^[A-Za-z][A-Za-z0-9_.-]*$/;
/** BLOCK_PROBE_BUF_SIZE */
const PROBE_BYTES = 2048;

function parseCommon(opts: Options, inherited: Partial<CommonNodeOptions> | undefined): CommonNodeOptions {
  const bool = (key: string, v: unknown, dflt: boolean): boolean => {
    if (v === undefined) return dflt;
    const b = typeof v === 'boolean' ? v : typeof v === 'string' ? parseQemuBool(v) : undefined;
    if (b === undefined) throw new BlockError('EINVAL', `Parameter '${kebabCase(key)}' expects 'on' or 'off'`);
    return b;
  };
  const oneOf = <T extends string>(key: string, v: unknown, values: readonly T[], dflt: T): T => {
    if (v === undefined) return dflt;
    if (typeof v === 'string' && (values as readonly string[]).includes(v)) return v as T;
    throw new BlockError('EINVAL', `Parameter '${kebabCase(key)}' does not accept value '${String(v)}'`);
  };
  const cache = (opts.cache ?? {}) as Record<string, unknown>;
  if (typeof cache !== 'object') throw new BlockError('EINVAL', "Parameter 'cache' expects an object");
  for (const k of Object.keys(cache)) {
    if (k !== 'direct' && k !== 'noFlush') throw new BlockError('EINVAL', `Parameter 'cache.${kebabCase(k)}' is unexpected`);
  }
  const discard = opts.discard === 'off' ? 'ignore' : opts.discard === 'on' ? 'unmap' : opts.discard;
  const common: CommonNodeOptions = {
    readOnly: bool('readOnly', opts.readOnly, inherited?.readOnly ?? false),
    discard: oneOf('discard', discard, ['ignore', 'unmap'] as const, inherited?.discard ?? 'ignore'),
    detectZeroes: oneOf('detectZeroes', opts.detectZeroes, ['off', 'on', 'unmap'] as const, 'off'),
    forceShare: bool('forceShare', opts.forceShare, inherited?.forceShare ?? false),
    cacheDirect: bool('cache.direct', cache.direct, inherited?.cacheDirect ?? false),
    cacheNoFlush: bool('cache.noFlush', cache.noFlush, inherited?.cacheNoFlush ?? false),
  };
  if (common.forceShare && !common.readOnly) {
    throw new BlockError('EINVAL', 'force-share=on can only be used with read-only images');
  }
  if (common.detectZeroes === 'unmap' && common.discard !== 'unmap') {
    throw new BlockError('EINVAL', 'setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
  }
  return common;
}

/**
 * The block graph: nodes by name, the BlockBackends that use them, the jobs that run on them. Every structural
 * change is a transaction that re-checks permissions and rolls back completely on failure.
 */
export class Graph {
  readonly registry: DriverRegistry;
  readonly nodes = new Map<string, BlockNode>();
  readonly backends = new Set<BlockBackend>();
  readonly jobs = new Map<string, Job>();
  private readonly waiter = new ConditionWaiter();
  private readonly listeners = new Set<(e: GraphEvent) => void>();
  private nameCounter = 0;

  constructor(opts: { registry?: DriverRegistry; drivers?: readonly BlockDriver[] } = {}) {
    this.registry = opts.registry ?? new DriverRegistry();
    if (opts.drivers) this.registry.register(...opts.drivers);
  }

  // --- waiting and events ----------------------------------------------------------------------------------

  /** Something that may end a wait (a request, a job state) happened. */
  kick(): void {
    this.waiter.kick();
  }

  waitWhile(cond: () => boolean): Promise<void> {
    return this.waiter.waitWhile(cond);
  }

  on(listener: (e: GraphEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** QMP-style events (JOB_STATUS_CHANGE, BLOCK_JOB_READY, BLOCK_IMAGE_CORRUPTED, ...; WARNING and MESSAGE: see warn(), message()). */
  emit(event: string, data: Record<string, unknown>): void {
    const ms = Date.now();
    const e: GraphEvent = { event, data, timestamp: { seconds: Math.floor(ms / 1000), microseconds: (ms % 1000) * 1000 } };
    for (const l of this.listeners) l(e);
  }
  /**
   * What QEMU prints with warn_report() about a node, as a `WARNING` event (QMP has no such event) with data
   * `{ 'node-name', message, hint? }`. A tool prints "<program>: warning: <message>", then the hint exactly as
   * given (QEMU's error_printf() text; it may lack a final newline).
   */
  warn(node: BlockNode, message: string, hint?: string): void {
    this.emit('WARNING', { 'node-name': node.nodeName, message, ...(hint === undefined ? {} : { hint }) });
  }
  /**
   * A line QEMU's block layer writes to stderr itself with fprintf() (no program name, no "warning:"), such as
   * qcow2_free_clusters()'s failure, as a `MESSAGE` event with data `{ 'node-name', text }`. A tool prints the
   * text as it is, on a line of its own; a library need not print anything.
   */
  message(node: BlockNode, text: string): void {
    this.emit('MESSAGE', { 'node-name': node.nodeName, text });
  }


  // --- lookup ----------------------------------------------------------------------------------------------

  findNode(name: string): BlockNode | undefined {
    return this.nodes.get(name);
  }

  getNode(nameOrNode: string | BlockNode): BlockNode {
    if (typeof nameOrNode !== 'string') return nameOrNode;
    const n = this.nodes.get(nameOrNode);
    if (!n) {
      const be = [...this.backends].find((b) => b.name === nameOrNode);
      if (be?.root) return be.root.node;
      throw new BlockError('ENOENT', `Cannot find device='${nameOrNode}' nor node-name='${nameOrNode}'`);
    }
    return n;
  }

  private generateNodeName(): string {
    let name: string;
    do name = `#block${String(this.nameCounter++).padStart(3, '0')}`;
    while (this.nodes.has(name));
    return name;
  }

  // --- open / create / delete ------------------------------------------------------------------------------

  /** blockdev-add. */
  async addNode(options: NodeOptions | Options): Promise<BlockNode> {
    return this.openNode(normaliseOptions(options as Options), undefined, false);
  }

  /**
   * Open a node; nested child options open implicit nodes. `inherited` are the parent's common options a child
   * takes as defaults (read-only, cache, force-share; discard defaults to unmap below a format, as in QEMU).
   */
  private async openNode(
    opts: Options,
    inherited: Partial<CommonNodeOptions> | undefined,
    implicitChild: boolean,
    /** Attach the node's children without a permission refresh: the caller refreshes after more changes. */
    deferPerms = false,
  ): Promise<BlockNode> {
    const driverName = opts.driver;
    if (typeof driverName !== 'string') throw new BlockError('EINVAL', "Parameter 'driver' is missing");
    const driver = this.registry.get(driverName);
    const common = parseCommon(opts, inherited);
    let name = opts.nodeName;
    if (name !== undefined) {
      if (typeof name !== 'string' || !NODE_NAME_RE.test(name)) throw new BlockError('EINVAL', `Invalid node-name: '${String(name)}'`);
      if (name.length > 31) throw new BlockError('EINVAL', 'Node name too long');
      if (this.nodes.has(name)) throw new BlockError('EEXIST', `Duplicate nodes with node-name='${name}'`);
      if ([...this.backends].some((b) => b.name === name)) {
        throw new BlockError('EEXIST', `node-name=${name} is conflicting with a device id`);
      }
    } else {
      name = this.generateNodeName();
    }
    // fromEntries defines own properties, also for a user's "__proto__" key (refused below as unknown).
    const driverOpts: Options = Object.fromEntries(Object.entries(opts).filter(([k]) => !COMMON_KEYS.has(k)));
    const validated = validateOptions(driver.options, driverOpts, (k) =>
      driver.kind === 'protocol'
        ? `Block protocol '${driver.name}' doesn't support the option '${k}'`
        : `Block format '${driver.name}' does not support the option '${k}'`,
    );
    if (!common.readOnly && !driver.capabilities.write) {
      throw new BlockError('EACCES', `Driver '${driver.name}' can only be used for read-only devices`);
    }
    const node = new BlockNode(this, name as string, driver, validated, common, implicitChild && opts.nodeName === undefined);
    const ctx = this.openContext(node, deferPerms);
    this.nodes.set(node.nodeName, node);
    try {
      node.impl = await driver.open(ctx, validated);
      await node.refresh();
      node.opened = true;
      if (!deferPerms) Transaction.run((tran) => refreshPerms([node], tran));
    } catch (e) {
      await this.closeNode(node).catch(() => undefined);
      throw e;
    }
    return node;
  }

  private openContext(node: BlockNode, deferPerms: boolean): OpenContext {
    return {
      graph: this,
      node,
      readOnly: node.readOnly,
      openChild: (childName, ref, role, o) => this.openChild(node, childName, ref, role, o?.optional ?? false, deferPerms),
      openImageByName: (childName, filename, format, role) => this.openImageByName(node, childName, filename, format, role),
    };
  }

  private inheritedFor(node: BlockNode, role: ChildRoles): Partial<CommonNodeOptions> {
    const c = node.common;
    return {
      readOnly: role & ChildRole.COW ? true : c.readOnly,
      cacheDirect: c.cacheDirect,
      cacheNoFlush: c.cacheNoFlush,
      forceShare: c.forceShare,
      discard: 'unmap',
    };
  }

  private async openChild(
    parent: BlockNode,
    childName: string,
    ref: unknown,
    role: ChildRoles,
    optional: boolean,
    deferPerms: boolean,
  ): Promise<Child | null> {
    if (ref === undefined || ref === null) {
      if (optional) return null;
      throw new BlockError('EINVAL', `A block device must be specified for "${childName}"`);
    }
    let childNode: BlockNode;
    let created = false;
    if (typeof ref === 'string') {
      childNode = this.getNode(ref);
    } else if (typeof ref === 'object') {
      const o = normaliseOptions(ref as Options);
      childNode = await this.openNode(o, this.inheritedFor(parent, role), true);
      created = true;
    } else {
      throw new BlockError('EINVAL', `Parameter '${childName}' expects a node name or an options object`);
    }
    try {
      return Transaction.run((tran) => {
        const c = this.attachEdge(parent, childNode, childName, role, tran);
        if (!deferPerms) refreshPerms([parent], tran);
        return c;
      });
    } catch (e) {
      if (created) await this.closeNode(childNode).catch(() => undefined);
      throw e;
    }
  }

  /** Open a backing file named inside an image, relative to it, through the image's own protocol. */
  private async openImageByName(parent: BlockNode, childName: string, filename: string, format: string | undefined, role: ChildRoles): Promise<Child> {
    const inherited = this.inheritedFor(parent, role);
    let protocolOpts: Options;
    const json = parseJsonFilename(filename);
    if (json) {
      if (json.driver && this.registry.has(String(json.driver)) && this.registry.get(String(json.driver)).kind !== 'protocol') {
        const node = await this.openNode(json, inherited, true);
        return Transaction.run((tran) => {
          const c = this.attachEdge(parent, node, childName, role, tran);
          refreshPerms([parent], tran);
          return c;
        });
      }
      protocolOpts = json;
    } else {
      const protocolNode = protocolOf(parent);
      const base = parent.filename ?? '';
      protocolOpts = { driver: protocolNode?.driver.name ?? 'file', filename: resolveRelativeFilename(base, filename) };
    }
    const node = await this.openImageNode(protocolOpts, format, inherited);
    try {
      return Transaction.run((tran) => {
        const c = this.attachEdge(parent, node, childName, role, tran);
        refreshPerms([parent], tran);
        return c;
      });
    } catch (e) {
      await this.closeNode(node).catch(() => undefined);
      throw e;
    }
  }

  /**
   * Open a protocol node, probe (or take) the format, open the format node on top with `formatOptions`
   * (runtime options of the format, e.g. `backing: null`) and `common` (node name, read-only, ...).
   */
  private async openImageNode(
    protocolOpts: Options,
    format: string | undefined,
    inherited: Partial<CommonNodeOptions>,
    formatOptions: Options = {},
    common: Options = {},
  ): Promise<BlockNode> {
    const proto = await this.openNode(normaliseOptions(protocolOpts), inherited, true);
    try {
      let fmt = format;
      if (fmt === undefined) fmt = (await this.probeFormat(proto)).name;
      if (this.registry.get(fmt).kind === 'protocol') return proto;
      return await this.openNode({ ...inheritedAsOptions(inherited), ...formatOptions, ...common, driver: fmt, file: proto.nodeName }, inherited, !common.nodeName);
    } catch (e) {
      if (proto.parents.length === 0) await this.closeNode(proto).catch(() => undefined);
      throw e;
    }
  }

  /**
   * Open an image on a new protocol node, as blockdev-add with `file` given as options does, except that the
   * format may be left to probing: the protocol node belongs to the image (implicit: it is reopened and closed
   * with it), the format node is the caller's, as from addNode(). `common` (read-only, force-share, cache) applies
   * to both; `formatOptions` are the format node's own, given the driver found.
   */
  async openImageOver(
    protocolOptions: Options,
    format: string | undefined,
    common: Options = {},
    formatOptions: (driver: BlockDriver) => Options = () => ({}),
  ): Promise<BlockNode> {
    const co = normaliseOptions(common);
    const inherited = { readOnly: co.readOnly === true, forceShare: co.forceShare === true, discard: 'unmap' as const };
    const proto = await this.openNode(normaliseOptions({ ...protocolOptions, ...co }), inherited, true);
    try {
      const driver = format !== undefined ? this.registry.get(format) : await this.probeFormat(proto);
      if (driver.kind === 'protocol') return proto;
      return await this.openNode({ ...normaliseOptions(formatOptions(driver)), ...co, driver: driver.name, file: proto.nodeName }, undefined, false);
    } catch (e) {
      if (proto.parents.length === 0) await this.closeNode(proto).catch(() => undefined);
      throw e;
    }
  }

  /** bdrv_probe(): read the first bytes and ask every format driver. */
  async probeFormat(node: BlockNode): Promise<BlockDriver> {
    const align = node.limits.requestAlignment;
    const readLen = Math.min(alignUp(PROBE_BYTES, align), alignUp(node.totalBytes, align));
    const buf = new Uint8Array(readLen);
    if (readLen > 0) await driverPreadv(node, 0, readLen, IOVector.of(buf), 0);
    const head = buf.subarray(0, Math.min(PROBE_BYTES, node.totalBytes));
    const d = this.registry.probe(head, node.filename);
    if (!d) throw new BlockError('ENOTSUP', `Could not determine image format of '${node.filename ?? node.nodeName}'`);
    return d;
  }

  /**
   * Open an image file the way qemu-img does: `filename` through the `file` protocol (or a `json:{...}`
   * filename), then the given format or the probed one.
   */
  async openImage(
    filename: string,
    opts: { format?: string; readOnly?: boolean; forceShare?: boolean; nodeName?: string; options?: Options } = {},
  ): Promise<BlockNode> {
    const json = parseJsonFilename(filename);
    const extra = normaliseOptions(opts.options ?? {});
    const common: Options = {};
    if (opts.readOnly !== undefined) common.readOnly = opts.readOnly;
    if (opts.forceShare !== undefined) common.forceShare = opts.forceShare;
    if (opts.nodeName !== undefined) common.nodeName = opts.nodeName;
    const inh = { readOnly: opts.readOnly ?? false, forceShare: opts.forceShare ?? false, discard: 'unmap' as const };
    if (json) {
      const merged = normaliseOptions({ ...json, ...extra });
      if (opts.format && !merged.driver) merged.driver = opts.format;
      const driver = typeof merged.driver === 'string' && this.registry.has(merged.driver) ? this.registry.get(merged.driver) : undefined;
      if (driver && driver.kind !== 'protocol') return this.openNode({ ...merged, ...common }, undefined, false);
      if (!merged.driver && typeof merged.file === 'object' && merged.file !== null) {
        // json:{"file.filename": ...}: the format is probed, the other options are the format's.
        const { file, ...formatOptions } = merged;
        return this.openImageNode(file as Options, undefined, inh, formatOptions, common);
      }
      return this.openImageNode(merged, opts.format, inh);
    }
    const { file: fileExtra, ...formatExtra } = extra;
    const fileOpts: Options = { driver: 'file', filename, ...((fileExtra as Options | undefined) ?? {}) };
    if (opts.format) {
      const d = this.registry.get(opts.format);
      if (d.kind === 'protocol') return this.openNode({ driver: d.name, filename, ...extra, ...common, discard: 'unmap' }, undefined, false);
      return this.openNode({ driver: d.name, ...formatExtra, ...common, file: fileOpts }, undefined, false);
    }
    return this.openImageNode(fileOpts, undefined, inh, formatExtra, common);
  }

  /** Image creation (qemu-img create / blockdev-create): validates the driver's create options. */
  async createImage(driverName: string, options: Options): Promise<void> {
    const d = this.registry.get(driverName);
    if (!d.create || !d.createOptions) throw new BlockError('ENOTSUP', `Driver '${d.name}' does not support image creation`);
    const o = validateOptions(d.createOptions, normaliseOptions(options), (k) => `Invalid parameter '${k}'`);
    await d.create(this, o);
  }

  /** blockdev-del: only nodes nobody uses, and only those added by name (not implicit ones). */
  async deleteNode(nameOrNode: string | BlockNode): Promise<void> {
    const node = this.getNode(nameOrNode);
    if (node.implicit) throw new BlockError('EINVAL', `Node ${node.nodeName} is not owned by the monitor`);
    if (node.parents.some((p) => p.parent.parentKind === 'backend')) throw new BlockError('EBUSY', `Node ${node.nodeName} is in use`);
    // A job's edge is QEMU's op blocker of block_job_add_bdrv() (qmp_blockdev_del checks blockers next).
    const job = node.parents.find((p) => p.parent.parentKind === 'job')?.parent as Job | undefined;
    if (job) throw new BlockError('EBUSY', `Node '${node.nodeName}' is busy: block device is in use by block job: ${job.type}`);
    if (node.parents.length) throw new BlockError('EBUSY', `Block device ${node.nodeName} is in use`);
    await this.closeNode(node);
  }

  /** Close a node and, below it, every implicit node nobody else uses. */
  async closeNode(node: BlockNode): Promise<void> {
    if (node.closed) return;
    if (node.opened && !node.readOnly) await flush(node).catch(() => undefined);
    if (node.opened) await this.waitWhile(() => node.inFlight > 0);
    node.closed = true;
    this.nodes.delete(node.nodeName);
    try {
      if (node.opened) await node.impl.close?.();
    } finally {
      for (const c of [...node.children]) {
        c.frozen = false;
        this.detachEdge(c);
        if (!c.node.closed) {
          Transaction.run((tran) => refreshPerms([c.node], tran));
          if (c.node.implicit && c.node.parents.length === 0) await this.closeNode(c.node);
        }
      }
    }
  }

  // --- edges -----------------------------------------------------------------------------------------------

  /** Is `target` reachable from `from` following child edges (i.e. is it below or equal)? */
  isBelowOrSelf(target: BlockNode, from: BlockNode): boolean {
    if (target === from) return true;
    return from.children.some((c) => this.isBelowOrSelf(target, c.node));
  }

  /** Add an edge without checking permissions; the caller refreshes them within `tran`. */
  attachEdge(parent: BlockNode | ChildParent, childNode: BlockNode, name: string, role: ChildRoles, tran: Transaction, opts: { stayAtNode?: boolean } = {}): Child {
    const parentNode = parent.asNode;
    if (parentNode && this.isBelowOrSelf(parentNode, childNode)) {
      throw new BlockError('EINVAL', `Making '${childNode.nodeName}' a ${name} child of '${parentNode.nodeName}' would create a cycle`);
    }
    if (childNode.closed) throw new BlockError('ENOMEDIUM', `Node '${childNode.nodeName}' is closed`);
    const c = new Child(name, role, childNode, parent);
    c.stayAtNode = opts.stayAtNode ?? false;
    parentNode?.children.push(c);
    childNode.parents.push(c);
    if (childNode.quiesceCounter > 0) {
      c.quiescedParent = true;
      parent.drainedBegin?.();
    }
    tran.add({ abort: () => this.detachEdge(c) });
    return c;
  }

  /** Remove an edge (no permission refresh). */
  detachEdge(c: Child): void {
    const parentNode = c.parent.asNode;
    if (parentNode) {
      const i = parentNode.children.indexOf(c);
      if (i >= 0) parentNode.children.splice(i, 1);
    }
    const j = c.node.parents.indexOf(c);
    if (j >= 0) c.node.parents.splice(j, 1);
    if (c.quiescedParent) {
      c.quiescedParent = false;
      c.parent.drainedEnd?.();
    }
  }

  /** Point an existing edge at another node (no permission refresh). */
  moveEdge(c: Child, to: BlockNode, tran: Transaction): void {
    const from = c.node;
    const wasQuiesced = c.quiescedParent;
    const i = from.parents.indexOf(c);
    if (i >= 0) from.parents.splice(i, 1);
    to.parents.push(c);
    c.node = to;
    if (to.quiesceCounter > 0 && !wasQuiesced) {
      c.quiescedParent = true;
      c.parent.drainedBegin?.();
    } else if (to.quiesceCounter === 0 && wasQuiesced) {
      c.quiescedParent = false;
      c.parent.drainedEnd?.();
    }
    tran.add({ abort: () => this.moveEdgeBack(c, from, wasQuiesced) });
  }

  private moveEdgeBack(c: Child, from: BlockNode, wasQuiesced: boolean): void {
    const to = c.node;
    const i = to.parents.indexOf(c);
    if (i >= 0) to.parents.splice(i, 1);
    from.parents.push(c);
    c.node = from;
    if (wasQuiesced && !c.quiescedParent) {
      c.quiescedParent = true;
      c.parent.drainedBegin?.();
    } else if (!wasQuiesced && c.quiescedParent) {
      c.quiescedParent = false;
      c.parent.drainedEnd?.();
    }
  }

  /** The edges replaceNode(from, to) would move. */
  private movableParents(from: BlockNode, to: BlockNode): Child[] {
    return from.parents.filter((c) => !c.stayAtNode && c.parent.asNode !== to);
  }

  private replaceNodeNoPerm(from: BlockNode, to: BlockNode, tran: Transaction, only?: (c: Child) => boolean): void {
    for (const c of this.movableParents(from, to)) {
      if (only && !only(c)) continue;
      if (c.frozen) {
        throw new BlockError('EPERM', `Cannot change '${c.name}' link from '${c.parent.asNode?.nodeName ?? c.parent.describeParent()}' to '${from.nodeName}'`);
      }
      const pn = c.parent.asNode;
      if (pn && this.isBelowOrSelf(pn, to)) {
        throw new BlockError('EINVAL', `Making '${to.nodeName}' a ${c.name} child of '${pn.nodeName}' would create a cycle`);
      }
      this.moveEdge(c, to, tran);
    }
  }

  /**
   * bdrv_replace_node(): every parent of `from` (except edges that stay at their node, and `to`'s own edge onto
   * `from`) now uses `to`. Drained, transactional.
   */
  async replaceNode(from: BlockNode | string, to: BlockNode | string, only?: (c: Child) => boolean): Promise<void> {
    const f = this.getNode(from);
    const t = this.getNode(to);
    await withDrained([f, t], () =>
      Transaction.run((tran) => {
        this.replaceNodeNoPerm(f, t, tran, only);
        refreshPerms([t, f], tran);
      }),
    );
  }

  /** Put an opened filter above `below` (the node it filters): it takes over all of `below`'s parents. */
  async appendFilter(filter: BlockNode | string): Promise<void> {
    const f = this.getNode(filter);
    const below = f.filteredChild()?.node;
    if (!below) throw new BlockError('EINVAL', `Node '${f.nodeName}' is not a filter with a child`);
    await this.replaceNode(below, f);
  }

  /**
   * Open a filter whose child option names an existing node and put it above that node, atomically, while
   * I/O runs: parents' requests are queued during the switch, none is lost or reordered. As QEMU's bdrv_append,
   * the new edge and the moved parents are checked together, once: a filter may unshare what the node's
   * parents would use directly, as long as they now go through it. On a conflict nothing changes.
   */
  async insertFilter(options: NodeOptions | Options): Promise<BlockNode> {
    const opts = normaliseOptions(options as Options);
    const driver = this.registry.get(String(opts.driver));
    if (driver.kind !== 'filter') throw new BlockError('EINVAL', `Driver '${driver.name}' is not a filter`);
    // A filter must not change what its parents' requests do: it discards like the node it goes above.
    const target = typeof opts.file === 'string' ? this.findNode(opts.file) : undefined;
    if (target && opts.discard === undefined) opts.discard = target.common.discard;
    const filter = await this.openNode(opts, undefined, false, true);
    const below = filter.filteredChild()?.node;
    try {
      if (!below) throw new BlockError('EINVAL', `Node '${filter.nodeName}' is not a filter with a child`);
      await withDrained([below, filter], () =>
        Transaction.run((tran) => {
          this.replaceNodeNoPerm(below, filter, tran);
          refreshPerms([filter, below], tran);
        }),
      );
    } catch (e) {
      await this.closeNode(filter).catch(() => undefined);
      throw isBlockError(e) ? e.prepend(`Cannot insert filter '${filter.nodeName}': `) : e;
    }
    return filter;
  }

  /**
   * bdrv_drop_filter(): the filter's parents use its child again and the filter is closed. The filter's own
   * edge stops counting in the same transaction, so what it needed can't conflict with the parents it hands back.
   */
  async removeFilter(filter: BlockNode | string): Promise<void> {
    const f = this.getNode(filter);
    const c = f.filteredChild();
    if (!f.isFilter || !c) throw new BlockError('EINVAL', `Node '${f.nodeName}' is not a filter`);
    const below = c.node;
    await withDrained([f, below], async () => {
      Transaction.run((tran) => {
        this.replaceNodeNoPerm(f, below, tran);
        setEdgePerms(c, { perm: 0, shared: PERM_ALL }, tran);
        refreshPerms([below], tran);
      });
      await this.closeNode(f);
    });
  }

  /**
   * blockdev-snapshot: `overlay` (opened without a backing file) gets `node` as its backing file and takes over
   * all of `node`'s parents, in one transaction inside a drained section. As in QEMU (since 5.0), an overlay
   * that is in use is accepted as long as none of its parents reads it (takes consistent read): a mirror
   * target, which is write-only access, may get its backing file this way (iotest 155).
   */
  async snapshot(nameOrNode: string | BlockNode, overlayName: string | BlockNode): Promise<void> {
    const node = this.getNode(nameOrNode);
    const overlay = this.getNode(overlayName);
    if (!overlay.capabilities.backing) throw new BlockError('ENOTSUP', `The overlay does not support backing images`);
    if (overlay.backing) throw new BlockError('EINVAL', `The overlay already has a backing image`);
    if (cumulativePerms(overlay).perm & Perm.CONSISTENT_READ) throw new BlockError('EBUSY', `The overlay is already in use`);
    await withDrained([node, overlay], () =>
      Transaction.run((tran) => {
        this.attachEdge(overlay, node, 'backing', ChildRole.COW, tran);
        this.replaceNodeNoPerm(node, overlay, tran);
        refreshPerms([overlay, node], tran);
      }),
    );
    overlay.impl.backingChanged?.();
  }

  /**
   * blockdev-reopen with a `backing` option: give `node` another backing file (or none). Refused on frozen
   * links and on permission conflicts; nothing changes then.
   */
  async setBacking(nameOrNode: string | BlockNode, backing: string | BlockNode | null): Promise<void> {
    const node = this.getNode(nameOrNode);
    if (!node.capabilities.backing) {
      throw new BlockError('ENOTSUP', `Driver '${node.driver.name}' of node '${node.nodeName}' does not support backing files`);
    }
    const next = backing === null ? null : this.getNode(backing);
    const old = node.backing;
    if (old?.frozen) {
      throw new BlockError('EPERM', `Cannot change '${old.name}' link from '${node.nodeName}' to '${old.node.nodeName}'`);
    }
    const nodes = [node, ...(old ? [old.node] : []), ...(next ? [next] : [])];
    await withDrained(nodes, () =>
      Transaction.run((tran) => {
        if (old) {
          this.detachEdge(old);
          tran.add({ abort: () => this.reattachEdge(old) });
        }
        if (next) this.attachEdge(node, next, 'backing', ChildRole.COW, tran);
        refreshPerms([node, ...(old ? [old.node] : [])], tran);
      }),
    );
    node.impl.backingChanged?.();
    if (old && old.node.implicit && old.node.parents.length === 0) await this.closeNode(old.node);
  }

  /**
   * bdrv_open_backing_file(): open the backing file named in `node`'s header — relative to the image, through its
   * protocol, as opening the node would have — and attach it as the node's backing file. For a node that was
   * opened without its backing file (`backing: null`); one whose header names none stays without (null).
   */
  async openBackingFile(nameOrNode: string | BlockNode): Promise<BlockNode | null> {
    const node = this.getNode(nameOrNode);
    if (!node.capabilities.backing) {
      throw new BlockError('ENOTSUP', `Driver '${node.driver.name}' of node '${node.nodeName}' does not support backing files`);
    }
    if (node.backing) throw new BlockError('EINVAL', `Node '${node.nodeName}' already has a backing file`);
    const { backingFilename, backingFormat } = node.impl.getInfo?.() ?? {};
    if (!backingFilename) return null;
    const c = await withDrained([node], () => this.openImageByName(node, 'backing', backingFilename, backingFormat, ChildRole.COW));
    node.impl.backingChanged?.();
    return c.node;
  }

  /** Undo of detachEdge inside a transaction. */
  private reattachEdge(c: Child): void {
    c.parent.asNode?.children.push(c);
    c.node.parents.push(c);
    if (c.node.quiesceCounter > 0) {
      c.quiescedParent = true;
      c.parent.drainedBegin?.();
    }
  }

  /** Freeze the links from `top` down to `base` (exclusive) so nothing can change them while a job runs. */
  freezeChain(top: BlockNode, base: BlockNode | undefined): void {
    const links: Child[] = [];
    for (let n: BlockNode | undefined = top; n && n !== base; ) {
      const c = n.filterOrCowChild();
      if (!c) break;
      if (c.frozen) throw new BlockError('EPERM', `Cannot freeze '${c.name}' link to '${c.node.nodeName}'`);
      links.push(c);
      n = c.node;
    }
    for (const c of links) c.frozen = true;
  }

  unfreezeChain(top: BlockNode, base: BlockNode | undefined): void {
    for (let n: BlockNode | undefined = top; n && n !== base; ) {
      const c = n.filterOrCowChild();
      if (!c) break;
      c.frozen = false;
      n = c.node;
    }
  }

  /**
   * bdrv_reopen: switch read-only ↔ read-write. Implicit storage children follow their parent; backing files
   * stay read-only. All drivers prepare, then permissions are refreshed; any failure aborts everything.
   */
  async reopen(nameOrNode: string | BlockNode, changes: { readOnly: boolean }): Promise<void> {
    const node = this.getNode(nameOrNode);
    const set: BlockNode[] = [];
    const collect = (n: BlockNode): void => {
      if (set.includes(n)) return;
      set.push(n);
      for (const c of n.children) if (c.node.implicit && !(c.role & ChildRole.COW)) collect(c.node);
    };
    collect(node);
    for (const n of set) {
      if (!changes.readOnly && !n.driver.capabilities.write) {
        throw new BlockError('EACCES', `Driver '${n.driver.name}' can only be used for read-only devices`);
      }
    }
    await withDrained([node], async () => {
      if (changes.readOnly) for (const n of set) await flush(n);
      const prepared: BlockNode[] = [];
      const states = new Map(set.map((n) => [n, { readOnly: changes.readOnly, options: n.options }]));
      try {
        for (const n of set) {
          await n.impl.reopenPrepare?.(states.get(n)!);
          prepared.push(n);
        }
        Transaction.run((tran) => {
          for (const n of set) {
            const old = n.common.readOnly;
            n.common = { ...n.common, readOnly: changes.readOnly };
            tran.add({ abort: () => (n.common = { ...n.common, readOnly: old }) });
          }
          refreshPerms([node], tran);
        });
      } catch (e) {
        for (const n of prepared) n.impl.reopenAbort?.(states.get(n)!);
        throw e;
      }
      for (const n of set) n.impl.reopenCommit?.(states.get(n)!);
    });
  }

  // --- users -----------------------------------------------------------------------------------------------

  /** A BlockBackend on `node`: the handle applications, exports and jobs do I/O through. */
  backend(node: BlockNode | string, opts: BackendOptions = {}): BlockBackend {
    const be = new BlockBackend(this, opts);
    be.insert(this.getNode(node));
    return be;
  }

  // --- drain -----------------------------------------------------------------------------------------------

  async drainedBegin(node: BlockNode | string): Promise<void> {
    const n = this.getNode(node);
    drainBeginNoPoll(n);
    await this.waitWhile(() => drainPoll(n));
  }

  drainedEnd(node: BlockNode | string): void {
    drainEnd(this.getNode(node));
  }

  drained<T>(nodes: readonly (BlockNode | string)[], fn: () => T | Promise<T>): Promise<T> {
    return withDrained(nodes.map((n) => this.getNode(n)), fn);
  }

  /** Cancel jobs, detach backends, close every node. */
  async close(): Promise<void> {
    // As QEMU's qemu_cleanup(): cancel the jobs inside a drained section of the whole graph, or cancelling is
    // affected by throttling and may block for a long time (a drained throttle node lets its requests through;
    // iotest 218). The section ends before the nodes are closed, so requests queued meanwhile settle.
    const drained = this.jobs.size ? [...this.nodes.values()] : [];
    for (const n of drained) drainBeginNoPoll(n);
    try {
      for (const job of [...this.jobs.values()]) {
        try {
          // QEMU dismisses concluded jobs at shutdown and force-cancels the others.
          if (job.status === 'concluded') job.dismiss();
          else job.cancel(true);
        } catch {
          /* a job that can't be cancelled any more finishes on its own */
        }
      }
      await this.waitWhile(() => [...this.jobs.values()].some((j) => !j.isTerminal()));
    } finally {
      for (const n of drained) if (!n.closed && n.quiesceCounter > 0) drainEnd(n);
    }
    for (const be of [...this.backends]) be.remove();
    for (;;) {
      const tops = [...this.nodes.values()].filter((n) => n.parents.length === 0);
      if (tops.length === 0) break;
      for (const n of tops) await this.closeNode(n);
    }
  }
}

/** Inherited common options as explicit node options (for a format node opened on a probed protocol). */
function inheritedAsOptions(inh: Partial<CommonNodeOptions>): Options {
  const o: Options = {};
  if (inh.readOnly !== undefined) o.readOnly = inh.readOnly;
  if (inh.forceShare !== undefined) o.forceShare = inh.forceShare;
  return o;
}

/** The protocol node at the bottom of a node's primary chain (where its file name comes from). */
function protocolOf(node: BlockNode): BlockNode | undefined {
  let n: BlockNode | undefined = node;
  while (n && n.driver.kind !== 'protocol') n = n.primaryChild()?.node;
  return n;
}

