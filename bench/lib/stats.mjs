export function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** "Run completed in 1.234 seconds." → 1.234 */
export function reportedSeconds(stdout) {
  const m = /(?:Run|Mirror) completed in ([0-9.]+) seconds\./.exec(stdout);
  return m ? Number(m[1]) : NaN;
}
