/**
 * QEMU's option strings (QemuOpts): `key=value,key2=value2`, a comma inside a value written as `,,`. Used by
 * `-o` (create/convert/amend options) and `--image-opts` (`driver=qcow2,file.driver=file,file.filename=x`).
 */
import { CliError } from './context.js';

export interface OptEntry {
  key: string;
  value: string;
  /** The element as written when it was a bare `flag` / `noflag` (QEMU's deprecated short-form boolean). */
  shortForm?: string;
}

/** Split an option string. `implied` names the key of a first element without '=' (QEMU's implied_opt_name). */
export function parseQemuOpts(text: string, implied?: string): OptEntry[] {
  const out: OptEntry[] = [];
  let i = 0;
  let first = true;
  while (i < text.length) {
    // Read up to an unescaped ',' (or '=' for the key).
    const readUntil = (stopAtEq: boolean): string => {
      let s = '';
      while (i < text.length) {
        const c = text[i]!;
        if (c === ',') {
          if (text[i + 1] === ',') {
            s += ',';
            i += 2;
            continue;
          }
          break;
        }
        if (stopAtEq && c === '=') break;
        s += c;
        i++;
      }
      return s;
    };
    const start = i;
    let key = readUntil(true);
    let value: string;
    let shortForm: string | undefined;
    if (text[i] === '=') {
      i++;
      value = readUntil(false);
    } else if (first && implied) {
      value = key;
      key = implied;
    } else {
      // "flag" means flag=on, "noflag" flag=off (QEMU's legacy boolean shorthand).
      shortForm = key;
      if (key.startsWith('no') && key.length > 2) {
        value = 'off';
        key = key.slice(2);
      } else {
        value = 'on';
      }
    }
    if (text[i] === ',') i++;
    if (key === '' && i > start) throw new CliError(`Invalid parameter ''`);
    out.push(shortForm !== undefined ? { key, value, shortForm } : { key, value });
    first = false;
  }
  return out;
}

/** qemu-img's is_valid_option_list(): not empty, not starting with ',', no unpaired trailing ','. */
export function isValidOptionList(text: string): boolean {
  if (text === '' || text.startsWith(',')) return false;
  let n = 0;
  for (let i = text.length; i > 0 && text[i - 1] === ','; i--) n++;
  return n % 2 === 0;
}

/** has_help_option(): an element that is exactly "help" or "?". */
export function hasHelpOption(text: string): boolean {
  return splitElements(text).some((e) => e === 'help' || e === '?');
}

/** The comma-separated elements of an option string, with ",," unescaped. */
export function splitElements(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === ',') {
      if (text[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      out.push(cur);
      cur = '';
      continue;
    }
    cur += c;
  }
  out.push(cur);
  return out;
}

/** Flat dotted entries → one object (later keys win), values stay strings. */
export function optsToObject(entries: readonly OptEntry[]): Record<string, string> {
  const o: Record<string, string> = {};
  for (const e of entries) o[e.key] = e.value;
  return o;
}
