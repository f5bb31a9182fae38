/**
 * Images in formats QEMU reads and blockgraph has no driver for. Probing would call them raw, and a write would
 * go over their headers: blockgraph refuses to open them unless `-f raw` asks for the raw bytes, and never
 * changes them.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { bg, describeWithQemu, must, tempDir } from './helpers.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

describeWithQemu('images in formats blockgraph does not read', ['qemu-img'], () => {
  for (const fmt of ['qcow', 'vmdk', 'vdi', 'qed', 'vpc', 'vhdx', 'parallels']) {
    it(`${fmt} made by qemu-img: refused by name when probed, untouched; -f raw opens the bytes`, async () => {
      const d = tempDir(`foreign-${fmt}`);
      cleanups.push(d.cleanup);
      const f = join(d.dir, `x.${fmt}`);
      must('qemu-img', 'create', '-q', '-f', fmt, f, '1M');
      const before = readFileSync(f);
      const message = `Image format '${fmt}' is not supported by blockgraph (use -f raw to open the file as raw data)`;
      const io = await bg('io', '-c', 'write -P 0x51 0 4k', f);
      expect(io.status).toBe(1);
      expect(io.stderr).toBe(`blockgraph: can't open device ${f}: ${message}\n`);
      for (const cmd of [['info'], ['resize', f, '+1M'], ['convert', '-O', 'raw', f, join(d.dir, 'out.raw')]]) {
        const r = await bg(...(cmd.length > 1 ? cmd : [...cmd, f]));
        expect(r.status, cmd.join(' ')).toBe(1);
        expect(r.stderr, cmd.join(' ')).toBe(`blockgraph: Could not open '${f}': ${message}\n`);
      }
      expect(readFileSync(f).equals(before)).toBe(true);
      const raw = await bg('info', '-f', 'raw', f);
      expect(raw.status).toBe(0);
      expect(raw.stdout).toContain('file format: raw');
    });
  }
});
