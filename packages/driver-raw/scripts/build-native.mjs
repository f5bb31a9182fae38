#!/usr/bin/env node
// Builds the optional native helper (native/build/Release/blockgraph_native.node) at install time.
// The helper is optional: without it the file driver falls back to pure Node fs (no SEEK_DATA block
// status, no fallocate, no image locking). So this script never fails an install; any problem becomes
// one warning line, and node-gyp's full output is kept in native/build/build-native.log.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';

const packageDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = join(packageDir, 'native');
const buildDir = join(nativeDir, 'build');
const logFile = join(buildDir, 'build-native.log');
const NPM_BUNDLED_NODE_GYP = '/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js';
const SYSTEM_NODE_DIR = '/usr';

function warn(reason) {
  process.stderr.write(`@blockgraph/driver-raw: native helper not built (${reason}); using the pure-JS fallback\n`);
}

function findNodeGyp() {
  // Our own devDependency first (a workspace install), then npm's bundled copy (a consumer install,
  // where devDependencies are absent).
  try {
    const require = createRequire(join(packageDir, 'package.json'));
    const gypPackageJson = require.resolve('node-gyp/package.json');
    const script = join(dirname(gypPackageJson), 'bin', 'node-gyp.js');
    if (existsSync(script)) return script;
  } catch {
    // not installed here; try the next candidate
  }
  if (existsSync(NPM_BUNDLED_NODE_GYP)) return NPM_BUNDLED_NODE_GYP;
  const npmExecPath = process.env.npm_execpath;
  if (npmExecPath && /npm-cli\.js$/.test(npmExecPath)) {
    const script = join(dirname(npmExecPath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
    if (existsSync(script)) return script;
  }
  return null;
}

function main() {
  if (process.env.BLOCKGRAPH_NO_NATIVE === '1') {
    warn('BLOCKGRAPH_NO_NATIVE=1');
    return;
  }
  if (process.platform !== 'linux') {
    warn(`the helper is Linux-only, this is ${process.platform}`);
    return;
  }
  const nodeGyp = findNodeGyp();
  if (!nodeGyp) {
    warn('node-gyp not found');
    return;
  }
  const args = [nodeGyp, 'rebuild'];
  // Distribution Node packages ship the headers; using them avoids a download from nodejs.org.
  if (existsSync(join(SYSTEM_NODE_DIR, 'include', 'node', 'node_api.h'))) {
    args.push(`--nodedir=${SYSTEM_NODE_DIR}`);
  }
  const result = spawnSync(process.execPath, args, {
    cwd: nativeDir,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 5 * 60_000,
  });
  const log = `$ ${process.execPath} ${args.join(' ')}\n${result.stdout ?? ''}${result.stderr ?? ''}`;
  try {
    mkdirSync(buildDir, { recursive: true });
    writeFileSync(logFile, log);
  } catch {
    // the log is a convenience; the outcome below is what matters
  }
  if (result.error) {
    warn(`node-gyp could not run: ${result.error.message}`);
    return;
  }
  if (result.status !== 0) {
    warn(`node-gyp exited with ${result.status ?? result.signal}, see ${logFile}`);
    return;
  }
  if (!existsSync(join(buildDir, 'Release', 'blockgraph_native.node'))) {
    warn(`node-gyp succeeded but produced no blockgraph_native.node, see ${logFile}`);
  }
}

try {
  main();
} catch (error) {
  warn(error instanceof Error ? error.message : String(error));
}
process.exitCode = 0;
