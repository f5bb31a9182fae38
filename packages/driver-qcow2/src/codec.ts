import { BlockError } from '@blockgraph/block-core';

/**
 * Compression codecs for compressed clusters, injected into the driver so that the package stays
 * platform-neutral: Node gets native zlib (`@blockgraph/driver-qcow2/node`), browsers and other runtimes the
 * neutral defaults (pako + zstd compiled to WebAssembly), and anyone can bring their own.
 *
 * Codecs are synchronous: a cluster is at most 2 MiB and (de)compressing one 64 KiB cluster takes tens to a few
 * hundred microseconds, far less than a round trip through a thread pool would cost to hide.
 *
 * Contract, from QEMU 7.2 (block/qcow2-threads.c):
 * - compress() gets one whole cluster and returns the compressed bytes, or null when they would be longer than
 *   `maxLen` (QEMU passes cluster_size - 1 and then stores the cluster uncompressed).
 * - decompress() gets the read window of a compressed cluster — which may hold trailing bytes of the next
 *   compressed cluster, or be cut short at EOF — and must fill `dst` (one cluster) completely; anything else is
 *   a BlockError EIO. Bytes after the end of the stream are ignored.
 */
export interface CompressionCodec {
  compress(src: Uint8Array, maxLen: number): Uint8Array | null;
  decompress(src: Uint8Array, dst: Uint8Array): void;
}

/** Codecs by qcow2 compression_type: 0 zlib (raw deflate, window 2^12), 1 zstd. */
export interface CodecTable {
  readonly [compressionType: number]: CompressionCodec | undefined;
}

/** The codec for an image's compression type, or ENOTSUP when the table lacks it. */
export function codecFor(table: CodecTable, compressionType: number): CompressionCodec {
  const codec = table[compressionType];
  if (!codec) throw new BlockError('ENOTSUP', `qcow2: no codec for compression type ${compressionType}`);
  return codec;
}

/** The EIO every codec throws when a cluster cannot be decompressed (QEMU reports plain -EIO). */
export function decompressionError(cause?: unknown): BlockError {
  return new BlockError('EIO', undefined, { cause });
}
