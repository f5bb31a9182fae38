/**
 * `info` opens an image for metadata inspection only (QEMU's BDRV_O_NO_IO, and its fix for CVE-2024-4467 in the
 * QEMU 7.2 packages): an external data file named in the image is not opened, so `info` works when it is missing
 * and never touches a file an untrusted image names; the checks only I/O needs are skipped. Each case runs the
 * same command with QEMU 7.2 and blockgraph and compares status, stdout and stderr.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, expectSameOutput, mustIn, qcow2Requirement, twin } from './helpers.js';

const need = qcow2Requirement();

const images = cachedSetup((d) => {
  const must = (cmd: string, ...args: string[]) => mustIn(d, cmd, ...args);
  // With its data file, 1 MiB written through it.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=df.raw', 'df.qcow2', '8M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 1 0 1M', 'df.qcow2');
  // The same kind of image whose data file is gone.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=gone.raw', 'gone.qcow2', '8M');
  renameSync(join(d, 'gone.raw'), join(d, 'moved.raw'));
  // Damaged headers: the external data file bit without a data file name, data-file-raw without a data file.
  for (const [name, at, value] of [['nodf.qcow2', 79, 0x04], ['raw-bit.qcow2', 95, 0x02]] as const) {
    must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', name, '8M');
    const bytes = readFileSync(join(d, name));
    bytes[at] = value;
    writeFileSync(join(d, name), bytes);
  }
  // Both: the external data file bit without a name, and a backing file name that cannot fit.
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'nodf-longname.qcow2', '8M');
  const bytes = readFileSync(join(d, 'nodf-longname.qcow2'));
  bytes[79] = 0x04;
  bytes.writeBigUInt64BE(4096n, 8);
  bytes.writeUInt32BE(1, 16);
  writeFileSync(join(d, 'nodf-longname.qcow2'), bytes);
});

const CASES: [string, string, string[]][] = [
  ['data file present', 'df.qcow2', []],
  ['data file present (json)', 'df.qcow2', ['--output=json']],
  ['data file missing: not opened', 'gone.qcow2', []],
  ['data file missing (json)', 'gone.qcow2', ['--output=json']],
  ['external data file bit without a name', 'nodf.qcow2', []],
  ['data-file-raw bit without a data file', 'raw-bit.qcow2', []],
];

describe('info inspects an image with an external data file without opening it', () => {
  for (const [name, image, extra] of CASES) {
    it(name, async (ctx) => {
      need(ctx);
      const t = await twin(images, (d) => ['info', ...extra, join(d, image)]);
      try {
        expectSameOutput(t);
        expect(t.b.status).toBe(0);
      } finally {
        t.cleanup();
      }
    });
  }

  // qcow2_do_open() deals with the data file before it reads the backing file name: an image opened for I/O is
  // refused for its data file, `info` (which skips the data file) for the name.
  for (const [cmd, message] of [
    ['check', "'data-file' is required for this image"],
    ['info', 'Backing file name too long'],
  ] as const) {
    it(`${cmd}: the data file is refused before the backing file name`, async (ctx) => {
      need(ctx);
      const t = await twin(images, (d) => [cmd, join(d, 'nodf-longname.qcow2')]);
      try {
        expectSameOutput(t);
        expect(t.b.stderr).toBe(`blockgraph: Could not open '$DIR/nodf-longname.qcow2': ${message}\n`);
      } finally {
        t.cleanup();
      }
    });
  }

  it('an image I/O is still refused without its data file', async (ctx) => {
    need(ctx);
    const t = await twin(images, (d) => ['convert', '-O', 'raw', join(d, 'gone.qcow2'), join(d, 'out.raw')]);
    try {
      expect(t.b.status).toBe(t.q.status);
      expect(t.b.status).toBe(1);
      // QEMU names the data file as the image stores it (opened relative to its working directory); blockgraph
      // resolves it against the image's directory, a documented difference, and says so in the name.
      expect(t.q.stderr).toMatch(/Could not open 'gone\.raw': No such file or directory/);
      expect(t.b.stderr).toBe(`blockgraph: Could not open '$DIR/gone.qcow2': Could not open '$DIR/gone.raw': No such file or directory\n`);
    } finally {
      t.cleanup();
    }
  });
});
