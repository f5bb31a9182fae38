import type { CodecTable } from '../codec.js';
import { CompressionType } from '../format/constants.js';
import { createPakoZlibCodec } from './zlib-pako.js';
import { createZstdWasmCodec } from './zstd-wasm.js';

export { createPakoZlibCodec, inflateClusterWithPako } from './zlib-pako.js';
export { createZstdWasmCodec, decompressZstdCluster, ZSTD_LEVEL } from './zstd-wasm.js';
export { zstdFrameAt, type ZstdFrameInfo } from './zstd-frames.js';

/** Platform-neutral codecs: zlib on pako, zstd on WebAssembly. Works in Node and in browsers. */
export async function neutralCodecs(): Promise<CodecTable> {
  return {
    [CompressionType.ZLIB]: createPakoZlibCodec(),
    [CompressionType.ZSTD]: await createZstdWasmCodec(),
  };
}

/**
 * The neutral entry's name for the default table. The Node entry (node/codecs.ts) exports the same name, so a
 * package export condition can pick the right one without callers changing their import.
 */
export const defaultCodecs: () => Promise<CodecTable> = neutralCodecs;
