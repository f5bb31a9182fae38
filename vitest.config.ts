import { defineConfig } from 'vitest/config';

// Tests run against package sources: the `@blockgraph/source` export condition points each
// workspace package at its `src/index.ts`, so no build is needed before `vitest run`.
const conditions = ['@blockgraph/source', 'module', 'node', 'import', 'default'];

const pkg = (name: string, extra: Record<string, unknown> = {}) => ({
  extends: true as const,
  test: { name, include: [`packages/${name}/test/**/*.test.ts`], ...extra },
});

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions, externalConditions: conditions } },
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    projects: [
      pkg('block-core'),
      pkg('driver-raw'),
      pkg('driver-qcow2'),
      pkg('iotests'),
      pkg('filter-cor'),
      pkg('job-mirror'),
      pkg('cli'),
    ],
  },
});
