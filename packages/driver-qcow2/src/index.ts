/**
 * @blockgraph/driver-qcow2: the qcow2 format driver (QEMU 7.2-compatible), image creation and check, plus the
 * pure on-disk format layer. Platform-neutral; Node users may prefer `@blockgraph/driver-qcow2/node`, whose
 * driver uses Node's native zlib.
 */
import type { CodecTable } from './codec.js';
import { createQcow2Driver } from './driver/driver.js';

export { createQcow2Driver, probeQcow2, type Qcow2DriverOptions } from './driver/driver.js';
export { QCOW2_RUNTIME_OPTIONS } from './driver/options.js';
export { QCOW2_CREATE_OPTIONS } from './driver/create.js';
export { QCOW2_AMEND_OPTIONS } from './driver/amend.js';
export { calcPreallocSize, measureQcow2 } from './driver/measure.js';
export { Qcow2Instance, type Qcow2BitmapInfo } from './driver/instance.js';
export type { Qcow2State } from './driver/state.js';
export { codecFor, decompressionError, type CodecTable, type CompressionCodec } from './codec.js';

/**
 * Platform-neutral codecs: zlib on pako, zstd on WebAssembly. Imported on the first call, so that opening images
 * without compressed clusters never loads them (about 30 ms). The codecs themselves are in
 * `@blockgraph/driver-qcow2/codecs`.
 */
export async function neutralCodecs(): Promise<CodecTable> {
  const codecs = await import('./codecs/index.js');
  return codecs.neutralCodecs();
}
export {
  checkImage,
  checkExitCode,
  checkFailureMessage,
  checkResultJson,
  formatCheckHuman,
  formatCheckJson,
  type ImageIO,
  type CheckImageOptions,
} from './check/index.js';
export * as qcow2Format from './format/index.js';

/** The qcow2 driver with platform-neutral codecs (zlib on pako, zstd on WebAssembly). */
export const qcow2Driver = createQcow2Driver({ codecs: neutralCodecs });
