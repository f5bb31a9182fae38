/**
 * Progress output. With -p: qemu-img's own lines, "    (12.34/100%)\r" on stdout, printed whenever the value
 * moved by more than `minSkip` percent (util/qemu-progress.c, single-precision arithmetic included), and a
 * final "\n". Without -p but with stdout on a terminal: a bar on the terminal, erased when done. Otherwise
 * nothing.
 */
import type { Ctx } from './context.js';
import { fixed } from './printf.js';

export interface Progress {
  /** qemu_progress_print(delta, max). */
  print(delta: number, max: number): void;
  end(): void;
}

const f32 = Math.fround;

class QemuProgress implements Progress {
  private current = 0;
  private lastPrint = 0;

  constructor(
    private readonly render: (current: number) => void,
    private readonly finish: () => void,
    private readonly minSkip: number,
  ) {}

  print(delta: number, max: number): void {
    let current = max === 0 ? f32(delta) : f32(this.current + f32(f32(delta / 100) * max));
    if (current > 100) current = 100;
    this.current = current;
    if (current > f32(this.lastPrint + this.minSkip) || current < f32(this.lastPrint - this.minSkip) || current === 0 || current === 100) {
      this.lastPrint = current;
      this.render(current);
    }
  }

  end(): void {
    this.finish();
  }
}

const NONE: Progress = { print() {}, end() {} };

/** "%4.2f" of a float (promoted to double, exact rounding). */
function percent(v: number): string {
  return fixed(v, 2);
}

export function createProgress(ctx: Ctx, enabled: boolean, minSkip: number): Progress {
  if (enabled) {
    return new QemuProgress(
      (cur) => ctx.out(`    (${percent(cur)}/100%)\r`),
      () => ctx.out('\n'),
      minSkip,
    );
  }
  if (ctx.stdoutIsTTY) {
    const width = Math.max(10, Math.min(50, (ctx.stdout.columns ?? 80) - 20));
    let drawn = false;
    return new QemuProgress(
      (cur) => {
        const filled = Math.round((cur / 100) * width);
        ctx.out(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${percent(cur).padStart(6)}%`);
        drawn = true;
      },
      () => {
        if (drawn) ctx.out(`\r${' '.repeat(width + 10)}\r`);
      },
      minSkip,
    );
  }
  return NONE;
}
