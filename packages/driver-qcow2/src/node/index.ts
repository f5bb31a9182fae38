/**
 * Node entry of @blockgraph/driver-qcow2: the same API, with `qcow2Driver` using Node's native zlib (about ten
 * times faster than pako for compressed images) and zstd on WebAssembly.
 */
import { createQcow2Driver } from '../driver/driver.js';
import { nodeCodecs } from './codecs.js';

export * from '../index.js';
export { nodeCodecs, createNodeZlibCodec } from './codecs.js';

/** The qcow2 driver with Node codecs. */
export const qcow2Driver = createQcow2Driver({ codecs: nodeCodecs });
