/**
 * blockgraph io — qemu-io: open an image (optional) and run -c commands in order. Exit code 1 if any command
 * failed (as qemu-io 7.2). Opens with discard=unmap and writethrough cache like qemu-io does; -C puts a
 * copy-on-read filter above the image (needs @blockgraph/filter-cor).
 */
import { CliError, usageError, type Ctx } from '../lib/context.js';
import { getopt, GetoptError } from '../lib/getopt.js';
import { parseCacheMode } from '../lib/open.js';
import { parseQemuOpts, optsToObject } from '../lib/qemu-opts.js';
import { closeFile, IoCrash, openFile, parseDiscard, runCommand, type IoState, type OpenFlags } from '../io/qemu-io.js';
import { createGraph } from '../lib/drivers.js';
import { printBlockLayerMessages } from '../lib/block-layer-messages.js';

export async function run(ctx: Ctx, argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = getopt(argv, 'hVc:d:f:rsnCmki:t:T:U', [
      { name: 'help', arg: 'none', key: 'h' },
      { name: 'format', arg: 'required', key: 'f' },
      { name: 'cmd', arg: 'required', key: 'c' },
      { name: 'read-only', arg: 'none', key: 'r' },
      { name: 'snapshot', arg: 'none', key: 's' },
      { name: 'nocache', arg: 'none', key: 'n' },
      { name: 'copy-on-read', arg: 'none', key: 'C' },
      { name: 'misalign', arg: 'none', key: 'm' },
      { name: 'native-aio', arg: 'none', key: 'k' },
      { name: 'aio', arg: 'required', key: 'i' },
      { name: 'discard', arg: 'required', key: 'd' },
      { name: 'cache', arg: 'required', key: 't' },
      { name: 'trace', arg: 'required', key: 'T' },
      { name: 'object', arg: 'required', key: 'object' },
      { name: 'image-opts', arg: 'none', key: 'image-opts' },
      { name: 'force-share', arg: 'none', key: 'U' },
    ]);
  } catch (e) {
    if (e instanceof GetoptError) throw usageError(e.message);
    throw e;
  }
  const flags: OpenFlags = {
    readOnly: false,
    snapshot: false,
    cache: { direct: false, noFlush: false, writethrough: true },
    discardUnmap: true,
    copyOnRead: false,
    forceShare: false,
  };
  const cmds: string[] = [];
  let format: string | undefined;
  let imageOpts = false;
  for (const o of parsed.options) {
    const v = o.value!;
    switch (o.key) {
      case 'c':
        cmds.push(v);
        break;
      case 'f':
        format = v;
        break;
      case 'r':
        flags.readOnly = true;
        break;
      case 's':
        flags.snapshot = true;
        break;
      case 'n':
        flags.cache = { direct: true, noFlush: false, writethrough: false };
        break;
      case 'C':
        flags.copyOnRead = true;
        break;
      case 'd': {
        const d = parseDiscard(v);
        if (d === undefined) throw new CliError(`Invalid discard option: ${v}`);
        flags.discardUnmap = d;
        break;
      }
      case 't': {
        const c = parseCacheMode(v);
        if (!c) throw new CliError(`Invalid cache option: ${v}`);
        flags.cache = c;
        break;
      }
      case 'i':
        if (!['threads', 'native', 'io_uring'].includes(v)) throw new CliError(`Invalid aio option: ${v}`);
        break;
      case 'U':
        flags.forceShare = true;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'V':
        ctx.out('blockgraph io (qemu-io 7.2 command language)\n');
        return 0;
      case 'object':
        throw new CliError('--object is not supported');
      case 'T':
      case 'm':
      case 'k':
        break;
    }
  }
  if (parsed.operands.length > 1) throw usageError('too many arguments');
  if (imageOpts && format) throw new CliError('--image-opts and -f are mutually exclusive');
  if (!cmds.length) throw usageError("no command given: use -c 'command' (blockgraph io has no interactive mode; '-c help' lists commands)");

  const graph = await createGraph();
  printBlockLayerMessages(ctx, graph);
  const s: IoState = { ctx, graph, blk: null, top: null, writethrough: flags.cache.writethrough, quit: false, pending: new Set() };
  let crashed = false;
  try {
    const file = parsed.operands[0];
    if (file !== undefined) {
      const opts: Record<string, string> = imageOpts ? optsToObject(parseQemuOpts(file)) : {};
      const ret = imageOpts ? await openFile(s, file, flags, {}, undefined, true) : await openFile(s, file, flags, opts, format);
      if (ret) return 1;
    }
    let lastError = 0;
    for (const c of cmds) {
      if (s.quit) break;
      const ret = await runCommand(s, c);
      if (ret < 0) lastError = ret;
    }
    await closeFile(s);
    return lastError < 0 ? 1 : 0;
  } catch (e) {
    if (e instanceof IoCrash) {
      // abort/sigraise: no drain, no flush, no orderly close — like a process that dies.
      crashed = true;
      return e.exitCode;
    }
    throw e;
  } finally {
    if (!crashed) await graph.close().catch(() => undefined);
  }
}
