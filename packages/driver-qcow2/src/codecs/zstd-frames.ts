import { decompressionError } from '../codec.js';

/**
 * Walking zstd frames without decoding them (RFC 8878 §3.1). QEMU's zstd reader streams until the output
 * cluster is full and ignores what follows — usually the start of the next compressed cluster — while one-shot
 * decoders want exactly the bytes of whole frames. Measuring the frames first lets any one-shot decoder give
 * QEMU's results.
 */

const ZSTD_MAGIC = 0xfd2fb528;
const SKIPPABLE_MAGIC_MIN = 0x184d2a50;
const SKIPPABLE_MAGIC_MAX = 0x184d2a5f;

export interface ZstdFrameInfo {
  /** Bytes the frame occupies, from its magic number to the end of its checksum. */
  length: number;
  /** Skippable frames carry no data. */
  skippable: boolean;
  /** Frame_Content_Size, or -1 when the header does not record it. */
  contentSize: number;
}

function u32le(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16)) + b[at + 3]! * 0x1000000;
}

/** Measure the frame starting at `pos`; throws EIO for anything that is not a complete frame. */
export function zstdFrameAt(src: Uint8Array, pos: number): ZstdFrameInfo {
  const need = (n: number) => {
    if (pos + n > src.length) throw decompressionError(new Error('truncated zstd frame'));
  };
  need(4);
  const magic = u32le(src, pos);
  if (magic >= SKIPPABLE_MAGIC_MIN && magic <= SKIPPABLE_MAGIC_MAX) {
    need(8);
    const length = 8 + u32le(src, pos + 4);
    need(length);
    return { length, skippable: true, contentSize: 0 };
  }
  if (magic !== ZSTD_MAGIC) throw decompressionError(new Error('not a zstd frame'));
  need(5);
  const descriptor = src[pos + 4]!;
  if (descriptor & 0x08) throw decompressionError(new Error('reserved zstd frame header bit set'));
  const singleSegment = (descriptor >> 5) & 1;
  const fcsFlag = descriptor >> 6;
  const dictIdSize = [0, 1, 2, 4][descriptor & 3]!;
  const fcsSize = [singleSegment, 2, 4, 8][fcsFlag]!;
  let at = 5 + (singleSegment ? 0 : 1) + dictIdSize;
  need(at + fcsSize);
  let contentSize = -1;
  const f = pos + at;
  if (fcsSize === 1) contentSize = src[f]!;
  else if (fcsSize === 2) contentSize = (src[f]! | (src[f + 1]! << 8)) + 256;
  else if (fcsSize === 4) contentSize = u32le(src, f);
  else if (fcsSize === 8) contentSize = u32le(src, f) + u32le(src, f + 4) * 0x100000000;
  at += fcsSize;
  for (;;) {
    need(at + 3);
    const header = src[pos + at]! | (src[pos + at + 1]! << 8) | (src[pos + at + 2]! << 16);
    const last = header & 1;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3) throw decompressionError(new Error('reserved zstd block type'));
    at += 3 + (type === 1 ? 1 : size);
    need(at);
    if (last) break;
  }
  if (descriptor & 0x04) {
    at += 4;
    need(at);
  }
  return { length: at, skippable: false, contentSize };
}
