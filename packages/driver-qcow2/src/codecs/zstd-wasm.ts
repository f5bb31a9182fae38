import { compress as zstdCompress, decompress as zstdDecompress, init as zstdInit } from '@bokuweb/zstd-wasm';
import { decompressionError, type CompressionCodec } from '../codec.js';
import { zstdFrameAt } from './zstd-frames.js';

/**
 * zstd codec (qcow2 compression type 1) on @bokuweb/zstd-wasm: the reference zstd library compiled to
 * WebAssembly, so it runs in Node and in browsers (its `browser` build fetches the .wasm next to it) and
 * installs without native builds or downloads. Node has no built-in zstd before v22.15, so Node uses it too.
 *
 * QEMU writes one frame per cluster with ZSTD_compressStream2 at the default level 3 and no extra framing;
 * it reads frames until the cluster is full and ignores the rest of the read window.
 */

export const ZSTD_LEVEL = 3;

let ready: Promise<void> | undefined;

/** Instantiate the WebAssembly module once per process. */
function initOnce(): Promise<void> {
  ready ??= zstdInit();
  return ready;
}

export function decompressZstdCluster(src: Uint8Array, dst: Uint8Array): void {
  let inPos = 0;
  let outPos = 0;
  while (outPos < dst.length) {
    const frame = zstdFrameAt(src, inPos);
    const bytes = src.subarray(inPos, inPos + frame.length);
    inPos += frame.length;
    if (frame.skippable) continue;
    const room = dst.length - outPos;
    // A frame that does not end within the cluster fails in QEMU too (the stream is left unfinished).
    if (frame.contentSize > room) throw decompressionError(new Error('zstd frame larger than the cluster'));
    let out: Uint8Array;
    try {
      out = zstdDecompress(bytes, { defaultHeapSize: Math.max(room, 1) });
    } catch (e) {
      throw decompressionError(e);
    }
    if (out.length > room) throw decompressionError(new Error('zstd frame larger than the cluster'));
    dst.set(out, outPos);
    outPos += out.length;
  }
}

export async function createZstdWasmCodec(): Promise<CompressionCodec> {
  await initOnce();
  return {
    compress(src, maxLen) {
      const out = zstdCompress(src, ZSTD_LEVEL);
      return out.length <= maxLen ? out : null;
    },
    decompress: decompressZstdCluster,
  };
}
