#!/usr/bin/env node
'use strict';
/*
 * The `blockgraph` executable. It exists only to size libuv's thread pool before anything uses it: file I/O that
 * misses nothing (page-cache copies) runs fastest with one pool thread per CPU, while libuv's default of 4
 * oversubscribes small machines (measured on 2 CPUs: 1 MiB sequential reads 0.68 -> 0.55 s per 8 GiB, 4 KiB
 * writes at depth 32 0.72 -> 0.59 s). The pool starts on its first use, and Node's ESM loader reads modules
 * through it, so this must be a CommonJS file that runs before the first import. A UV_THREADPOOL_SIZE set by the
 * user is kept.
 */
if (!process.env.UV_THREADPOOL_SIZE) {
  process.env.UV_THREADPOOL_SIZE = String(Math.max(2, require('node:os').availableParallelism()));
}
import('../dist/bin.js');
