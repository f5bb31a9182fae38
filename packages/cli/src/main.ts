/**
 * `blockgraph` entry: global options, subcommand dispatch, error reporting. `main()` runs in-process with any
 * output streams (tests use strings); it never calls process.exit.
 */
import { COMMANDS, findCommand, type CommandEntry } from './commands/index.js';
import { CliError, Ctx, ExitCode, PROGRAM, oneLine, type CliIO } from './lib/context.js';
import { GetoptError } from './lib/getopt.js';

export const VERSION = '0.1.0';

const PARAMETERS = `Command parameters:
  'filename' is a disk image filename, a json:{...} pseudo-filename, or with --image-opts an option
    string such as 'driver=qcow2,file.driver=file,file.filename=disk.qcow2' (a comma in a value is ',,')
  'fmt' is the disk image format. It is guessed automatically in most cases
  'cache' is the cache mode used to write the output disk image, the valid
    options are: 'none', 'writeback' (default, except for convert), 'writethrough',
    'directsync' and 'unsafe' (default for convert)
  'size' is the disk image size in bytes. Optional suffixes
    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),
    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are
    supported. 'b' is ignored.
  'options' is a comma separated list of format specific options in a
    name=value format. Use -o help for an overview of the options supported by
    the used format
  '-p' show progress of command (only certain commands)
  '-q' use Quiet mode - do not print any output (except errors)
  '--output' takes the format in which the output must be done (human or json)
  '-U' opens images read-only without locking them (force-share)

Exit codes follow qemu-img's; errors are printed as one line '${PROGRAM}: <message>'.
'${PROGRAM} <command> --help' describes one command.`;

async function supportedFormats(): Promise<string> {
  try {
    const { loadDrivers, missingDrivers } = await import('./lib/drivers.js');
    const drivers = await loadDrivers();
    return drivers
      .filter((d) => !missingDrivers.has(d.name))
      .map((d) => d.name)
      .sort()
      .join(' ');
  } catch (e) {
    return `(drivers could not be loaded: ${(e as Error).message})`;
  }
}

async function globalHelp(ctx: Ctx): Promise<void> {
  const lines = [
    `${PROGRAM} version ${VERSION} (qemu-img 7.2 compatible)`,
    `usage: ${PROGRAM} [standard options] command [command options]`,
    'QEMU-compatible disk image utility (blockgraph)',
    '',
    "    '-h', '--help'       display this help and exit",
    "    '-V', '--version'    output version information and exit",
    '',
    'Command syntax:',
    ...COMMANDS.map((c) => `  ${c.synopsis}`),
    '',
    PARAMETERS,
    '',
    `Supported formats: ${await supportedFormats()}`,
    '',
  ];
  ctx.out(lines.join('\n'));
}

function commandHelp(ctx: Ctx, c: CommandEntry): void {
  ctx.out(`usage: ${PROGRAM} ${c.synopsis}\n\n${c.summary}\n${c.details ? `\n${c.details}\n` : ''}\nSee '${PROGRAM} --help' for the common parameters.\n`);
}

function defaultIO(): CliIO {
  return { stdout: process.stdout, stderr: process.stderr, env: process.env };
}

/**
 * Run `blockgraph` with `argv` (without the program name). Resolves to the exit code.
 */
export async function main(argv: readonly string[], io: Partial<CliIO> = {}): Promise<number> {
  const d = defaultIO();
  const ctx = new Ctx({ stdout: io.stdout ?? d.stdout, stderr: io.stderr ?? d.stderr, env: io.env ?? d.env });
  const args = [...argv];
  // Standard options before the command.
  while (args.length && args[0]!.startsWith('-')) {
    const a = args.shift()!;
    if (a === '-h' || a === '--help' || a === '-?') {
      await globalHelp(ctx);
      return 0;
    }
    if (a === '-V' || a === '--version') {
      ctx.out(`${PROGRAM} version ${VERSION} (qemu-img 7.2 compatible)\n`);
      return 0;
    }
    ctx.error(`unrecognized option '${a}'`);
    return 1;
  }
  const name = args.shift();
  if (name === undefined) {
    ctx.error('Not enough arguments');
    return 1;
  }
  if (name === 'help') {
    await globalHelp(ctx);
    return 0;
  }
  const cmd = findCommand(name);
  if (!cmd) {
    ctx.error(`Command not found: ${name}`);
    return 1;
  }
  if (wantsHelp(name, args)) {
    commandHelp(ctx, cmd);
    return 0;
  }
  try {
    const mod = await cmd.load();
    return await mod.run(ctx, args);
  } catch (e) {
    return reportError(ctx, e);
  }
}

/** `--help` / `-h` among the arguments (for io, not as the text of a -c command). */
function wantsHelp(name: string, args: readonly string[]): boolean {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (name === 'io' && (a === '-c' || a === '--cmd')) {
      i++;
      continue;
    }
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

export function reportError(ctx: Ctx, e: unknown): number {
  if (e instanceof ExitCode) return e.exitCode;
  if (e instanceof CliError) {
    ctx.error(e.message);
    return e.exitCode;
  }
  if (e instanceof GetoptError) {
    ctx.error(e.message);
    return 1;
  }
  const msg = e instanceof Error ? e.message : String(e);
  ctx.error(oneLine(msg));
  if (ctx.env.BLOCKGRAPH_DEBUG && e instanceof Error && e.stack) ctx.err(`${e.stack}\n`);
  return 1;
}
