import { existsSync } from 'node:fs';
import { afterAll, expect, it } from 'vitest';
import { bg, describeWithQemu, qemuImg, qemuIo, tempDir } from './helpers.js';

describeWithQemu('blockgraph mirror', ['qemu-img', 'qemu-io'], () => {
  const t = tempDir('bg-mirror');
  afterAll(() => t.cleanup());

  const source = (name: string, fmt: 'raw' | 'qcow2'): string => {
    const p = t.path(name);
    expect(qemuImg('create', '-f', fmt, p, '16M').status).toBe(0);
    expect(qemuIo('-f', fmt, '-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x22 8M 64k', '-c', 'write -z 12M 1M', p).status).toBe(0);
    return p;
  };

  for (const mode of ['background', 'write-blocking', 'read-write-blocking']) {
    it(`copies a raw image into a new raw image (${mode}); qemu-img compare says identical`, async () => {
      const src = source(`src-${mode}.raw`, 'raw');
      const dst = t.path(`dst-${mode}.raw`);
      const r = await bg('mirror', '--copy-mode', mode, src, dst);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toContain("Formatting '");
      expect(r.stdout.match(/Job 'mirror' is \w+/g)).toEqual(
        ['created', 'running', 'ready', 'waiting', 'pending', 'concluded', 'null'].map((s) => `Job 'mirror' is ${s}`),
      );
      const cmp = qemuImg('compare', '-f', 'raw', '-F', 'raw', src, dst);
      expect(cmp.stdout.trim()).toBe('Images are identical.');
      expect(cmp.status).toBe(0);
    });
  }

  it('mirrors into an existing target with -n, prints progress with -p, honours speed and granularity', async () => {
    const src = source('src-n.raw', 'raw');
    const dst = t.path('dst-n.raw');
    expect(qemuImg('create', '-f', 'raw', dst, '16M').status).toBe(0);
    expect(qemuIo('-f', 'raw', '-c', 'write -P 0x77 0 16M', dst).status).toBe(0);
    const r = await bg('mirror', '-n', '-p', '--speed', '64M', '--granularity', '8192', '--buf-size', '1M', src, dst);
    expect(r.status).toBe(0);
    expect(r.stdout).not.toContain('Formatting');
    expect(r.stdout).toContain('(100.00/100%)');
    expect(qemuImg('compare', '-f', 'raw', '-F', 'raw', src, dst).status).toBe(0);
  });

  it('refuses bad arguments with one line and creates nothing', async () => {
    const src = source('src-bad.raw', 'raw');
    const dst = t.path('never.raw');
    const cases: [string[], RegExp][] = [
      [['mirror', '--sync', 'bogus', src, dst], /^blockgraph: Invalid sync mode 'bogus'/],
      [['mirror', '--copy-mode', 'fast', src, dst], /^blockgraph: Invalid copy mode 'fast'/],
      [['mirror', '--granularity', '1000', src, dst], /^blockgraph: Parameter 'granularity' expects a power of 2/],
      [['mirror', src], /^blockgraph: Expecting a source and a target file name/],
      [['mirror', t.path('missing.raw'), dst], /^blockgraph: Could not open '.*missing.raw'/],
      [['mirror', '--bogus', src, dst], /^blockgraph: (unrecognized|invalid) option/],
    ];
    for (const [argv, msg] of cases) {
      const r = await bg(...argv);
      expect(r.status, argv.join(' ')).toBe(1);
      expect(r.stderr.trim().split('\n')[0], argv.join(' ')).toMatch(msg);
      if (!argv.includes('--granularity')) expect(existsSync(dst), argv.join(' ')).toBe(false);
    }
  });
});
