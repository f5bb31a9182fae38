import { BlockError } from '@blockgraph/block-core';
import { describe, expect, it } from 'vitest';
import { LUKS_HEADER_SIZE, parseLuksHeader } from '../../src/format/index.js';

/** A LUKS1 header as cryptsetup / QEMU write it: aes xts-plain64 sha256, 64-byte key, slot 0 active. */
function header(): Uint8Array {
  const b = new Uint8Array(LUKS_HEADER_SIZE);
  const v = new DataView(b.buffer);
  const ascii = (at: number, s: string) => b.set(new TextEncoder().encode(s), at);
  b.set([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
  v.setUint16(6, 1);
  ascii(8, 'aes');
  ascii(40, 'xts-plain64');
  ascii(72, 'sha256');
  v.setUint32(104, 4040);
  v.setUint32(108, 64);
  v.setUint32(164, 1000);
  ascii(168, 'b85a3bec-a6cb-4cab-920d-cba1efd96c3c');
  for (let i = 0; i < 8; i++) {
    const at = 208 + i * 48;
    v.setUint32(at, i === 0 ? 0x00ac71f3 : 0x0000dead);
    v.setUint32(at + 4, 2000);
    v.setUint32(at + 40, 8 + i * 504);
    v.setUint32(at + 44, 4000);
  }
  return b;
}

describe('LUKS1 header description (qcrypto_block_luks_get_info)', () => {
  it('names the cipher from name, mode and key size; iters and stripes only for active slots', () => {
    const info = parseLuksHeader(header());
    expect(info).toMatchObject({
      cipherAlg: 'aes-256',
      cipherMode: 'xts',
      ivgenAlg: 'plain64',
      hashAlg: 'sha256',
      payloadOffset: 4040 * 512,
      masterKeyIters: 1000,
      uuid: 'b85a3bec-a6cb-4cab-920d-cba1efd96c3c',
    });
    expect(info.ivgenHashAlg).toBeUndefined();
    expect(info.slots[0]).toEqual({ active: true, iters: 2000, stripes: 4000, keyOffset: 4096 });
    expect(info.slots[1]).toEqual({ active: false, keyOffset: 512 * 512 });
    expect(info.slots).toHaveLength(8);
  });

  it('damage: QEMU\'s messages, as BlockErrors', () => {
    const bad = (edit: (b: Uint8Array, v: DataView) => void, message: string) => {
      const b = header();
      edit(b, new DataView(b.buffer));
      expect(() => parseLuksHeader(b)).toThrowError(expect.objectContaining({ code: 'EINVAL', message }));
    };
    bad((b) => (b[0] = 0x58), 'Volume is not in LUKS format');
    bad((_, v) => v.setUint16(6, 2), 'LUKS version 2 is not supported');
    bad((_, v) => v.setUint32(108, 20), "Algorithm 'aes' with key size 10 bytes not supported");
    bad((b) => b.fill(0, 40, 72), "Unexpected cipher mode string format ''");
    expect(() => parseLuksHeader(header().subarray(0, 100))).toThrowError(BlockError);
  });
});
