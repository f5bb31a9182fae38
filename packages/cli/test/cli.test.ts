/** The command itself: help, dispatch, bad arguments, and the real `blockgraph` bin spawned as a process. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COMMANDS } from '../src/index.js';
import { bg, bgSpawn, binCommand, describeWithQemu, must, run, tempDir } from './helpers.js';

describe('blockgraph (in-process)', () => {
  it('--help lists every subcommand and the formats, exit 0', async () => {
    const r = await bg('--help');
    expect(r.status).toBe(0);
    for (const c of COMMANDS) expect(r.stdout).toContain(`  ${c.synopsis}\n`);
    expect(r.stdout).toMatch(/Supported formats: .*\bfile\b.*\braw\b/);
    expect(r.stderr).toBe('');
  });
  it('SUBCOMMAND --help describes the subcommand', async () => {
    for (const c of COMMANDS) {
      const r = await bg(c.name, '--help');
      expect(r.status).toBe(0);
      expect(r.stdout).toContain(`usage: blockgraph ${c.synopsis}\n`);
      expect(r.stdout).toContain(c.summary);
    }
  });
  it('--version', async () => {
    const r = await bg('--version');
    expect(r).toMatchObject({ status: 0, stdout: expect.stringMatching(/^blockgraph version \d+\.\d+\.\d+/) });
  });
  it('no command, unknown command, unknown global option: one line, exit 1', async () => {
    expect(await bg()).toEqual({ status: 1, stdout: '', stderr: 'blockgraph: Not enough arguments\n' });
    expect(await bg('bogus')).toEqual({ status: 1, stdout: '', stderr: 'blockgraph: Command not found: bogus\n' });
    expect(await bg('--bogus')).toEqual({ status: 1, stdout: '', stderr: "blockgraph: unrecognized option '--bogus'\n" });
  });
  it('every subcommand rejects an unknown option with one line and exit 1', async () => {
    for (const c of COMMANDS) {
      const r = await bg(c.name, '--no-such-option', 'x.raw', '1M');
      expect(r.status, c.name).toBe(1);
      expect(r.stdout, c.name).toBe('');
      expect(r.stderr, c.name).toBe("blockgraph: unrecognized option '--no-such-option'\n");
    }
  });
  it('a missing image: one line, the right exit code, nothing created', async () => {
    const t = tempDir('missing');
    try {
      const f = join(t.dir, 'nope.raw');
      const cases: [string[], number][] = [
        [['info', f], 1],
        [['map', f], 1],
        [['check', f], 1],
        [['compare', f, f], 2],
        [['convert', f, join(t.dir, 'out.raw')], 1],
        [['resize', f, '1M'], 1],
        [['measure', f], 1],
        [['snapshot', '-l', f], 1],
        [['rebase', '-u', '-b', 'x', f], 1],
        [['amend', '-o', 'size=1M', f], 1],
        [['bench', '-c', '1', f], 1],
        [['io', '-c', 'read 0 1', f], 1],
      ];
      for (const [args, code] of cases) {
        const r = await bg(...args);
        expect(r.status, args.join(' ')).toBe(code);
        expect(r.stderr.split('\n').filter(Boolean), args.join(' ')).toHaveLength(1);
        expect(r.stderr, args.join(' ')).toMatch(/^blockgraph: .*nope\.raw.*No such file or directory\n$/);
      }
      const { readdirSync } = await import('node:fs');
      expect(readdirSync(t.dir)).toEqual([]);
    } finally {
      t.cleanup();
    }
  });
});

describe('optional drivers (BLOCKGRAPH_WITHOUT simulates a minimal install)', () => {
  it('qcow2 images are recognised even without the qcow2 driver (never mistaken for raw)', () => {
    const t = tempDir('noqcow2');
    try {
      const f = join(t.dir, 'x.qcow2');
      // The qcow2 magic and version: enough for probing.
      const head = new Uint8Array(512);
      head.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
      writeFileSync(f, head);
      const env = { BLOCKGRAPH_WITHOUT: '@blockgraph/driver-qcow2' };
      const r = bgSpawn(['info', f], { env });
      expect(r.status).toBe(1);
      expect(r.stderr).toBe(
        `blockgraph: Could not open '${f}': Format 'qcow2' is not supported here: the driver package @blockgraph/driver-qcow2 is not installed\n`,
      );
      const c = bgSpawn(['create', '-f', 'qcow2', join(t.dir, 'new.qcow2'), '1M'], { env });
      expect(c.status).toBe(1);
      expect(c.stderr).toMatch(/Format 'qcow2' is not supported here/);
    } finally {
      t.cleanup();
    }
  });
  it('io -C explains when the copy-on-read filter is not installed', () => {
    const t = tempDir('nocor');
    try {
      const f = join(t.dir, 'a.raw');
      writeFileSync(f, new Uint8Array(4096));
      const r = bgSpawn(['io', '-C', '-f', 'raw', '-c', 'read 0 512', f], { env: { BLOCKGRAPH_WITHOUT: '@blockgraph/filter-cor' } });
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/copy-on-read is not available/);
    } finally {
      t.cleanup();
    }
  });
});

describeWithQemu('the blockgraph bin (spawned)', ['qemu-img'], () => {
  const t = tempDir('spawn');
  beforeAll(() => {
    must('qemu-img', 'create', '-q', '-f', 'raw', t.path('a.raw'), '2M');
    must('qemu-io', '-f', 'raw', '-c', 'write -P 1 0 64k', t.path('a.raw'));
    must('qemu-img', 'create', '-q', '-f', 'raw', t.path('b.raw'), '2M');
  });
  afterAll(() => t.cleanup());

  it(`runs (${binCommand().kind} build) and matches qemu-img's info output`, () => {
    const b = bgSpawn(['info', '--output=json', 'a.raw'], { cwd: t.dir });
    const q = run('qemu-img', ['info', '--output=json', 'a.raw'], { cwd: t.dir });
    expect(b).toEqual(q);
  });
  it('exit codes: check 63, compare 1 and 2, io 1', () => {
    expect(bgSpawn(['check', 'a.raw'], { cwd: t.dir }).status).toBe(63);
    const c = bgSpawn(['compare', 'a.raw', 'b.raw'], { cwd: t.dir });
    expect(c).toEqual({ status: 1, stdout: 'Content mismatch at offset 0!\n', stderr: '' });
    expect(bgSpawn(['compare', 'a.raw', 'nope.raw'], { cwd: t.dir }).status).toBe(2);
    expect(bgSpawn(['io', '-f', 'raw', '-c', 'read -P 9 0 512', 'a.raw'], { cwd: t.dir }).status).toBe(1);
  });
  it('progress with -p on a pipe, as qemu-img prints it', () => {
    const b = bgSpawn(['convert', '-p', '-O', 'raw', 'a.raw', 'c.raw'], { cwd: t.dir });
    const q = run('qemu-img', ['convert', '-p', '-O', 'raw', 'a.raw', 'd.raw'], { cwd: t.dir });
    expect(b).toEqual(q);
  });
  it('no progress without -p when stdout is not a terminal', () => {
    const b = bgSpawn(['convert', '-O', 'raw', 'a.raw', 'e.raw'], { cwd: t.dir });
    expect(b).toEqual({ status: 0, stdout: '', stderr: '' });
  });
  it('a closed stdout pipe ends quietly', () => {
    const b = binCommand();
    const r = run('sh', ['-c', `${[b.cmd, ...b.args].map((a) => `'${a}'`).join(' ')} --help | head -1`], { cwd: t.dir });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^blockgraph version/);
    expect(r.stderr).toBe('');
  });
});

describe('progress', () => {
  it('draws a bar on a terminal without -p, and erases it', async () => {
    const t = tempDir('tty');
    try {
      const src = join(t.dir, 'a.raw');
      writeFileSync(src, new Uint8Array(4 << 20).fill(1));
      let stdout = '';
      const { main } = await import('../src/index.js');
      const status = await main(['convert', '-f', 'raw', '-O', 'raw', src, join(t.dir, 'b.raw')], {
        stdout: { write: (s: string) => (stdout += s), isTTY: true, columns: 80 },
        stderr: { write: () => true, isTTY: true },
        env: {},
      });
      expect(status).toBe(0);
      expect(stdout).toMatch(/\r\[#+\.*\] +100\.00%/);
      expect(stdout.endsWith('\r')).toBe(true);
      expect(stdout).not.toContain('\n');
    } finally {
      t.cleanup();
    }
  });
  it("-p prints qemu-img's lines even on a terminal", async () => {
    const t = tempDir('tty2');
    try {
      const src = join(t.dir, 'a.raw');
      writeFileSync(src, new Uint8Array(1 << 20).fill(1));
      let stdout = '';
      const { main } = await import('../src/index.js');
      await main(['convert', '-p', '-f', 'raw', '-O', 'raw', src, join(t.dir, 'b.raw')], {
        stdout: { write: (s: string) => (stdout += s), isTTY: true },
        stderr: { write: () => true },
        env: {},
      });
      expect(stdout).toBe('    (0.00/100%)\r    (100.00/100%)\r    (100.00/100%)\r\n');
    } finally {
      t.cleanup();
    }
  });
});
