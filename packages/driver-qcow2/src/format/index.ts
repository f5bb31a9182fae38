/** The qcow2 on-disk format: codecs and validation, no I/O. */
export * from './constants.js';
export * from './u64.js';
export * from './geometry.js';
export * from './feature-table.js';
export * from './header-extensions.js';
export * from './header.js';
export * from './header-updates.js';
export * from './l1-entry.js';
export * from './l2-entry.js';
export * from './compressed.js';
export * from './refcount-table.js';
export * from './refcount-block.js';
export * from './snapshot-table.js';
export * from './bitmap-directory.js';
export * from './overlap.js';
export * from './luks-header.js';
