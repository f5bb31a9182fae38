import { Inflate, deflateRaw } from 'pako';
import { decompressionError, type CompressionCodec } from '../codec.js';

/**
 * Platform-neutral zlib codec (qcow2 compression type 0) on pako, a JavaScript port of zlib.
 *
 * QEMU inflates with a 4 KiB window (raw deflate, windowBits 12), so streams must be produced with windowBits
 * 12 too — back-references further than 4 KiB would make QEMU fail the read. pako, unlike most pure-JS deflate
 * implementations, lets us set that. It is slower than native zlib (about 3 ms to compress a 64 KiB cluster);
 * Node uses node/codecs.ts instead.
 */

const DEFLATE_OPTIONS = { level: -1, windowBits: 12, memLevel: 9, strategy: 0 } as const;

/** Stops inflating once one cluster is produced: a stream may legally (if oddly) encode more than that. */
class ClusterFull extends Error {}

export function inflateClusterWithPako(src: Uint8Array, dst: Uint8Array): void {
  const inflater = new Inflate({ raw: true, windowBits: 12, chunkSize: dst.length });
  let filled = 0;
  // pako hands out a chunk whenever its output buffer (one cluster) is full, and the rest at the end.
  inflater.onData = (chunk: Uint8Array) => {
    const n = Math.min(chunk.length, dst.length - filled);
    dst.set(chunk.subarray(0, n), filled);
    filled += n;
    if (filled === dst.length) throw new ClusterFull();
  };
  inflater.onEnd = () => {};
  try {
    inflater.push(src, false);
  } catch (e) {
    if (!(e instanceof ClusterFull)) throw decompressionError(e);
  }
  if (filled < dst.length) throw decompressionError(inflater.msg || undefined);
}

export function createPakoZlibCodec(): CompressionCodec {
  return {
    compress(src, maxLen) {
      const out = deflateRaw(src, DEFLATE_OPTIONS);
      return out.length <= maxLen ? out : null;
    },
    decompress: inflateClusterWithPako,
  };
}
