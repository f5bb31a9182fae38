import {
  BlockError,
  ChildRole,
  isBlockError,
  type BlockNode,
  type Child,
  type OpenContext,
  type Options,
} from '@blockgraph/block-core';
import type { CodecTable } from '../codec.js';
import {
  BITMAPS_INCONSISTENT_HINT,
  BITMAPS_INCONSISTENT_WARNING,
  BITMAPS_INCONSISTENT_WARNING_V2,
  CryptMethod,
  INCOMPAT_DATA_FILE,
  LUKS_HEADER_SIZE,
  parseLuksHeader,
} from '../format/index.js';
import { loadBitmapDirectory } from './bitmaps-load.js';
import { bitmapFlags, Qcow2Instance } from './instance.js';
import { cacheIO, checkStructures, loadSnapshots, loadTables, readAt, readHeader } from './metadata.js';
import { parseRuntimeOptions } from './options.js';
import { runWriteSetup } from './setup.js';
import { OVERLAP_ALL, Qcow2State, type EncryptionInfo } from './state.js';

/** The protocol node at the bottom of `child` (a data file named in the image is opened with the same protocol). */
function protocolName(node: BlockNode): string {
  let n: BlockNode | undefined = node;
  while (n && n.driver.kind !== 'protocol') n = (n.file ?? n.filteredChild())?.node;
  return n?.driver.name ?? 'file';
}

function prepend(e: unknown, prefix: string): unknown {
  return isBlockError(e) ? e.prepend(prefix) : e;
}

/** qcow2_open() / qcow2_do_open(). */
export async function openQcow2(ctx: OpenContext, o: Options, codecs: () => Promise<CodecTable>): Promise<Qcow2Instance> {
  const node = ctx.node;
  const file = (await ctx.openChild('file', o.file, ChildRole.IMAGE))!;
  const checkMode = o.checkMode === true;
  const noIo = o.noIo === true;
  if (noIo && !ctx.readOnly) throw new BlockError('EINVAL', "'no-io' requires a read-only image");
  const header = await readHeader(
    { file },
    { readWrite: !ctx.readOnly, check: checkMode, noIO: noIo, deferLateErrors: true },
  );
  if (header.extensions.bitmapsInconsistent) {
    // qcow2_read_extensions() warns on every open, before the data file step and whatever fails after it.
    const message = header.version === 2 ? BITMAPS_INCONSISTENT_WARNING_V2 : BITMAPS_INCONSISTENT_WARNING;
    ctx.graph.warn(node, message, BITMAPS_INCONSISTENT_HINT);
  }
  const size = Math.floor(header.size / 512) * 512;
  const options = parseRuntimeOptions(o, header, size, node.common.discard === 'unmap');

  let dataFile: Child = file;
  const hasDataFile = (header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
  if (noIo) {
    // QEMU (CVE-2024-4467) opens no external data file for metadata inspection: `info` on an untrusted image
    // must not touch a file the image names. No guest I/O reaches `dataFile` in this mode (checkUsable).
  } else if (hasDataFile) {
    if (o.dataFile !== undefined && o.dataFile !== null) {
      dataFile = (await ctx.openChild('data-file', o.dataFile, ChildRole.DATA))!;
    } else if (header.extensions.dataFile !== null) {
      // The protocol's own error ("Could not open 'NAME': ...") is QEMU's whole message here.
      dataFile = await ctx.openImageByName('data-file', header.extensions.dataFile, protocolName(file.node), ChildRole.DATA);
    } else {
      throw new BlockError('EINVAL', "'data-file' is required for this image");
    }
    file.role = ChildRole.METADATA | ChildRole.PRIMARY;
  } else if (o.dataFile !== undefined && o.dataFile !== null) {
    throw new BlockError('EINVAL', "'data-file' can only be set for images with an external data file");
  }
  if (header.lateOpenError) throw header.lateOpenError;
  // Encrypted images can be described (metadata only), not read or written.
  if (header.cryptMethod !== 0 && !noIo) {
    throw new BlockError('ENOTSUP', 'qcow2: encrypted images are not supported');
  }

  const s = new Qcow2State(node, file, dataFile, null, header, options);
  s.checkMode = checkMode;
  s.noIo = noIo;
  if (header.cryptMethod !== 0) s.encryption = await readEncryptionInfo(s);
  await loadTables(s);
  s.makeCaches(cacheIO(s));
  await loadSnapshots(s, (options.overlapCheck & OVERLAP_ALL) === OVERLAP_ALL);

  s.loadCodecs = codecs;

  const inst = new Qcow2Instance(s, o);
  const bm = header.extensions.bitmaps;
  if (bm) {
    inst.bitmaps = (await loadBitmapDirectory(s, bm)).map((e) => ({
      name: e.name,
      granularity: 2 ** e.granularityBits,
      flags: bitmapFlags(e.flags),
    }));
  }

  if (o.backing !== null) {
    try {
      if (o.backing !== undefined) {
        s.backing = await ctx.openChild('backing', o.backing, ChildRole.COW);
      } else if (header.backingFile) {
        // An empty name (size 0, or starting with a NUL) is no backing file, as in bdrv_open_backing_file().
        s.backing = await ctx.openImageByName(
          'backing',
          header.backingFile,
          // An empty format name (a zero-length extension) probes, as bdrv_open_backing_file() does.
          header.extensions.backingFormat || undefined,
          ChildRole.COW,
        );
      }
    } catch (e) {
      throw prepend(e, 'Could not open backing file: ');
    }
  }

  if (!ctx.readOnly) {
    // A repair (BDRV_O_CHECK) must get to the check: it is what fixes an overlapping table.
    if (!checkMode) await checkStructures(s);
    s.pendingWriteSetup = true;
    await runWriteSetup(s, true);
    inst.bitmaps = null;
  }

  const interval = options.cacheCleanInterval;
  if (interval > 0) {
    const t = setInterval(() => {
      if (s.lock.isLocked) return;
      s.l2Cache.cleanUnused();
      s.refCache.cleanUnused();
    }, interval * 1000);
    (t as { unref?: () => void }).unref?.();
    s.cleanTimer = t;
  }
  return inst;
}

/**
 * What qemu-img info shows of an encrypted image (QCryptoBlockInfo): the format, and for LUKS its header, which
 * QEMU parses even for a metadata-only open.
 */
async function readEncryptionInfo(s: Qcow2State): Promise<EncryptionInfo> {
  const h = s.header;
  if (h.cryptMethod === CryptMethod.AES) return { format: 'aes' };
  const area = h.extensions.cryptoHeader!;
  if (area.length < LUKS_HEADER_SIZE) throw new BlockError('EINVAL', 'LUKS header is truncated');
  return { format: 'luks', ...parseLuksHeader(await readAt(s, area.offset, LUKS_HEADER_SIZE)) };
}
