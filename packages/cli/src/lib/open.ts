/**
 * Opening images the way qemu-img's img_open() does: a file name (protocol `file`, format given with -f or
 * probed), a `json:{...}` pseudo-filename, or `--image-opts` dotted options; read-only or writable, -U
 * (force-share), a cache mode, and optionally without the backing file (info, rebase -u).
 */
import {
  BlockError,
  Perm,
  PERM_ALL,
  isBlockError,
  normaliseOptions,
  parseJsonFilename,
  parseQemuBool,
  type BlockBackend,
  type BlockDriver,
  type BlockNode,
  type Graph,
  type Options,
} from '@blockgraph/block-core';
import { CliError, oneLine, type Ctx } from './context.js';
import { parseQemuOpts, optsToObject } from './qemu-opts.js';
import { OPTIONAL_DRIVERS, foreignFormat, foreignFormatMessage, missingDrivers, notInstalledMessage } from './drivers.js';
import { printBlockLayerMessages } from './block-layer-messages.js';
import { appendTempSnapshot } from './temp-snapshot.js';

export interface CacheMode {
  direct: boolean;
  noFlush: boolean;
  writethrough: boolean;
}

/** bdrv_parse_cache_mode(); null for an unknown mode. */
export function parseCacheMode(mode: string): CacheMode | null {
  switch (mode) {
    case 'off':
    case 'none':
      return { direct: true, noFlush: false, writethrough: false };
    case 'directsync':
      return { direct: true, noFlush: false, writethrough: true };
    case 'writeback':
      return { direct: false, noFlush: false, writethrough: false };
    case 'unsafe':
      return { direct: false, noFlush: true, writethrough: false };
    case 'writethrough':
      return { direct: false, noFlush: false, writethrough: true };
    default:
      return null;
  }
}

export interface OpenSpec {
  /** File name, json: filename, or the option string with `imageOpts`. */
  filename: string;
  format?: string | undefined;
  imageOpts?: boolean;
  readOnly: boolean;
  forceShare?: boolean;
  /** Don't open the backing file (qemu-img info's BDRV_O_NO_BACKING). */
  noBacking?: boolean;
  cache?: CacheMode;
  /** discard=unmap on the image node (qemu-io opens with BDRV_O_UNMAP). */
  discardUnmap?: boolean;
  /** Insert a copy-on-read filter above the image (qemu-io -C). */
  copyOnRead?: boolean;
  /**
   * Open the image read-only below a temporary qcow2 overlay that takes the writes and is discarded at close
   * (qemu-io -s, BDRV_O_SNAPSHOT); `readOnly` then applies to the overlay.
   */
  tempSnapshot?: boolean;
  /** Extra options for the top node (detect-zeroes etc.). */
  options?: Options;
  /** Extra options for the node of the `file` protocol driver the image sits on (when it sits on one). */
  fileOptions?: Options;
  /** Don't print the "probing guessed raw" warning. */
  quiet?: boolean;
  /** The key a first bare element of an --image-opts string names: 'file' (qemu-img, the default) or none (null, qemu-io). */
  imageOptsImplied?: string | null;
  /** The option string's `filename` is the image's file name given beside the options (qemu-io's `open -o X FILE`). */
  plainFilename?: boolean;
  /**
   * Open for qemu-img check (BDRV_O_CHECK): a format that knows the mode may then open a corrupt image read-write
   * to repair it, and leaves a dirty one for the check to find.
   */
  check?: boolean;
  /**
   * Open for metadata inspection only (qemu-img info's BDRV_O_NO_IO): a format that knows the mode opens no
   * external data file and refuses guest I/O.
   */
  noIo?: boolean;
  /** Backend permissions; default: read (+ write when writable), sharing read, write and write-unchanged. */
  perm?: number;
  shared?: number;
  /** Let writes through the backend extend the image. */
  allowBeyondEof?: boolean;
  /** Prefix for open errors; default "Could not open '<filename>': ". */
  errorPrefix?: string;
}

export interface OpenedImage {
  /** The node the backend uses (the COR filter with copyOnRead, else the image). */
  top: BlockNode;
  /** The image's format (or protocol) node. */
  image: BlockNode;
  blk: BlockBackend;
  /** The format was probed, not given. */
  probed: boolean;
  writethrough: boolean;
}

/**
 * The options object a file name / json: filename / option string stands for (before probing). In an option
 * string a first element without '=' names `file` for qemu-img (implied_opt_name), nothing for qemu-io, whose
 * short-form booleans QEMU warns about (`shortForm` gets them).
 */
export function imageOptions(
  spec: Pick<OpenSpec, 'filename' | 'format' | 'imageOpts' | 'imageOptsImplied' | 'plainFilename'>,
  shortForm: (written: string, key: string, value: string) => void = () => {},
): { options: Options; structured: boolean } {
  let o: Options;
  // Options written out (json:, --image-opts) must name a driver or a file: a bare filename is only a file name's.
  let structured: boolean;
  if (spec.imageOpts) {
    if (spec.format !== undefined) throw new CliError('--image-opts and --format are mutually exclusive');
    const entries = parseQemuOpts(spec.filename, spec.imageOptsImplied === null ? undefined : (spec.imageOptsImplied ?? 'file'));
    for (const e of entries) if (e.shortForm !== undefined) shortForm(e.shortForm, e.key, e.value);
    o = normaliseOptions(optsToObject(entries));
    structured = !spec.plainFilename;
  } else {
    const json = parseJsonFilename(spec.filename);
    o = json ?? { filename: spec.filename };
    structured = json !== null;
  }
  // An empty -f names no driver, it does not ask for probing ("Unknown driver ''").
  if (spec.format !== undefined) o.driver = spec.format;
  return { options: o, structured };
}

function isProtocol(graph: Graph, name: string): boolean {
  return graph.registry.has(name) && graph.registry.get(name).kind === 'protocol';
}

function withProtocolDefault(ref: unknown, fileOptions: Options | undefined): unknown {
  if (ref && typeof ref === 'object' && !Array.isArray(ref)) {
    const r = { ...(ref as Options) };
    if (r.driver === undefined) r.driver = 'file';
    return r.driver === 'file' && fileOptions ? { ...r, ...fileOptions } : r;
  }
  return ref;
}

function readOnlyOption(v: unknown): boolean {
  const b = typeof v === 'boolean' ? v : typeof v === 'string' ? parseQemuBool(v) : undefined;
  if (b === undefined) throw new BlockError('EINVAL', "Parameter 'read-only' expects 'on' or 'off'");
  return b;
}

/** The first bytes of a node, as the format probes see them (short for a short file). */
async function readHead(graph: Graph, node: BlockNode): Promise<Uint8Array> {
  const blk = graph.backend(node, { perm: Perm.CONSISTENT_READ, shared: PERM_ALL });
  try {
    const n = Math.min(512, node.totalBytes);
    return n > 0 ? await blk.read(0, n) : new Uint8Array(0);
  } finally {
    blk.remove();
  }
}

/** Open an image; errors come back as "Could not open '<name>': <reason>". */
export async function openImage(ctx: Ctx, graph: Graph, spec: OpenSpec): Promise<OpenedImage> {
  try {
    return await openImageInner(ctx, graph, spec);
  } catch (e) {
    if (e instanceof CliError) throw e;
    const msg = e instanceof Error ? e.message : String(e);
    throw new CliError(`${spec.errorPrefix ?? `Could not open '${spec.filename}': `}${oneLine(msg)}`);
  }
}

async function openImageInner(ctx: Ctx, graph: Graph, spec: OpenSpec): Promise<OpenedImage> {
  // bdrv_open_common(): copy-on-read writes into the image, so it is refused before anything is opened.
  if (spec.copyOnRead && spec.readOnly) throw new BlockError('EINVAL', "Can't use copy-on-read on read-only device");
  const { options: o, structured } = imageOptions(spec, (written, key, value) => {
    ctx.warn(`short-form boolean option '${written}' deprecated`);
    ctx.err(`Please use ${key}=${value} instead\n`);
  });
  if (structured && o.driver === undefined && o.file === undefined) throw new BlockError('EINVAL', 'Must specify either driver or file');
  // An explicit read-only in the image's own options wins over the command's mode, as in bdrv_open(); a command
  // that writes then fails the way blk_new_open() does, before anything is opened.
  const explicitReadOnly = o.readOnly === undefined ? undefined : readOnlyOption(o.readOnly);
  delete o.readOnly;
  if (explicitReadOnly && !spec.readOnly) throw new BlockError('EPERM', 'Block node is read-only');
  const common: Options = {};
  common.readOnly = spec.readOnly || explicitReadOnly === true || spec.tempSnapshot === true;
  if (spec.forceShare) common.forceShare = true;
  if (spec.cache && (spec.cache.direct || spec.cache.noFlush)) {
    common.cache = { direct: spec.cache.direct, noFlush: spec.cache.noFlush };
  }
  const topExtra: Options = { ...(spec.options ?? {}) };
  if (spec.discardUnmap) topExtra.discard = 'unmap';

  let image: BlockNode;
  let probed = false;
  const driver = typeof o.driver === 'string' ? o.driver : undefined;
  if (driver !== undefined && !graph.registry.has(driver)) {
    throw new BlockError('EINVAL', `Unknown driver '${driver}'`);
  }
  if (driver !== undefined && isProtocol(graph, driver)) {
    // A protocol as the image (-f file, json:{"driver":"file",...}).
    const { file: _f, ...rest } = o;
    image = await graph.addNode({ ...rest, ...common, ...topExtra, ...(driver === 'file' ? spec.fileOptions : undefined) });
  } else {
    // The storage below: `file` given as options (json/image-opts), a node name, or the plain file name.
    let fileRef: unknown = o.file;
    const rest: Options = { ...o };
    delete rest.file;
    if (fileRef === undefined) {
      if (structured || typeof rest.filename !== 'string') throw new BlockError('EINVAL', 'A block device must be specified for "file"');
      fileRef = { driver: 'file', filename: rest.filename };
      delete rest.filename;
    }
    fileRef = withProtocolDefault(fileRef, spec.fileOptions);
    const formatOptions = (fmtDriver: BlockDriver): Options => {
      const o: Options = { ...rest, ...topExtra };
      if (spec.noBacking && 'backing' in fmtDriver.options && o.backing === undefined) o.backing = null;
      if (spec.check && 'checkMode' in fmtDriver.options) o.checkMode = true;
      if (spec.noIo && 'noIo' in fmtDriver.options) o.noIo = true;
      return o;
    };
    if (driver === undefined && typeof fileRef !== 'string') {
      // Probe as bdrv_open() does: the storage node is the image's own (it follows the image through reopen).
      probed = true;
      image = await graph.openImageOver(fileRef as Options, undefined, common, formatOptions);
      if (image.driver.name === 'raw') {
        const foreign = foreignFormat(await readHead(graph, image.file!.node));
        if (foreign) {
          await graph.closeNode(image).catch(() => undefined);
          throw new BlockError('ENOTSUP', foreignFormatMessage(foreign));
        }
      }
    } else {
      let fmt = driver;
      if (fmt === undefined) {
        // `file` names an existing node: probe it, then put the format on top.
        const fileNode = graph.getNode(fileRef as string);
        fmt = (await graph.probeFormat(fileNode)).name;
        probed = true;
        if (fmt === 'raw') {
          const foreign = foreignFormat(await readHead(graph, fileNode));
          if (foreign) throw new BlockError('ENOTSUP', foreignFormatMessage(foreign));
        }
      }
      if (missingDrivers.has(fmt)) throw new BlockError('ENOTSUP', notInstalledMessage(OPTIONAL_DRIVERS.find((x) => x.name === fmt)!));
      const nodeOpts: Options = { ...formatOptions(graph.registry.get(fmt)), driver: fmt, ...common, ...topExtra };
      if (typeof fileRef === 'string') nodeOpts.file = fileRef;
      else nodeOpts.file = { ...(fileRef as Options), discard: 'unmap', ...(spec.forceShare ? { forceShare: true } : {}) };
      image = await graph.addNode(nodeOpts);
    }
    if (probed && image.driver.name === 'raw' && !common.readOnly && !spec.quiet) warnProbedRaw(ctx, spec.filename);
  }
  if (spec.tempSnapshot) {
    // bdrv_temp_snapshot_options(): the overlay takes read-only and discard from the image and is cache=unsafe.
    const overlayOptions: Options = { readOnly: spec.readOnly || explicitReadOnly === true, cache: { direct: false, noFlush: true } };
    if (topExtra.discard !== undefined) overlayOptions.discard = topExtra.discard;
    try {
      image = await appendTempSnapshot(graph, image, overlayOptions, ctx.env.TMPDIR);
    } catch (e) {
      if (image.parents.length === 0) await graph.closeNode(image).catch(() => undefined);
      throw e;
    }
  }

  let top = image;
  if (spec.copyOnRead) {
    if (missingDrivers.has('copy-on-read') || !graph.registry.has('copy-on-read')) {
      throw new CliError('copy-on-read is not available: the @blockgraph/filter-cor package is not installed');
    }
    top = await graph.addNode({ driver: 'copy-on-read', file: image.nodeName, ...(spec.readOnly ? { readOnly: true } : {}) });
  }
  // blk_new_open(): read, plus write when writable; RESIZE only for commands that ask (BDRV_O_RESIZE).
  const perm = spec.perm ?? (Perm.CONSISTENT_READ | (spec.readOnly ? 0 : Perm.WRITE));
  // blk_new_open() without BDRV_O_NO_SHARE: others may read and write (the format layer unshares what it must).
  const shared = spec.shared ?? (spec.forceShare ? PERM_ALL : Perm.CONSISTENT_READ | Perm.WRITE | Perm.WRITE_UNCHANGED);
  const blk = graph.backend(top, { perm, shared, allowBeyondEof: spec.allowBeyondEof ?? false });
  return { top, image, blk, probed, writethrough: spec.cache?.writethrough ?? false };
}

/** QEMU's warning for a writable image whose format was probed as raw. */
export function warnProbedRaw(ctx: Ctx, filename: string): void {
  ctx.err(
    `WARNING: Image format was not specified for '${filename}' and probing guessed raw.\n` +
      `         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n` +
      `         Specify the 'raw' format explicitly to remove the restrictions.\n`,
  );
}

/** Run `fn` with a graph whose every node is closed afterwards, whatever happens. */
export async function withGraph<T>(ctx: Ctx, fn: (graph: Graph) => Promise<T>): Promise<T> {
  const { createGraph } = await import('./drivers.js');
  const graph = await createGraph();
  const stopPrinting = printBlockLayerMessages(ctx, graph);
  try {
    return await fn(graph);
  } finally {
    await graph.close().catch(() => undefined);
    stopPrinting();
  }
}

export function errMessage(e: unknown): string {
  if (isBlockError(e)) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}
