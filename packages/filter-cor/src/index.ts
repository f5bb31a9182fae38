export { copyOnReadDriver, corChildPerm } from './copy-on-read.js';
export { insertCopyOnRead, removeCopyOnRead, type InsertCopyOnReadOptions } from './runtime.js';
