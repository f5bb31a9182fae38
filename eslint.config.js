import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

const nodeModules = ['fs', 'path', 'os', 'zlib', 'child_process', 'crypto', 'events', 'stream', 'util', 'url', 'worker_threads', 'buffer', 'net'];
const platformNeutral = ['block-core', 'driver-raw', 'driver-qcow2', 'filter-cor', 'job-mirror', 'iotests'];

export default tseslint.config(
  { ignores: ['**/dist/**', '**/build/**', '**/node_modules/**', '**/*.d.ts'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    // Scripts, benchmarks and tests run on Node.
    files: ['scripts/**', 'bench/**', '**/*.mjs', '**/test/**', '**/*.mts'],
    languageOptions: { globals: { ...globals.node } },
  },
  {
    // CommonJS launchers (the cli's bin, which must run before the ESM loader starts libuv's thread pool).
    files: ['**/*.cjs'],
    languageOptions: { sourceType: 'commonjs', globals: { ...globals.node } },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-explicit-any': 'off',
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  {
    // Platform-neutral packages must run in a browser: no Node built-ins outside their `node/` entries.
    files: platformNeutral.map((p) => `packages/${p}/src/**/*.ts`),
    ignores: platformNeutral.map((p) => `packages/${p}/src/node/**`),
    rules: {
      'no-restricted-imports': ['error', {
        patterns: [{ group: ['node:*', ...nodeModules], message: 'platform-neutral package: no Node built-ins (put Node-only code behind the node entry)' }],
      }],
    },
  },
);
