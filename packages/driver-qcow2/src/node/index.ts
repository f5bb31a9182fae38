/**
 * Node entry of @blockgraph/driver-qcow2: the same API, with `qcow2Driver` using Node's native zlib (about ten
 * times faster than pako for compressed images) and zstd on WebAssembly.
 */
import type { CodecTable } from '../codec.js';
import { createQcow2Driver } from '../driver/driver.js';

export * from '../index.js';

/**
 * Codecs for Node (native zlib, zstd on WebAssembly), imported on the first call: images without compressed
 * clusters never load them. The codecs themselves are in `@blockgraph/driver-qcow2/node/codecs`.
 */
export async function nodeCodecs(): Promise<CodecTable> {
  const codecs = await import('./codecs.js');
  return codecs.nodeCodecs();
}

/** The qcow2 driver with Node codecs. */
export const qcow2Driver = createQcow2Driver({ codecs: nodeCodecs });
