import { BlockError, Perm, PERM_ALL, resolveRelativeFilename, type Graph, type Options, type PreallocMode } from '@blockgraph/block-core';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  HeaderOffset as O,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  MAX_BACKING_FILE_NAME,
  QCOW_MAGIC,
  QEMU_HEADER_LENGTH,
  writeU64,
} from '../format/index.js';
import { updateHeader } from './header-io.js';
import type { Qcow2Instance } from './instance.js';
import { allocClusters } from './refcount.js';

/** qcow2 creation options (qemu-img create -o), camelCase; the Graph converts qemu's snake/kebab-case. */
export const QCOW2_CREATE_OPTIONS = {
  filename: { type: 'string', required: true, description: 'File name of the image' },
  size: { type: 'size', min: 0, description: 'Virtual disk size' },
  compat: { type: 'string', description: 'Compatibility level (v2 [0.10] or v3 [1.1])' },
  backingFile: { type: 'string', description: 'File name of a base image' },
  backingFmt: { type: 'string', description: 'Image format of the base image' },
  dataFile: { type: 'string', description: 'File name of an external data file' },
  dataFileRaw: { type: 'boolean', description: 'The external data file must stay valid as a raw image' },
  encryption: { type: 'boolean', description: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)" },
  // Accepted and checked as qemu-img does, then refused: blockgraph does not encrypt (encryptionFormat, validate).
  encrypt: {
    type: 'object',
    description: 'Encryption options',
    fields: {
      format: { type: 'string', description: "Encrypt the image, format choices: 'aes', 'luks'" },
      keySecret: { type: 'string', description: 'ID of secret providing qcow AES key or LUKS passphrase' },
      cipherAlg: { type: 'string', description: 'Name of encryption cipher algorithm' },
      cipherMode: { type: 'string', description: 'Name of encryption cipher mode' },
      ivgenAlg: { type: 'string', description: 'Name of IV generator algorithm' },
      ivgenHashAlg: { type: 'string', description: 'Name of IV generator hash algorithm' },
      hashAlg: { type: 'string', description: 'Name of encryption hash algorithm' },
      iterTime: { type: 'integer', description: 'Time to spend in PBKDF in milliseconds' },
    },
  },
  clusterSize: { type: 'size', description: 'qcow2 cluster size' },
  extendedL2: { type: 'boolean', description: 'Extended L2 tables' },
  preallocation: {
    type: 'enum',
    values: ['off', 'metadata', 'falloc', 'full'],
    description: 'Preallocation mode (allowed values: off, metadata, falloc, full)',
  },
  lazyRefcounts: { type: 'boolean', description: 'Postpone refcount updates' },
  refcountBits: { type: 'integer', description: 'Width of a reference count entry in bits' },
  compressionType: { type: 'enum', values: ['zlib', 'zstd'], description: 'Compression method used for image cluster compression' },
  nocow: { type: 'boolean', description: 'Turn off copy-on-write (valid only on btrfs)' },
  extentSizeHint: { type: 'size', description: 'Extent size hint for the image file' },
} as const;

function einval(message: string): BlockError {
  return new BlockError('EINVAL', message);
}

interface CreateParams {
  filename: string;
  size: number;
  version: 2 | 3;
  clusterSize: number;
  extendedL2: boolean;
  prealloc: PreallocMode;
  backingFile: string | undefined;
  backingFmt: string | undefined;
  lazyRefcounts: boolean;
  refcountOrder: number;
  dataFile: string | undefined;
  dataFileRaw: boolean;
  compressionType: 0 | 1;
}

/** validate_cluster_size(). */
function validateClusterSize(cs: number, extendedL2: boolean): void {
  if (!(cs >= 512 && cs <= 2 * 1024 * 1024) || (cs & (cs - 1)) !== 0) {
    throw einval('Cluster size must be a power of two between 512 and 2048k');
  }
  if (extendedL2 && cs < 16384) {
    throw einval('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  }
}

/**
 * The encryption format asked for, checked as qcow2_co_create_opts() does before anything else: `encryption=on`
 * is the deprecated alias of `encrypt.format=aes`, and the two together are refused.
 */
export function encryptionFormat(o: Options): 'aes' | 'luks' | undefined {
  const encrypt = o.encrypt as Options | undefined;
  const format = encrypt?.format as string | undefined;
  if (o.encryption === true) {
    if (format !== undefined) throw einval("'encrypt.format' and its alias 'encryption' can't be used at the same time");
    return 'aes';
  }
  if (format === undefined) {
    if (encrypt && Object.keys(encrypt).length) throw einval("Parameter 'encrypt.format' is missing");
    return undefined;
  }
  if (format !== 'aes' && format !== 'luks') throw einval(`Parameter 'format' does not accept value '${format}'`);
  return format;
}

/** qcow2_co_create_opts() + qcow2_co_create(): the option checks, in QEMU's order and words. */
function validate(o: Options): Omit<CreateParams, 'size'> & { size: number | undefined } {
  const encrypt = encryptionFormat(o);
  let version: 2 | 3 = 3;
  if (o.compat !== undefined) {
    const c = String(o.compat);
    if (c === '0.10' || c === 'v2') version = 2;
    else if (c === '1.1' || c === 'v3') version = 3;
    else throw einval(`Invalid compatibility level: '${c}'`);
  }
  const clusterSize = (o.clusterSize as number | undefined) ?? 65536;
  const extendedL2 = (o.extendedL2 as boolean | undefined) ?? false;
  if (extendedL2 && version < 3) {
    throw einval('Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  validateClusterSize(clusterSize, extendedL2);
  let prealloc = ((o.preallocation as string | undefined) ?? 'off') as PreallocMode;
  const backingFile = o.backingFile as string | undefined;
  const backingFmt = o.backingFmt as string | undefined;
  if (backingFile !== undefined && prealloc !== 'off' && !extendedL2) {
    throw einval('Backing file and preallocation can only be used at the same time if extended_l2 is on');
  }
  if (backingFmt !== undefined && backingFile === undefined) throw einval('Backing format cannot be used without backing file');
  if (backingFile !== undefined && new TextEncoder().encode(backingFile).length > MAX_BACKING_FILE_NAME) {
    throw einval('Backing file name too long');
  }
  const lazyRefcounts = (o.lazyRefcounts as boolean | undefined) ?? false;
  if (version < 3 && lazyRefcounts) {
    throw einval('Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const bits = (o.refcountBits as number | undefined) ?? 16;
  if (!(bits >= 1 && bits <= 64) || (bits & (bits - 1)) !== 0) {
    throw einval('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && bits !== 16) {
    throw einval('Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)');
  }
  const dataFile = o.dataFile as string | undefined;
  const dataFileRaw = (o.dataFileRaw as boolean | undefined) ?? false;
  if (dataFileRaw && dataFile === undefined) throw einval('data-file-raw requires data-file');
  if (dataFileRaw && backingFile !== undefined) throw einval('Backing file and data-file-raw cannot be used at the same time');
  if (dataFileRaw && prealloc === 'off') prealloc = 'metadata';
  if (dataFile !== undefined && version < 3) {
    throw einval('External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  let compressionType: 0 | 1 = 0;
  if (o.compressionType === 'zstd') {
    if (version < 3) {
      throw einval('Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)');
    }
    compressionType = 1;
  }
  // QEMU sets up encryption once the image exists (and deletes the image when that fails), after every other check.
  if (encrypt !== undefined) {
    if ((o.encrypt as Options | undefined)?.keySecret === undefined) throw einval("Parameter 'encrypt.key-secret' is required for cipher");
    throw new BlockError('ENOTSUP', 'qcow2: encrypted images are not supported');
  }
  return {
    filename: o.filename as string,
    size: o.size as number | undefined,
    version,
    clusterSize,
    extendedL2,
    prealloc,
    backingFile,
    backingFmt,
    lazyRefcounts,
    refcountOrder: 31 - Math.clz32(bits),
    dataFile,
    dataFileRaw,
    compressionType,
  };
}

/** The minimal header qcow2_co_create() writes before opening the image (the full one comes later). */
function initialHeader(p: CreateParams): Uint8Array {
  const out = new Uint8Array(p.clusterSize);
  const v = new DataView(out.buffer);
  v.setUint32(O.magic, QCOW_MAGIC);
  v.setUint32(O.version, p.version);
  v.setUint32(O.clusterBits, 31 - Math.clz32(p.clusterSize));
  writeU64(v, O.refcountTableOffset, p.clusterSize);
  v.setUint32(O.refcountTableClusters, 1);
  v.setUint32(O.refcountOrder, p.refcountOrder);
  v.setUint32(O.headerLength, QEMU_HEADER_LENGTH);
  out[O.compressionType] = p.compressionType;
  let incompat = 0n;
  if (p.dataFile !== undefined) incompat |= INCOMPAT_DATA_FILE;
  if (p.compressionType) incompat |= INCOMPAT_COMPRESSION;
  if (p.extendedL2) incompat |= INCOMPAT_EXTL2;
  v.setBigUint64(O.incompatibleFeatures, incompat);
  v.setBigUint64(O.compatibleFeatures, p.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n);
  v.setBigUint64(O.autoclearFeatures, p.dataFileRaw ? AUTOCLEAR_DATA_FILE_RAW : 0n);
  return out;
}

/** The size of an existing backing image (qemu-img create without a size). */
async function backingSize(graph: Graph, p: { filename: string; backingFile: string; backingFmt: string | undefined }): Promise<number> {
  const name = resolveRelativeFilename(p.filename, p.backingFile);
  const node = await graph.openImage(name, { format: p.backingFmt, readOnly: true, options: p.backingFmt === 'qcow2' ? { backing: null } : {} });
  try {
    return node.totalBytes;
  } finally {
    await graph.closeNode(node);
  }
}

/**
 * Image creation as qemu-img create / blockdev-create does it: the file is created empty, a minimal header and
 * a refcount table with one (empty) refcount block are written, then the image is opened and made consistent
 * through the normal allocator (clusters 0..2), the full header written, the image resized (L1 table at
 * cluster 3, preallocation) and the backing file recorded. The result is byte-identical to qemu-img 7.2's.
 */
export async function createQcow2(graph: Graph, o: Options, driverName: string): Promise<void> {
  if (!graph.registry.has('file')) {
    throw new BlockError('ENOTSUP', "Creating a qcow2 image needs the 'file' protocol driver (@blockgraph/driver-raw/file)");
  }
  const v = validate(o);
  let size = v.size;
  if (size === undefined) {
    if (v.backingFile === undefined) throw einval('Image creation needs a size parameter');
    size = await backingSize(graph, { filename: v.filename, backingFile: v.backingFile, backingFmt: v.backingFmt });
  }
  size = Math.ceil(size / 512) * 512;
  const p: CreateParams = { ...v, size };

  const fileOpts: Options = { filename: p.filename, size: 0 };
  if (o.nocow !== undefined) fileOpts.nocow = o.nocow;
  if (o.extentSizeHint !== undefined) fileOpts.extentSizeHint = o.extentSizeHint;
  await graph.createImage('file', fileOpts);
  // qcow2_co_create_opts(): once the file exists, a failure removes it again (bdrv_co_delete_file_noerr), and the
  // data file with it, so that no half-made image is left behind.
  let dataCreated = false;
  try {
    if (p.dataFile !== undefined) {
      await graph.createImage('file', { filename: p.dataFile, size: 0 });
      dataCreated = true;
    }

    // Like QEMU (BDRV_O_NO_FLUSH while creating), no flush reaches the disk until the image is complete.
    const noFlush = { noFlush: true };
    const fileNode = await graph.addNode({ driver: 'file', filename: p.filename, discard: 'unmap', cache: noFlush });
    const dataNode =
      p.dataFile !== undefined ? await graph.addNode({ driver: 'file', filename: p.dataFile, discard: 'unmap', cache: noFlush }) : null;
    try {
      // Header and a refcount table whose only refcount block (cluster 2) is still empty.
      const raw = graph.backend(fileNode, { perm: Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE, shared: PERM_ALL, allowBeyondEof: true });
      try {
        const cs = p.clusterSize;
        await raw.pwrite(0, initialHeader(p));
        const rt = new Uint8Array(2 * cs);
        writeU64(new DataView(rt.buffer), 0, 2 * cs);
        await raw.pwrite(cs, rt);
      } finally {
        raw.remove();
      }

      const opts: Options = { driver: driverName, file: fileNode.nodeName, backing: null, cacheCleanInterval: 0 };
      if (dataNode) opts.dataFile = dataNode.nodeName;
      const node = await graph.addNode(opts);
      try {
        const inst = node.impl as Qcow2Instance;
        const s = inst.state;
        await s.lock.lock();
        try {
          const first = await allocClusters(s, 3 * p.clusterSize);
          if (first !== 0) throw new BlockError('EIO', 'Huh, first cluster in empty image is already in use?');
          if (p.dataFile !== undefined) s.header.extensions.dataFile = p.dataFile;
          await updateHeader(s);
        } finally {
          s.lock.unlock();
        }
        const be = graph.backend(node, { perm: Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE, shared: PERM_ALL });
        try {
          await be.truncate(p.size, false, p.prealloc, 0);
        } catch (e) {
          throw e instanceof BlockError ? e.prepend('Could not resize image: ') : e;
        } finally {
          be.remove();
        }
        if (p.backingFile !== undefined) {
          if (s.dataFileIsRaw) throw einval(`Could not assign backing file '${p.backingFile}'`);
          await s.lock.lock();
          try {
            s.header.backingFile = p.backingFile;
            s.header.extensions.backingFormat = p.backingFmt ?? null;
            await updateHeader(s);
          } finally {
            s.lock.unlock();
          }
        }
      } finally {
        await graph.deleteNode(node);
      }
      // Then everything is flushed once, as QEMU's final reopen does.
      await fileNode.impl.flushToDisk?.();
      await dataNode?.impl.flushToDisk?.();
    } finally {
      if (dataNode && !dataNode.closed && dataNode.parents.length === 0) await graph.deleteNode(dataNode);
      if (!fileNode.closed && fileNode.parents.length === 0) await graph.deleteNode(fileNode);
    }
  } catch (e) {
    await deleteFileNoErr(graph, p.filename);
    if (dataCreated) await deleteFileNoErr(graph, p.dataFile!);
    throw e;
  }
}

/** bdrv_co_delete_file_noerr() on a file by name. */
async function deleteFileNoErr(graph: Graph, filename: string): Promise<void> {
  try {
    const node = await graph.addNode({ driver: 'file', filename });
    try {
      await node.impl.deleteFile?.();
    } finally {
      await graph.deleteNode(node);
    }
  } catch {
    // as QEMU: the creation error is what the caller sees
  }
}
