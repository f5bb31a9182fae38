/** blockgraph bench against qemu-img bench: the same output lines (timing normalised), exit codes, written data. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { describeWithQemu, expectSameOutput, must, normaliseStderr, twin, type Twin } from './helpers.js';

let t: Twin | undefined;
afterEach(() => {
  t?.cleanup();
  t = undefined;
});

const setup = (d: string) => must('qemu-img', 'create', '-q', '-f', 'raw', join(d, 'b.raw'), '16M');
const timing = (s: string) => s.replace(/Run completed in [0-9]+\.[0-9]{3} seconds\./g, 'Run completed in X seconds.');

const CASES: [string, string[]][] = [
  ['reads', ['-f', 'raw', '-c', '1000', '-d', '8']],
  ['reads, defaults', ['-f', 'raw', '-c', '500']],
  ['writes with pattern and step', ['-f', 'raw', '-w', '-c', '300', '-d', '4', '-s', '8k', '-S', '64k', '--pattern=0x5a']],
  ['writes wrapping at the end', ['-f', 'raw', '-w', '-c', '40', '-s', '1M', '-o', '10M', '--pattern=7']],
  ['flush interval', ['-f', 'raw', '-w', '-c', '200', '-d', '8', '--flush-interval=16', '-t', 'writeback']],
  ['flush interval without drain', ['-f', 'raw', '-w', '-c', '200', '-d', '8', '--flush-interval=16', '--no-drain', '--pattern=3']],
  ['-q', ['-q', '-f', 'raw', '-c', '100']],
  ['-t writethrough writes', ['-f', 'raw', '-w', '-c', '50', '-t', 'writethrough', '--pattern=9']],
  ['-U read', ['-U', '-f', 'raw', '-c', '100']],
];
const ERRORS: [string, string[]][] = [
  ['flush interval on reads', ['-f', 'raw', '--flush-interval=100']],
  ['flush interval below depth', ['-f', 'raw', '-w', '--flush-interval=4']],
  ['bad count', ['-c', 'x']],
  ['bad depth', ['-d', '-1']],
  ['bad cache', ['-t', 'foo']],
  ['bad size', ['-s', '1x']],
  ['bad pattern', ['--pattern=300']],
  ['bad aio', ['-i', 'foo']],
];

describeWithQemu('bench', ['qemu-img'], () => {
  for (const [name, args] of CASES) {
    it(name, async () => {
      t = await twin(setup, (d) => ['bench', ...args, join(d, 'b.raw')]);
      expect(timing(t.b.stdout)).toBe(timing(t.q.stdout));
      expect(t.b.status).toBe(t.q.status);
      expect(t.b.stderr).toBe(normaliseStderr(t.q.stderr));
      expect(readFileSync(join(t.bdir, 'b.raw')).equals(readFileSync(join(t.qdir, 'b.raw')))).toBe(true);
    });
  }
  for (const [name, args] of ERRORS) {
    it(`error: ${name}`, async () => {
      t = await twin(setup, (d) => ['bench', ...args, join(d, 'b.raw')]);
      expect(t.q.status).toBe(1);
      expectSameOutput(t);
    });
  }
});
