/// <reference types="node" />
import { constants, deflateRawSync, inflateRawSync } from 'node:zlib';
import { decompressionError, type CodecTable, type CompressionCodec } from '../codec.js';
import { inflateClusterWithPako } from '../codecs/zlib-pako.js';
import { createZstdWasmCodec } from '../codecs/zstd-wasm.js';
import { CompressionType } from '../format/constants.js';

/**
 * Node defaults: zlib on Node's native zlib (about 10x faster than pako), zstd on WebAssembly (Node 20 has no
 * zstd). Synchronous calls: see codec.ts for why.
 */

/** QEMU's deflate parameters: raw deflate, 4 KiB window, memLevel 9, default level and strategy. */
const DEFLATE_OPTIONS = {
  level: constants.Z_DEFAULT_COMPRESSION,
  windowBits: 12,
  memLevel: 9,
  strategy: constants.Z_DEFAULT_STRATEGY,
};

export function createNodeZlibCodec(): CompressionCodec {
  return {
    compress(src, maxLen) {
      const out = deflateRawSync(src, DEFLATE_OPTIONS);
      return out.length <= maxLen ? new Uint8Array(out.buffer, out.byteOffset, out.length) : null;
    },
    decompress(src, dst) {
      let out: Uint8Array;
      try {
        // Z_SYNC_FLUSH: a window cut short at EOF yields what it holds instead of an "unexpected end" error;
        // bytes after the end of the stream are ignored.
        out = inflateRawSync(src, { windowBits: 12, finishFlush: constants.Z_SYNC_FLUSH, maxOutputLength: dst.length });
      } catch (e) {
        if ((e as { code?: unknown }).code === 'ERR_BUFFER_TOO_LARGE') {
          // The stream encodes more than a cluster: QEMU keeps the first cluster; pako can stop there.
          inflateClusterWithPako(src, dst);
          return;
        }
        throw decompressionError(e);
      }
      if (out.length < dst.length) throw decompressionError(new Error('compressed cluster is short'));
      dst.set(out.subarray(0, dst.length));
    },
  };
}

/** Codecs for Node: native zlib, WebAssembly zstd. */
export async function nodeCodecs(): Promise<CodecTable> {
  return {
    [CompressionType.ZLIB]: createNodeZlibCodec(),
    [CompressionType.ZSTD]: await createZstdWasmCodec(),
  };
}

/** Same name as the neutral entry's default (codecs/index.ts), for export-condition switching. */
export const defaultCodecs: () => Promise<CodecTable> = nodeCodecs;
