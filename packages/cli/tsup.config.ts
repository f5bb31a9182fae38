import { defineConfig } from 'tsup';

export default defineConfig({
  // bin.ts is the executable; every subcommand is its own chunk so that the CLI only loads what it runs.
  entry: ['src/index.ts', 'src/bin.ts'],
  format: ['esm'],
  dts: { entry: ['src/index.ts'], compilerOptions: { composite: false } },
  sourcemap: true,
  clean: true,
  splitting: true,
  target: 'es2022',
  platform: 'node',
});
