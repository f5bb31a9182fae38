import { BlockError } from '@blockgraph/block-core';
import { viewOf } from './u64.js';

/**
 * The LUKS1 header a qcow2 image with crypt_method 2 keeps in its crypto header area, read for `qemu-img info`
 * only (QCryptoBlockInfoLUKS, what qcrypto_block_luks_get_info() reports). blockgraph does no encrypted I/O: this
 * describes the image, it never derives a key.
 *
 *   0 magic "LUKS\xba\xbe"   6 u16 version (1)   8 cipher_name[32]   40 cipher_mode[32]   72 hash_spec[32]
 *   104 u32 payload_offset (sectors)   108 u32 key_bytes   112 mk_digest[20]   132 mk_digest_salt[32]
 *   164 u32 mk_digest_iter   168 uuid[40]   208 key slots, 8 x 48 bytes:
 *       u32 active (0x00AC71F3 enabled)   u32 iterations   salt[32]   u32 key_offset (sectors)   u32 stripes
 */

export const LUKS_HEADER_SIZE = 592;
const MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
const SECTOR = 512;
const KEY_SLOT_ENABLED = 0x00ac71f3;

export interface LuksSlotInfo {
  active: boolean;
  /** Only for active slots, as in QEMU. */
  iters?: number;
  stripes?: number;
  keyOffset: number;
}

export interface LuksInfo {
  cipherAlg: string;
  cipherMode: string;
  ivgenAlg: string;
  ivgenHashAlg?: string;
  hashAlg: string;
  payloadOffset: number;
  masterKeyIters: number;
  uuid: string;
  slots: LuksSlotInfo[];
}

function cString(bytes: Uint8Array, at: number, size: number): string {
  const field = bytes.subarray(at, at + size);
  const nul = field.indexOf(0);
  return new TextDecoder('latin1').decode(nul < 0 ? field : field.subarray(0, nul));
}

function invalid(message: string): BlockError {
  return new BlockError('EINVAL', message);
}

/** qcrypto_block_luks_cipher_name_lookup(): the algorithm for a cipher name and key size. */
function cipherAlg(name: string, mode: string, keyBytes: number): string {
  const bytes = mode === 'xts' ? keyBytes / 2 : keyBytes;
  const sizes: Record<string, number[]> = { aes: [16, 24, 32], serpent: [16, 24, 32], twofish: [16, 24, 32], cast5: [16] };
  const ok = sizes[name];
  if (!ok || !ok.includes(bytes)) throw invalid(`Algorithm '${name}' with key size ${bytes} bytes not supported`);
  return `${name}-${bytes * 8}`;
}

/** Parse the LUKS1 header at the start of `bytes` (at least LUKS_HEADER_SIZE bytes). */
export function parseLuksHeader(bytes: Uint8Array): LuksInfo {
  if (bytes.length < LUKS_HEADER_SIZE) throw invalid('LUKS header is truncated');
  if (!MAGIC.every((b, i) => bytes[i] === b)) throw invalid('Volume is not in LUKS format');
  const v = viewOf(bytes);
  const version = v.getUint16(6);
  if (version !== 1) throw invalid(`LUKS version ${version} is not supported`);
  const cipherName = cString(bytes, 8, 32);
  const cipherModeSpec = cString(bytes, 40, 32);
  const hashSpec = cString(bytes, 72, 32);
  // "xts-plain64", "cbc-essiv:sha256": the block mode, then the IV generator and its hash.
  const dash = cipherModeSpec.indexOf('-');
  if (dash < 0) throw invalid(`Unexpected cipher mode string format '${cipherModeSpec}'`);
  const mode = cipherModeSpec.slice(0, dash);
  const ivgenSpec = cipherModeSpec.slice(dash + 1);
  const colon = ivgenSpec.indexOf(':');
  const ivgenAlg = colon < 0 ? ivgenSpec : ivgenSpec.slice(0, colon);
  const ivgenHash = colon < 0 ? undefined : ivgenSpec.slice(colon + 1);
  const info: LuksInfo = {
    cipherAlg: cipherAlg(cipherName, mode, v.getUint32(108)),
    cipherMode: mode,
    ivgenAlg,
    ...(ivgenAlg === 'essiv' && ivgenHash !== undefined ? { ivgenHashAlg: ivgenHash } : {}),
    hashAlg: hashSpec,
    payloadOffset: v.getUint32(104) * SECTOR,
    masterKeyIters: v.getUint32(164),
    uuid: cString(bytes, 168, 40),
    slots: [],
  };
  for (let i = 0; i < 8; i++) {
    const at = 208 + i * 48;
    const active = v.getUint32(at) === KEY_SLOT_ENABLED;
    // QAPI's field order (QCryptoBlockInfoLUKSSlot); iters and stripes only for an active slot.
    info.slots.push({
      active,
      ...(active ? { iters: v.getUint32(at + 4), stripes: v.getUint32(at + 44) } : {}),
      keyOffset: v.getUint32(at + 40) * SECTOR,
    });
  }
  return info;
}
