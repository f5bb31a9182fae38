/** Where a command writes, and how it fails. */

export interface OutStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface CliIO {
  stdout: OutStream;
  stderr: OutStream;
  /** Environment (defaults to process.env). */
  env?: Record<string, string | undefined>;
}

export const PROGRAM = 'blockgraph';

/**
 * A failure with qemu-img's exit code. The message is printed as one line `blockgraph: <message>`; `usage`
 * marks argument errors (qemu-img adds "Try 'qemu-img --help'"; we keep one line and point at --help in the
 * README instead).
 */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
    readonly usage = false,
  ) {
    super(message);
  }
}

/** The command finished with this exit code and has printed everything it wanted to. */
export class ExitCode extends Error {
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

export class Ctx {
  readonly stdout: OutStream;
  readonly stderr: OutStream;
  readonly env: Record<string, string | undefined>;

  constructor(io: CliIO) {
    this.stdout = io.stdout;
    this.stderr = io.stderr;
    this.env = io.env ?? {};
  }

  out(text: string): void {
    this.stdout.write(text);
  }

  /** One error line: "blockgraph: <message>" (multi-line messages are joined into one line). */
  error(message: string): void {
    this.stderr.write(`${PROGRAM}: ${oneLine(message)}\n`);
  }

  /**
   * The lines a driver reported on its own before failing (QEMU's error_report() ahead of the caller's message:
   * `reported` on the error), one error line each; they come first, as in QEMU.
   */
  errorReported(e: unknown): void {
    for (const line of (e as { reported?: string[] } | null)?.reported ?? []) this.error(line);
  }

  warn(message: string): void {
    this.stderr.write(`${PROGRAM}: warning: ${oneLine(message)}\n`);
  }

  /** Raw stderr text (qemu-io's and check's own stderr lines). */
  err(text: string): void {
    this.stderr.write(text);
  }

  get stdoutIsTTY(): boolean {
    return this.stdout.isTTY === true;
  }
}

export function oneLine(message: string): string {
  // Only line breaks go: qemu's messages keep their own trailing blanks ("Invalid option list: " for -o '').
  return message.replace(/\s*\n\s*$/, '').replace(/\s*\n\s*/g, ' ');
}

export function usageError(message: string): CliError {
  return new CliError(message, 1, true);
}
