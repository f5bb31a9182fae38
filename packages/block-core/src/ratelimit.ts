/** QEMU's RateLimit: a byte quota per time slice; exceeding it delays the next slice. */
export class RateLimit {
  private sliceQuota = 0;
  private sliceMs = 100;
  private sliceStart = 0;
  private sliceEnd = 0;
  private dispatched = 0;

  constructor(private readonly now: () => number = () => (typeof performance !== 'undefined' ? performance.now() : Date.now())) {}

  /** `speed` bytes per second; 0 = unlimited. The quota is whole bytes per slice, at least one (as QEMU's uint64). */
  setSpeed(speed: number, sliceMs: number): void {
    this.sliceMs = sliceMs;
    this.sliceQuota = speed === 0 ? 0 : Math.max(Math.floor((speed * sliceMs) / 1000), 1);
  }

  /** Account `n` bytes; returns how many ms to wait before going on. */
  calculateDelay(n: number): number {
    if (!this.sliceQuota) return 0;
    const now = this.now();
    if (this.sliceEnd < now) {
      // The previous (possibly extended) slice is over: start a new one.
      this.sliceStart = now;
      this.sliceEnd = now + this.sliceMs;
      this.dispatched = 0;
    }
    this.dispatched += n;
    if (this.dispatched < this.sliceQuota) return 0;
    const delaySlices = this.dispatched / this.sliceQuota;
    this.sliceEnd = this.sliceStart + delaySlices * this.sliceMs;
    return this.sliceEnd - now;
  }
}
