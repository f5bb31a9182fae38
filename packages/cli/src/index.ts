/**
 * @blockgraph/cli: the `blockgraph` command as a function. `main(argv, { stdout, stderr })` runs it in-process
 * and resolves to the exit code; the `blockgraph` bin calls it with the process's streams.
 */
export { main, VERSION } from './main.js';
export type { CliIO, OutStream } from './lib/context.js';
export { COMMANDS, type CommandEntry, type CommandModule } from './commands/index.js';
