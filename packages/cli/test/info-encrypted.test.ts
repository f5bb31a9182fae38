/**
 * `info` describes encrypted qcow2 images as qemu-img does (a metadata-only open parses the LUKS header; no key
 * is needed and none is derived): "encrypted: yes" and the format-specific `encrypt` data. I/O on them is still
 * refused with a clear error (blockgraph implements no encryption).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cachedSetup, expectSameOutput, must, qcow2Requirement, run, twin } from './helpers.js';

const need = qcow2Requirement();

/** The crypto header extension's area offset (extension 0x0537be77), from the raw header. */
function cryptoAreaOffset(bytes: Buffer): number {
  let p = bytes.readUInt32BE(100); // header_length
  for (;;) {
    const type = bytes.readUInt32BE(p);
    const len = bytes.readUInt32BE(p + 4);
    if (type === 0x0537be77) return Number(bytes.readBigUInt64BE(p + 8));
    if (type === 0) throw new Error('no crypto header extension');
    p += 8 + Math.ceil(len / 8) * 8;
  }
}

/**
 * qemu-img create of a LUKS image. QEMU first times PBKDF2 on the thread's CPU clock and gives up with "Unable to
 * get accurate CPU usage" when one round measures 0 ms: that is QEMU's flake, retried. It hits a quarter of the
 * runs on an idle machine here, and more under load, so the attempts are many.
 */
function createLuks(path: string, options: string): void {
  const args = ['create', '-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=blockgraph', '-o', options, path, '8M'];
  for (let attempt = 1; ; attempt++) {
    const r = run('qemu-img', args);
    if (r.status === 0) return;
    if (attempt >= 30 || !r.stderr.includes('Unable to get accurate CPU usage')) {
      throw new Error(`qemu-img ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
    }
  }
}

const images = cachedSetup((d) => {
  createLuks(join(d, 'luks.qcow2'), 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10');
  createLuks(
    join(d, 'essiv.qcow2'),
    'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256',
  );
  // AES (crypt_method 1): qemu-img 7.2 no longer creates it; set the field of a plain image, as an old image has.
  for (const [name, compat] of [['aes.qcow2', '1.1'], ['aes-v2.qcow2', '0.10']]) {
    must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', `compat=${compat}`, join(d, name), '8M');
    const b = readFileSync(join(d, name));
    b.writeUInt32BE(1, 32);
    writeFileSync(join(d, name), b);
  }
  const bad = readFileSync(join(d, 'luks.qcow2'));
  bad.write('XXXX', cryptoAreaOffset(bad), 'latin1');
  writeFileSync(join(d, 'bad-luks.qcow2'), bad);
});

const CASES: [string, string[]][] = [
  ['luks.qcow2', []],
  ['luks.qcow2', ['--output=json']],
  ['essiv.qcow2', []],
  ['essiv.qcow2', ['--output=json']],
  ['aes.qcow2', []],
  ['aes.qcow2', ['--output=json']],
  ['aes-v2.qcow2', ['--output=json']],
  ['bad-luks.qcow2', []],
];

describe('info on encrypted qcow2 images', () => {
  for (const [image, extra] of CASES) {
    it(`${image} ${extra.join(' ')}`, async (ctx) => {
      need(ctx);
      const t = await twin(images, (d) => ['info', ...extra, join(d, image)]);
      try {
        expectSameOutput(t);
        if (image === 'bad-luks.qcow2') expect(t.b.stderr).toContain('Volume is not in LUKS format');
        else expect(t.b.stdout).toMatch(/encrypted/);
      } finally {
        t.cleanup();
      }
    });
  }

  it('I/O on an encrypted image is refused, clearly', async (ctx) => {
    need(ctx);
    const t = await twin(images, (d) => ['convert', '-O', 'raw', join(d, 'luks.qcow2'), join(d, 'out.raw')]);
    try {
      expect(t.q.status).toBe(1);
      expect(t.b.status).toBe(1);
      expect(t.b.stderr).toBe("blockgraph: Could not open '$DIR/luks.qcow2': qcow2: encrypted images are not supported\n");
    } finally {
      t.cleanup();
    }
  });
});
