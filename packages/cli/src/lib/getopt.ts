/**
 * GNU getopt_long, as qemu-img and qemu-io parse their arguments: short options cluster (`-pq`), take their
 * argument attached or separate (`-fraw`, `-f raw`), long options take `--opt=value` or `--opt value` and may
 * be abbreviated to a unique prefix (`--out=json`), options and operands mix freely (operands are permuted to
 * the end) and `--` ends option parsing.
 */

export interface LongOption {
  name: string;
  arg: 'none' | 'required' | 'optional';
  /** What the option reports as: a short option letter or a name of its own. */
  key: string;
}

export interface ParsedOption {
  key: string;
  value: string | undefined;
  /** The argument as written, for messages. */
  raw: string;
}

export class GetoptError extends Error {
  constructor(
    readonly kind: 'unrecognized' | 'missing' | 'ambiguous' | 'unexpected-arg',
    readonly option: string,
    message: string,
  ) {
    super(message);
  }
}

/** qemu-img's wording ("unrecognized option '-z'", "missing argument for option '-f'"). */
export const qemuImgWording = {
  unrecognized: (raw: string) => `unrecognized option '${raw}'`,
  missing: (raw: string) => `missing argument for option '${raw}'`,
};

export function getopt(
  argv: readonly string[],
  shortSpec: string,
  longOpts: readonly LongOption[] = [],
): { options: ParsedOption[]; operands: string[] } {
  const shorts = new Map<string, 'none' | 'required' | 'optional'>();
  for (let i = 0; i < shortSpec.length; i++) {
    const c = shortSpec[i]!;
    if (c === ':' || c === '+' || c === '-') continue;
    let kind: 'none' | 'required' | 'optional' = 'none';
    if (shortSpec[i + 1] === ':') {
      kind = shortSpec[i + 2] === ':' ? 'optional' : 'required';
      i += kind === 'optional' ? 2 : 1;
    }
    shorts.set(c, kind);
  }
  const posixly = shortSpec.startsWith('+');
  const options: ParsedOption[] = [];
  const operands: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = a.slice(2, eq >= 0 ? eq : undefined);
      let opt = longOpts.find((o) => o.name === name);
      if (!opt) {
        const cands = longOpts.filter((o) => o.name.startsWith(name));
        const distinct = new Set(cands.map((o) => `${o.key}/${o.arg}`));
        if (cands.length === 0 || name === '') throw new GetoptError('unrecognized', a, qemuImgWording.unrecognized(a));
        if (distinct.size > 1) throw new GetoptError('ambiguous', a, `option '${a}' is ambiguous`);
        opt = cands[0]!;
      }
      if (opt.arg === 'none') {
        if (eq >= 0) throw new GetoptError('unexpected-arg', a, `option '--${opt.name}' doesn't allow an argument`);
        options.push({ key: opt.key, value: undefined, raw: a });
      } else if (eq >= 0) {
        options.push({ key: opt.key, value: a.slice(eq + 1), raw: a });
      } else if (opt.arg === 'required') {
        if (i + 1 >= argv.length) throw new GetoptError('missing', a, qemuImgWording.missing(a));
        options.push({ key: opt.key, value: argv[++i], raw: a });
      } else {
        options.push({ key: opt.key, value: undefined, raw: a });
      }
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        const c = a[j]!;
        const kind = shorts.get(c);
        if (kind === undefined) throw new GetoptError('unrecognized', `-${c}`, qemuImgWording.unrecognized(`-${c}`));
        if (kind === 'none') {
          options.push({ key: c, value: undefined, raw: `-${c}` });
          continue;
        }
        if (j + 1 < a.length) {
          options.push({ key: c, value: a.slice(j + 1), raw: `-${c}` });
        } else if (kind === 'required') {
          if (i + 1 >= argv.length) throw new GetoptError('missing', `-${c}`, qemuImgWording.missing(`-${c}`));
          options.push({ key: c, value: argv[++i], raw: `-${c}` });
        } else {
          options.push({ key: c, value: undefined, raw: `-${c}` });
        }
        break;
      }
      continue;
    }
    if (posixly) {
      operands.push(...argv.slice(i));
      break;
    }
    operands.push(a);
  }
  return { options, operands };
}
