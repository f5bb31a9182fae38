/**
 * The 4 MiB source of the compressed reference images (reference §4.5): every 4 KiB block starts with a
 * 16-byte text label, the rest is zero, and guest cluster 32 (64 KiB) is random so that it does not compress.
 * Deterministic, so failures reproduce.
 */
export function makeSourceData(): Uint8Array {
  const data = new Uint8Array(4 * 1024 * 1024);
  const encoder = new TextEncoder();
  for (let off = 0; off < data.length; off += 4096) {
    data.set(encoder.encode(`block ${off}`.padEnd(16, '.').slice(0, 16)), off);
  }
  let x = 0x2545f491;
  for (let i = 32 * 65536; i < 33 * 65536; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data[i] = x & 0xff;
  }
  return data;
}
