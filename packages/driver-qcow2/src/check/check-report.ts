import { STRERROR, type CheckFix, type CheckResult } from '@blockgraph/block-core';

/**
 * qemu-img check's output for a CheckResult: the human report (stdout), the JSON object (ImageCheck) with
 * QEMU 7.2's key order, the exit code, and the final "Check failed" error line.
 */

/**
 * printf("%0.2f", x) for a double: the exact binary value rounded half to even at two decimals (glibc), which
 * differs from Number#toFixed on exact ties such as 12.125.
 */
export function formatPercent(x: number): string {
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : x < 0 ? '-inf' : 'nan';
  const negative = x < 0 || Object.is(x, -0);
  // toFixed(100) is exact for every double of this magnitude (at most 100 fractional binary digits matter
  // for rounding at the second decimal, and smaller values round to 0.00 anyway).
  const exact = Math.abs(x).toFixed(100);
  const dot = exact.indexOf('.');
  const intPart = exact.slice(0, dot);
  const frac = exact.slice(dot + 1);
  let cents = BigInt(intPart + frac.slice(0, 2));
  const rest = frac.slice(2);
  const firstRest = rest.charCodeAt(0) - 48;
  const tail = rest.slice(1).replace(/0+$/, '');
  if (firstRest > 5 || (firstRest === 5 && (tail.length > 0 || cents % 2n === 1n))) cents += 1n;
  const s = cents.toString().padStart(3, '0');
  return (negative ? '-' : '') + s.slice(0, -2) + '.' + s.slice(-2);
}

/**
 * The text `qemu-img check` prints on stdout. A failed check prints no report; when it was the double check
 * after a repair that failed, the "repaired" block has been printed already. `filename` is not part of it.
 */
export function formatCheckHuman(result: CheckResult, _filename?: string): string {
  let out = '';
  if (result.corruptionsFixed || result.leaksFixed) {
    out +=
      'The following inconsistencies were found and repaired:\n\n' +
      `    ${result.leaksFixed} leaked clusters\n` +
      `    ${result.corruptionsFixed} corruptions\n\n` +
      'Double checking the fixed image now...\n';
  }
  if (result.checkFailed) return out;
  if (!(result.corruptions || result.leaks || result.checkErrors)) {
    out += 'No errors were found on the image.\n';
  } else {
    if (result.corruptions) {
      out +=
        `\n${result.corruptions} errors were found on the image.\n` +
        'Data may be corrupted, or further writes to the image may corrupt it.\n';
    }
    if (result.leaks) {
      out +=
        `\n${result.leaks} leaked clusters were found on the image.\n` +
        'This means waste of disk space, but no harm to data.\n';
    }
    if (result.checkErrors) {
      out += `\n${result.checkErrors} internal errors have occurred during the check.\n`;
    }
  }
  const total = result.totalClusters ?? 0;
  const allocated = result.allocatedClusters ?? 0;
  if (total !== 0 && allocated !== 0) {
    const fragmented = result.fragmentedClusters ?? 0;
    const compressed = result.compressedClusters ?? 0;
    out +=
      `${allocated}/${total} = ${formatPercent((allocated * 100.0) / total)}% allocated, ` +
      `${formatPercent((fragmented * 100.0) / allocated)}% fragmented, ` +
      `${formatPercent((compressed * 100.0) / allocated)}% compressed clusters\n`;
  }
  if (result.imageEndOffset) out += `Image end offset: ${result.imageEndOffset}\n`;
  return out;
}

/**
 * The ImageCheck object of `qemu-img check --output=json`, keys in the order QEMU 7.2 prints them (its QDict
 * iteration order), optional counters omitted when zero. Null when the check failed (qemu-img prints none).
 */
export function checkResultJson(result: CheckResult, filename: string, format = 'qcow2'): Record<string, unknown> | null {
  if (result.checkFailed) return null;
  const out: Record<string, unknown> = {};
  const opt = (key: string, value: number | undefined) => {
    if (value) out[key] = value;
  };
  opt('image-end-offset', result.imageEndOffset);
  opt('compressed-clusters', result.compressedClusters);
  opt('total-clusters', result.totalClusters);
  opt('corruptions', result.corruptions);
  opt('corruptions-fixed', result.corruptionsFixed);
  out['check-errors'] = result.checkErrors;
  opt('leaks', result.leaks);
  opt('leaks-fixed', result.leaksFixed);
  opt('allocated-clusters', result.allocatedClusters);
  out['filename'] = filename;
  out['format'] = format;
  opt('fragmented-clusters', result.fragmentedClusters);
  return out;
}

/** The text `qemu-img check --output=json` prints on stdout (empty when the check failed). */
export function formatCheckJson(result: CheckResult, filename: string, format = 'qcow2'): string {
  const obj = checkResultJson(result, filename, format);
  return obj ? JSON.stringify(obj, null, 4) + '\n' : '';
}

/**
 * qemu-img check's exit status: 1 when the check failed or had internal errors, else 2 for corruptions,
 * 3 for leaks only, 0 for a clean image. The result already reflects the repair mode (after a repair it is
 * the double check's), so `fix` does not change the mapping.
 */
export function checkExitCode(result: CheckResult, _fix?: CheckFix): 0 | 1 | 2 | 3 {
  if (result.checkFailed || result.checkErrors) return 1;
  if (result.corruptions) return 2;
  if (result.leaks) return 3;
  return 0;
}

/** qemu-img's last stderr line for a failed check (it prefixes the program name), or null. */
export function checkFailureMessage(result: CheckResult): string | null {
  if (result.checkFailed) return `Check failed: ${STRERROR[result.checkFailed]}`;
  if (result.checkErrors) return 'Check failed';
  return null;
}
