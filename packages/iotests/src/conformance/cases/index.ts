import type { ConformanceCase } from '../types.js';
import { basicCases } from './basics.js';
import { blockStatusCases } from './block-status.js';
import { closeCases } from './close.js';
import { concurrencyCases } from './concurrency.js';
import { readOnlyCases } from './readonly.js';
import { reopenCases } from './reopen.js';
import { resizeCases } from './resize.js';
import { discardCases, writeCases } from './write.js';

/** Every conformance check, in registration order. */
export const CASES: readonly ConformanceCase[] = [
  ...basicCases,
  ...readOnlyCases,
  ...writeCases,
  ...discardCases,
  ...blockStatusCases,
  ...concurrencyCases,
  ...resizeCases,
  ...reopenCases,
  ...closeCases,
];
