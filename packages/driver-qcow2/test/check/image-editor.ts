/// <reference types="node" />
import { readFileSync, writeFileSync } from 'node:fs';

/**
 * Fault injection for check tests: a small editor over an image file that follows the header, the refcount
 * table and the L1/L2 tables to patch single entries (independent of the code under test).
 */
export class ImageEditor {
  bytes: Uint8Array;
  private view: DataView;

  constructor(readonly path: string) {
    this.bytes = new Uint8Array(readFileSync(path));
    this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
  }

  save(): void {
    writeFileSync(this.path, this.bytes);
  }

  u32(at: number): number {
    return this.view.getUint32(at);
  }
  u64(at: number): bigint {
    return this.view.getBigUint64(at);
  }
  setU32(at: number, v: number): this {
    this.view.setUint32(at, v);
    return this;
  }
  setU64(at: number, v: bigint): this {
    this.ensure(at + 8);
    this.view.setBigUint64(at, v);
    return this;
  }
  ensure(length: number): void {
    if (length <= this.bytes.length) return;
    const grown = new Uint8Array(length);
    grown.set(this.bytes);
    this.bytes = grown;
    this.view = new DataView(grown.buffer);
  }
  /** Append `n` bytes (default one cluster) of `fill`; returns the offset. */
  append(n = this.clusterSize, fill = 0): number {
    const at = this.bytes.length;
    this.ensure(at + n);
    this.bytes.fill(fill, at);
    return at;
  }

  get clusterBits(): number {
    return this.u32(20);
  }
  get clusterSize(): number {
    return 2 ** this.clusterBits;
  }
  get version(): number {
    return this.u32(4);
  }
  get refcountOrder(): number {
    return this.version >= 3 ? this.u32(96) : 4;
  }
  get extendedL2(): boolean {
    return this.version >= 3 && (this.u64(72) & 16n) !== 0n;
  }
  get l1Offset(): number {
    return Number(this.u64(40));
  }
  get l1Size(): number {
    return this.u32(36);
  }
  get reftableOffset(): number {
    return Number(this.u64(48));
  }

  /** Byte offset of the refcount entry of `cluster` (refcount_bits >= 8), following the refcount table. */
  private refcountAt(cluster: number): { at: number; bits: number } {
    const bits = 2 ** this.refcountOrder;
    const perBlock = (this.clusterSize * 8) / bits;
    const block = Number(this.u64(this.reftableOffset + Math.floor(cluster / perBlock) * 8) & ~0x1ffn);
    if (!block) throw new Error(`no refcount block for cluster ${cluster}`);
    return { at: block * 8 + (cluster % perBlock) * bits, bits };
  }

  /** Refcount of `cluster` (any refcount width). */
  refcount(cluster: number): number {
    const { at, bits } = this.refcountAt(cluster);
    const byte = Math.floor(at / 8);
    if (bits < 8) return (this.bytes[byte]! >> (at % 8)) & ((1 << bits) - 1);
    let v = 0n;
    for (let i = 0; i < bits / 8; i++) v = (v << 8n) | BigInt(this.bytes[byte + i]!);
    return Number(v);
  }

  setRefcount(cluster: number, value: number | bigint): this {
    const { at, bits } = this.refcountAt(cluster);
    const byte = Math.floor(at / 8);
    if (bits < 8) {
      const mask = ((1 << bits) - 1) << (at % 8);
      this.bytes[byte] = (this.bytes[byte]! & ~mask) | ((Number(value) << (at % 8)) & mask);
      return this;
    }
    let v = BigInt(value);
    for (let i = bits / 8 - 1; i >= 0; i--) {
      this.bytes[byte + i] = Number(v & 0xffn);
      v >>= 8n;
    }
    return this;
  }

  l1Entry(index: number): bigint {
    return this.u64(this.l1Offset + index * 8);
  }
  setL1Entry(index: number, v: bigint): this {
    return this.setU64(this.l1Offset + index * 8, v);
  }

  private l2Geometry(guestCluster: number): { l1Index: number; l2Index: number; entrySize: number } {
    const entrySize = this.extendedL2 ? 16 : 8;
    const perTable = this.clusterSize / entrySize;
    return { l1Index: Math.floor(guestCluster / perTable), l2Index: guestCluster % perTable, entrySize };
  }

  /** Byte offset of the L2 entry mapping guest cluster `guestCluster` (its L2 table must exist). */
  l2EntryOffset(guestCluster: number): number {
    const { l1Index, l2Index, entrySize } = this.l2Geometry(guestCluster);
    const l2 = Number(this.l1Entry(l1Index) & 0x00fffffffffffe00n);
    if (!l2) throw new Error(`no L2 table for guest cluster ${guestCluster}`);
    return l2 + l2Index * entrySize;
  }
  l2Entry(guestCluster: number): bigint {
    return this.u64(this.l2EntryOffset(guestCluster));
  }
  setL2Entry(guestCluster: number, v: bigint): this {
    return this.setU64(this.l2EntryOffset(guestCluster), v);
  }
  /** Extended L2: the subcluster bitmap (zero bits in the high half, allocation bits in the low half). */
  setL2Bitmap(guestCluster: number, v: bigint): this {
    return this.setU64(this.l2EntryOffset(guestCluster) + 8, v);
  }
  /** Host cluster index of a normal guest cluster. */
  hostCluster(guestCluster: number): number {
    return Number((this.l2Entry(guestCluster) & 0x00fffffffffffe00n) / BigInt(this.clusterSize));
  }
}
