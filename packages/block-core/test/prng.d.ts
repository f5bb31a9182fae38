/** xorshift32: a seeded PRNG so failing randomized tests can be replayed. */
export declare function xorshift(seed: number): () => number;
export declare function randInt(rnd: () => number, lo: number, hi: number): number;
//# sourceMappingURL=prng.d.ts.map