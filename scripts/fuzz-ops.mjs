#!/usr/bin/env node
// fuzz-ops.mjs — differential fuzzer: blockgraph CLI vs QEMU 7.2 qemu-img/qemu-io on qcow2 images.
//
// Each case (fully determined by its seed, PRNG = mulberry32):
//   1. builds a random qcow2 configuration (compat, cluster_size 512..2M, refcount_bits, extended_l2,
//      lazy_refcounts, compression_type, preallocation, optional qcow2/raw backing [+ middle layer],
//      optional external data file) in <case>/tmpl with QEMU's tools only, then copies the directory
//      byte for byte (cp -a --sparse=always) to <case>/q (QEMU twin) and <case>/b (blockgraph twin);
//   2. applies 5-25 random steps (qemu-io batches, snapshot, resize, amend, rebase, commit, check,
//      convert, create, map, info, compare, measure, dd, deliberate damage) with identical arguments,
//      qemu-img/qemu-io running in q/, `blockgraph`/`blockgraph io` running in b/ (cwd = twin dir);
//   3. after every step compares exit status, stderr (program name and whitespace normalised),
//      stdout (paths, timings, dates, disk size, host offsets normalised) and then, with QEMU's tools,
//      the touched images of both twins: `qemu-img compare` (guest content), `check --output=json`
//      (minus image-end-offset/fragmentation), `map --output=json` without offsets, `info --output=json`.
//   The case stops at the first divergence; it is saved as /tmp/fuzz-ops/fail-<seed>.{json,log,sh}.
//   A QEMU timeout (per command 60 s) or crash (killed by a signal) ends the case quietly.
//
// Usage:
//   (env FUZZ_BG=/path/to/blockgraph.cjs tests another build, e.g. a copy of the tree made while it is quiet)
//   node scripts/fuzz-ops.mjs run --minutes M --workers W --seed S   random cases S, S+1, ...
//   node scripts/fuzz-ops.mjs seed N                                  one case, verbose
//   node scripts/fuzz-ops.mjs replay fail-N.json                      re-run the saved steps, verbose
//   node scripts/fuzz-ops.mjs minimize fail-N.json                    drop steps/ops while the same class
//                                                                     still diverges -> fail-N.min.{json,sh}
// Reading a report: `cls` is "<step label>: <what differed>" (rc, stderr, stdout, content:<file>,
// check:<file>, map:<file>, info:<file>, exists:<file>, bg-timeout). The .log file shows, for each step,
// both command lines with rc/stdout/stderr; the .sh file is a standalone shell reproducer
// (QEMU side in q/, blockgraph side in b/). `run` prints a summary grouped by class, also written to
// /tmp/fuzz-ops/summary.json. io batches touching bytes past the end are labelled "io(past-eof)".
import { spawnSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const BG = process.env.FUZZ_BG ?? fileURLToPath(new URL('../packages/cli/bin/blockgraph.cjs', import.meta.url)); // FUZZ_BG: CLI to test
const ROOT = '/tmp/fuzz-ops';
const TIMEOUT = 60_000;
const KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;

function mulberry32(a) {
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
class Rng {
  constructor(seed) { this.f = mulberry32(seed); }
  int(a, b) { return a + Math.floor(this.f() * (b - a + 1)); }
  pick(a) { return a[Math.floor(this.f() * a.length)]; }
  chance(p) { return this.f() < p; }
}

// ---------------------------------------------------------------- process helpers
function exec(cmd, args, cwd, timeout = TIMEOUT) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout, maxBuffer: 512 << 20 });
  return { rc: r.status, out: r.stdout ?? '', err: r.stderr ?? '', timedOut: r.error?.code === 'ETIMEDOUT' || (r.status === null && r.signal === 'SIGTERM') };
}
const qemuCmd = (s) => (s.tool === 'io' ? ['qemu-io', s.args] : ['qemu-img', s.args]);
const bgCmd = (s) => ['node', s.tool === 'io' ? [BG, 'io', ...s.args] : [BG, ...s.args]];
const shq = (s) => (/^[\w.,=/:+%@-]+$/.test(s) ? s : `'${String(s).replace(/'/g, `'\\''`)}'`);
const fmtCmd = ([c, a]) => [c === 'node' ? '$BG' : c, ...(c === 'node' ? a.slice(1) : a)].map((x) => (x === '$BG' ? x : shq(x))).join(' ');
const sizeStr = (r, n) => (n % MiB === 0 && r.chance(0.3) ? `${n / MiB}M` : n % KiB === 0 && r.chance(0.2) ? `${n / KiB}k` : String(n));
const al = (n, a) => Math.floor(n / a) * a;

// ---------------------------------------------------------------- case generation
function genCase(r) {
  const v3 = r.chance(0.75);
  const cs = 2 ** (r.chance(0.35) ? 16 : r.int(9, 21));
  const size = r.pick([1, 2, 5, 16, 64, 100, 512, 1024, 3072]) * MiB + (r.chance(0.2) ? r.int(1, 127) * 512 : 0);
  const o = [`compat=${v3 ? '1.1' : '0.10'}`, `cluster_size=${cs}`];
  if (v3 && r.chance(0.4)) o.push(`refcount_bits=${r.pick([1, 2, 4, 8, 32, 64])}`);
  if (v3 && cs >= 16384 && r.chance(0.3)) o.push('extended_l2=on');
  if (v3 && r.chance(0.25)) o.push('lazy_refcounts=on');
  if (v3 && r.chance(0.4)) o.push('compression_type=zstd');
  if (size / cs <= 65536 && r.chance(0.2)) o.push('preallocation=metadata');
  if (v3 && r.chance(0.15)) o.push('data_file=img.data', ...(r.chance(0.5) ? ['data_file_raw=on'] : []));
  const tmpl = [];
  const writes = (file, fmt, sz, n) => {
    const c = [];
    for (let i = 0; i < n; i++) {
      const len = r.pick([512, 4096, 65536, 200_000, 1 * MiB]), off = al(r.int(0, Math.max(0, Math.min(sz, 8 * MiB) - len)), 512);
      c.push('-c', `write -P 0x${r.int(1, 255).toString(16)} ${off} ${len}`);
    }
    if (n) tmpl.push({ tool: 'io', args: ['-f', fmt, ...c, file] });
  };
  let backing = null;
  if (r.chance(0.4)) {
    const fmt = r.pick(['qcow2', 'qcow2', 'raw']), bsize = al(size * r.pick([0.5, 1, 1, 2]), 512), name = `base.${fmt}`;
    tmpl.push({ tool: 'img', args: ['create', '-f', fmt, ...(fmt === 'qcow2' ? ['-o', `cluster_size=${2 ** r.int(12, 17)}`] : []), name, String(bsize)] });
    writes(name, fmt, bsize, r.int(1, 3));
    backing = [name, fmt];
    if (r.chance(0.3)) {
      tmpl.push({ tool: 'img', args: ['create', '-f', 'qcow2', '-b', name, '-F', fmt, 'mid.qcow2', String(size)] });
      writes('mid.qcow2', 'qcow2', size, r.int(1, 2));
      backing = ['mid.qcow2', 'qcow2'];
    }
  }
  tmpl.push({ tool: 'img', args: ['create', '-f', 'qcow2', '-o', o.join(','), ...(backing ? ['-b', backing[0], '-F', backing[1]] : []), 'img.qcow2', String(size)] });
  writes('img.qcow2', 'qcow2', size, r.int(0, 3));
  const s2 = al(size * r.pick([0.5, 1, 2]), 512);
  tmpl.push({ tool: 'img', args: ['create', '-f', 'qcow2', 'base2.qcow2', String(s2)] });
  writes('base2.qcow2', 'qcow2', s2, r.int(1, 2));
  const files = { 'img.qcow2': 'qcow2', 'base2.qcow2': 'qcow2' };
  for (const t of tmpl) if (t.args[0] === 'create') files[t.args.at(-2)] = t.args[2];
  return { tmpl, files, damage: r.chance(0.25) }; // only some cases damage the image: its follow-ups diverge a lot
}

function genRange(r, st, align) {
  const cs = st.cs, size = st.size, l2span = (cs * cs) / 8 / (st.extL2 ? 2 : 1);
  const where = r.pick(['low', 'low', 'low', 'l2', 'end', 'any']);
  let off = where === 'l2' && l2span < size ? l2span * r.int(1, 2) - r.int(0, 2) * cs
    : where === 'end' ? size - r.int(0, 4) * cs : where === 'any' ? r.int(0, size) : r.int(0, Math.min(size, 16 * cs, 8 * MiB));
  align ??= r.pick(['cluster', 'cluster', 'sector', 'byte']);
  const A = align === 'cluster' ? cs : align === 'sector' ? 512 : 1;
  off = al(Math.max(0, off), A);
  let len = align === 'cluster' ? cs * r.int(1, Math.max(1, Math.min(4, al(512 * KiB, cs) / cs))) : align === 'sector' ? 512 * r.int(1, 256) : r.int(1, 70000);
  if (!r.chance(0.05) && off + len > size) { off = al(Math.max(0, size - len), A); len = Math.min(len, size - off); }
  return [off, Math.max(len, 0)];
}

function genIo(r, st) {
  const cmds = []; let past = false;
  for (let i = r.int(1, 8); i > 0; i--) {
    const k = r.pick(['w', 'w', 'w', 'z', 'zu', 'zbig', 'c', 'c', 'd', 'd', 'aio', 'read', 'flush']);
    const [off, len] = k === 'zbig' ? [al(r.int(0, st.size), st.cs), st.cs * r.int(1, 64)] : genRange(r, st, k === 'c' ? (r.chance(0.9) ? 'cluster' : 'sector') : undefined);
    past ||= k !== 'flush' && off + len > st.size;
    const pat = `0x${r.int(0, 255).toString(16)}`;
    cmds.push({ w: `write -P ${pat} ${off} ${len}`, z: `write -z ${off} ${len}`, zbig: `write -z${r.chance(0.5) ? ' -u' : ''} ${off} ${len}`, zu: `write -z -u ${off} ${len}`,
      c: `write -c -P ${pat} ${off} ${len}`, d: `discard ${off} ${len}`, aio: `aio_write -P ${pat} ${off} ${len}`, read: `read -P ${pat} ${off} ${len}`, flush: 'flush' }[k]);
    if (k === 'aio') cmds.push('aio_flush'); // no overlapping in-flight requests
  }
  return { label: past ? 'io(past-eof)' : 'io', tool: 'io', args: [...(r.chance(0.5) ? ['-f', 'qcow2'] : []), ...cmds.flatMap((c) => ['-c', c]), 'img.qcow2'] };
}

function genCreateOpts(r) {
  const v3 = r.chance(0.7), cs = 2 ** r.int(9, 21), o = [`cluster_size=${cs}`];
  if (!v3) o.push('compat=0.10');
  if (v3 && r.chance(0.3)) o.push(`refcount_bits=${r.pick([1, 8, 64])}`);
  if (v3 && r.chance(cs >= 16384 ? 0.2 : 0.02)) o.push('extended_l2=on');
  if (r.chance(0.2)) o.push(`preallocation=${r.pick(['metadata', 'off'])}`);
  return o.join(',');
}

function genStep(r, st, queue) {
  const cs = st.cs, size = st.size, back = st.backing;
  const other = () => r.pick(Object.keys(st.files).filter((f) => f !== 'img.qcow2'));
  const kind = r.pick(['io', 'io', 'io', 'io', 'io', 'io', 'snapshot', 'snapshot', 'resize', 'resize', 'amend', 'amend', 'rebase', 'commit',
    'check', 'check', 'convert', 'convert', 'create', 'map', 'info', 'compare', 'measure', 'dd', ...(st.damage ? ['damage', 'damage'] : [])]);
  if (kind === 'io') return genIo(r, st);
  const img = (label, args, extra = {}) => ({ label, tool: 'img', args, ...extra });
  switch (kind) {
    case 'snapshot': {
      const sub = r.pick(['c', 'c', 'a', 'd', 'l']);
      const name = sub === 'c' ? `s${r.int(1, 3)}` : st.snaps.length && r.chance(0.8) ? r.pick(st.snaps) : 'nosuch';
      return img(`snapshot -${sub}`, ['snapshot', `-${sub}`, ...(sub === 'l' ? [] : [name]), 'img.qcow2']);
    }
    case 'resize': {
      const v = r.pick(['grow', 'grow', 'growpre', 'shrink', 'shrink', 'noshrink', 'odd']);
      const d = v === 'growpre' ? r.pick([512, cs, 1 * MiB, 3 * MiB]) : r.pick([512, 4096, cs, MiB, 100 * MiB, GiB, al(r.int(1, size), 512)]);
      const pre = v === 'growpre' ? [`--preallocation=${r.pick(['off', 'metadata', 'falloc', 'full'])}`] : [];
      const arg = v === 'shrink' ? (r.chance(0.5) ? `-${Math.min(d, al(size / 2, 512))}` : String(al(r.int(0, size), 512)))
        : v === 'noshrink' ? String(al(size / 2, 512)) : v === 'odd' ? String(size + r.int(1, 511)) : `+${d}`;
      return img(`resize ${v}`, ['resize', ...(r.chance(0.3) ? ['-f', 'qcow2'] : []), ...pre, ...(v === 'shrink' ? ['--shrink'] : []), 'img.qcow2', arg]);
    }
    case 'amend': {
      const opts = [];
      for (let i = r.int(1, 2); i > 0; i--) {
        const k = r.pick(['compat', 'compat', 'refcount_bits', 'refcount_bits', 'lazy_refcounts', 'size', 'backing', 'cluster_size']);
        if (k === 'refcount_bits' && cs >= 512 * KiB) continue; // QEMU takes minutes there
        opts.push(k === 'compat' ? `compat=${r.pick(['0.10', '1.1'])}` : k === 'refcount_bits' ? `refcount_bits=${r.pick([1, 2, 4, 8, 16, 32, 64])}`
          : k === 'lazy_refcounts' ? `lazy_refcounts=${r.pick(['on', 'off'])}` : k === 'size' ? `size=${r.chance(0.5) ? size + r.pick([512, cs, MiB]) : al(size / 2, 512)}`
          : k === 'backing' ? `backing_file=${back ?? 'base2.qcow2'},backing_fmt=${st.files[back] ?? 'qcow2'}` : `cluster_size=${cs * 2}`);
      }
      if (!opts.length) opts.push('lazy_refcounts=on');
      return img(`amend ${opts.map((o) => o.split('=')[0]).join('+')}`, ['amend', '-f', 'qcow2', '-o', opts.join(','), 'img.qcow2']);
    }
    case 'rebase': {
      const u = r.chance(0.5), tgt = r.pick(['', 'base2.qcow2', ...Object.keys(st.files).filter((f) => f.startsWith('base') || f.startsWith('mid'))]);
      const F = tgt && r.chance(0.9) ? ['-F', st.files[tgt]] : [];
      return img(`rebase${u ? ' -u' : ''}${tgt ? '' : ' none'}`, ['rebase', ...(u ? ['-u'] : []), '-b', tgt, ...F, 'img.qcow2'], { touchAll: true });
    }
    case 'commit': {
      const v = !back || r.chance(0.1) ? 'plain' : st.files['mid.qcow2'] && back === 'mid.qcow2' && r.chance(0.6) ? '-b' : r.pick(['plain', '-d']);
      const base = Object.keys(st.files).find((f) => f.startsWith('base.'));
      return img(`commit ${v}`, ['commit', ...(v === '-d' ? ['-d'] : v === '-b' ? ['-b', base] : []), 'img.qcow2'], { touchAll: true });
    }
    case 'check': {
      const rr = r.pick([[], [], ['-r', 'leaks'], ['-r', 'all']]);
      return img(`check ${rr.join(' ')}`.trim(), ['check', ...rr, ...(r.chance(0.4) ? ['--output=json'] : []), 'img.qcow2']);
    }
    case 'convert': {
      const fmt = r.pick(['qcow2', 'qcow2', 'raw']), out = `out${r.int(1, 2)}.${fmt}`, a = [], small = size <= 100 * MiB;
      if (r.chance(fmt === 'qcow2' ? 0.4 : 0.05)) a.push('-c');
      if (small && r.chance(0.2)) a.push('-S', r.pick(['0', '4k', '64k']));
      if (fmt === 'qcow2' && r.chance(0.2)) a.push('-B', 'base2.qcow2', '-F', 'qcow2');
      // Copy offloading and salvage mode (refused together, and -C with -c or -S, as qemu-img refuses them).
      if (r.chance(0.15)) a.push('-C');
      if (r.chance(0.1)) a.push('--salvage');
      if (fmt === 'qcow2' && r.chance(0.4)) a.push('-o', r.pick([`cluster_size=${2 ** r.int(9, 21)}`, 'compat=0.10', 'preallocation=metadata', 'compression_type=zstd', 'refcount_bits=1', 'extended_l2=on']));
      if (r.chance(0.25)) {
        // Not --target-is-zero with -B: qemu-img 7.2 refuses the pair but exits 0 (blockgraph exits 1), which ended
        // one case in 40 at that step.
        const targetIsZero = r.chance(0.5) && !a.includes('-B');
        a.push('-n', ...(targetIsZero ? ['--target-is-zero'] : []));
        const csize = r.chance(0.8) ? size : al(size / 2, 512);
        queue.push(img(`convert -n -O ${fmt}`, ['convert', ...a, '-O', fmt, 'img.qcow2', out], { outs: [[out, fmt]] }));
        return img(`create (for convert -n)`, ['create', '-f', fmt, ...(fmt === 'qcow2' ? ['-o', genCreateOpts(r)] : []), out, String(csize)], { outs: [[out, fmt]] });
      }
      return img(`convert -O ${fmt}${a.includes('-c') ? ' -c' : ''}`, ['convert', ...(r.chance(0.3) ? ['-f', 'qcow2'] : []), ...a, '-O', fmt, 'img.qcow2', out], { outs: [[out, fmt]] });
    }
    case 'create': {
      const ov = r.chance(0.5);
      return img(`create${ov ? ' -b' : ''}`, ['create', '-f', 'qcow2', '-o', genCreateOpts(r), ...(ov ? ['-b', 'img.qcow2', '-F', 'qcow2'] : []), 'new.qcow2', ...(ov && r.chance(0.5) ? [] : [sizeStr(r, al(r.int(1, 2 * size), 512))])], { outs: [['new.qcow2', 'qcow2']] });
    }
    case 'map': {
      const rng = r.chance(0.3) ? [`--start-offset=${al(r.int(0, size), r.pick([1, 512, cs]))}`, `--max-length=${r.int(1, size)}`] : [];
      return img('map', ['map', ...(r.chance(0.5) ? ['--output=json'] : []), ...rng, r.chance(0.8) ? 'img.qcow2' : other()]);
    }
    case 'info': return img('info', ['info', ...(r.chance(0.5) ? ['--output=json'] : []), ...(r.chance(0.4) ? ['--backing-chain'] : []), 'img.qcow2']);
    case 'compare': { const o = other(); return img('compare', ['compare', ...(r.chance(0.4) ? ['-f', 'qcow2', '-F', st.files[o]] : []), ...(r.chance(0.2) ? ['-s'] : []), 'img.qcow2', o]); }
    case 'measure':
      return r.chance(0.7) ? img('measure', ['measure', '-O', r.pick(['qcow2', 'qcow2', 'raw']), ...(r.chance(0.4) ? ['-o', genCreateOpts(r)] : []), ...(r.chance(0.5) ? ['--output=json'] : []), 'img.qcow2'])
        : img('measure --size', ['measure', '--size', sizeStr(r, al(r.int(1, 4 * GiB), 512)), '-O', 'qcow2', '-o', genCreateOpts(r)]);
    case 'dd': {
      const fmt = r.pick(['raw', 'qcow2']), bs = r.pick([512, 4096, 65536, 1000]);
      return img(`dd -O ${fmt}`, ['dd', '-f', 'qcow2', '-O', fmt, `bs=${bs}`, `count=${r.int(1, 64)}`, ...(r.chance(0.3) ? [`skip=${r.int(0, 16)}`] : []), 'if=img.qcow2', `of=dd.${fmt}`], { outs: [[`dd.${fmt}`, fmt]] });
    }
    case 'damage': {
      const d = { what: r.pick(['l2', 'l2', 'refblock', 'l1', 'corrupt', 'truncate']), idx: r.int(0, 40), bit: r.pick([0, 1, 9, 16, 30, 40, 62, 63, r.int(0, 63)]) };
      queue.push(r.chance(0.6) ? img('check after damage', ['check', ...r.pick([[], ['-r', 'all'], ['-r', 'leaks']]), 'img.qcow2']) : genIo(r, st));
      return { label: `damage ${d.what}`, tool: 'damage', damage: d, args: [] };
    }
  }
}

// ---------------------------------------------------------------- damage (same logical spot in each twin)
function applyDamage(dir, d, minSize) {
  const f = path.join(dir, 'img.qcow2'), fd = fs.openSync(f, 'r+');
  try {
    const h = Buffer.alloc(104); fs.readSync(fd, h, 0, 104, 0);
    const cs = 2 ** h.readUInt32BE(20), v3 = h.readUInt32BE(4) >= 3;
    const u64 = (off) => { const b = Buffer.alloc(8); fs.readSync(fd, b, 0, 8, off); return b.readBigUInt64BE(0); };
    const flip = (off, bit) => { const b = Buffer.alloc(1); fs.readSync(fd, b, 0, 1, off); const old = b[0]; b[0] ^= 1 << bit; fs.writeSync(fd, b, 0, 1, off); return { off, old, new: b[0] }; };
    const flip64 = (off, bit) => flip(off + 7 - (bit >> 3), bit & 7);
    const l1off = Number(u64(40)), l1n = h.readUInt32BE(36), ext = v3 && (Number(u64(72)) & 16) !== 0;
    if (d.what === 'l1') return l1n ? flip64(l1off + 8 * (d.idx % l1n), d.bit) : 'n/a';
    if (d.what === 'l2') {
      const l2s = []; for (let i = 0; i < Math.min(l1n, 4096); i++) { const e = Number(u64(l1off + 8 * i) & 0x00fffffffffffe00n); if (e) l2s.push(e); }
      if (!l2s.length) return 'n/a';
      const ents = cs / (ext ? 16 : 8);
      return flip64(l2s[d.idx % l2s.length] + (d.idx % ents) * (ext ? 16 : 8), d.bit);
    }
    if (d.what === 'refblock') {
      const rb = Number(u64(Number(u64(48))) & ~511n), bits = v3 ? 2 ** h.readUInt32BE(96) : 16;
      return rb ? flip(rb + Math.floor(((d.idx * 7) % (cs * 8 / bits)) * bits / 8), d.bit & 7) : 'n/a';
    }
    if (d.what === 'corrupt') return v3 ? flip(79, 1) : 'n/a';
    if (minSize < 0) return 'n/a (twins differ in layout)';
    const ns = Math.max(0, al(minSize - (d.idx % 4) * cs - (d.bit % 2) * 512, 512)); fs.ftruncateSync(fd, ns); return { truncate: ns };
  } finally { fs.closeSync(fd); }
}

// ---------------------------------------------------------------- normalisation + comparison
// Lines are compared as a sorted list: convert's workers report their failed reads in the order they fail.
const normErr = (s, dir) => s.replaceAll(dir, '<DIR>').replace(/(qemu-img|qemu-io|blockgraph): /g, '').replace(/Try '[^']*--help' for more information\.?/g, '')
  .split('\n').map((l) => l.replace(/\s+/g, ' ').trim()).filter(Boolean).sort().join(' ');
function normOut(step, s, dir) {
  s = s.replaceAll(dir, '<DIR>').replace(/^.*\bops; .*sec.*$/gm, '<timing>').replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, '<DATE>')
    .replace(/^disk size: .*\n/gm, '').replace(/^Image end offset: .*\n?/gm, '').replace(/[\d.]+% fragmented/g, 'X% fragmented');
  if (step.args[0] === 'map' && !s.trim().startsWith('[')) {
    const rows = []; // human map: merge rows whose guest ranges are contiguous in the same file, drop host offsets
    for (const l of s.split('\n').slice(1)) { const m = l.match(/^(0x[\da-f]+|\d+)\s+(0x[\da-f]+)\s+(0x[\da-f]+)\s+(.*)$/); if (!m) continue;
      const [st, len] = [Number(m[1]), Number(m[2])], p = rows.at(-1); if (p && p.f === m[4] && p.s + p.l === st) p.l += len; else rows.push({ s: st, l: len, f: m[4] }); }
    return JSON.stringify(rows);
  }
  if (/^\s*[[{]/.test(s)) { try { return JSON.stringify(normJson(JSON.parse(s), step.args[0])); } catch { /* not JSON after all: compare as text */ } }
  return s;
}
function normJson(j, cmd) {
  if (cmd === 'map' && Array.isArray(j)) return mergeMap(j);
  return JSON.parse(JSON.stringify(j, (k, v) => (['actual-size', 'image-end-offset', 'fragmented-clusters', 'date-sec', 'date-nsec', 'filename', 'check-errors-x'].includes(k) ? undefined : v)));
}
function mergeMap(j) {
  const out = [];
  for (const e of j) { const { offset: _offset, ...x } = e, p = out.at(-1);
    if (x.data) delete x.zero; // zero on a data extent = a hole in the host file (layout, not guest content)
    if (p && p.start + p.length === x.start && ['depth', 'present', 'zero', 'data'].every((k) => p[k] === x[k])) p.length += x.length; else out.push(x); }
  return out;
}
function qinfo(dir, file) { const r = exec('qemu-img', ['info', '--output=json', '-U', file], dir); try { return JSON.parse(r.out); } catch { return null; } }
function spec(dir, file, fmt) { // cross-dir compare: data files are resolved relative to cwd, so spell them out
  const i = qinfo(dir, file), df = i?.['format-specific']?.data?.['data-file'];
  if (!df || fmt !== 'qcow2') return null;
  const o = { driver: 'qcow2', file: { driver: 'file', filename: path.join(dir, file) }, 'data-file': { driver: 'file', filename: path.join(dir, df) } };
  if (i['backing-filename']) o.backing = { driver: i['backing-filename-format'] ?? 'qcow2', file: { driver: 'file', filename: path.join(dir, i['backing-filename']) } };
  return 'json:' + JSON.stringify(o);
}
function diffImages(files, qd, bd, failed) { // failed: the step failed, its outputs are only checked for existence
  for (const [f, fmt] of files) {
    const eq = fs.existsSync(path.join(qd, f)), eb = fs.existsSync(path.join(bd, f));
    if (eq !== eb) return { what: `exists:${f}`, qemu: eq, bg: eb };
    if (!eq || (failed && f !== 'img.qcow2')) continue;
    const sq = spec(qd, f, fmt), sb = spec(bd, f, fmt);
    const c = exec('qemu-img', ['compare', ...(sq ? [] : ['-f', fmt, '-F', fmt]), sq ?? path.join(qd, f), sb ?? path.join(bd, f)], '/');
    if (c.rc === 1) return { what: `content:${f}`, qemu: c.out, bg: c.err };
    if (fmt !== 'qcow2') continue;
    for (const [what, args] of [['check', ['check', '--output=json', '-f', fmt, f]], ['map', ['map', '--output=json', '-f', fmt, f]], ['info', ['info', '--output=json', '-U', f]]]) {
      if (what === 'info' && f !== 'img.qcow2') continue;
      const rq = exec('qemu-img', args, qd), rb = exec('qemu-img', args, bd);
      if (rq.timedOut || rb.timedOut) continue;
      const nq = normOut({ args }, rq.out, qd), nb = normOut({ args }, rb.out, bd);
      if (rq.rc !== rb.rc || nq !== nb || normErr(rq.err, qd) !== normErr(rb.err, bd)) return { what: `${what}:${f}`, qemu: `rc=${rq.rc} ${nq} ${rq.err}`, bg: `rc=${rb.rc} ${nb} ${rb.err}` };
    }
  }
  return null;
}

// ---------------------------------------------------------------- running a case
function runCase(seed, saved, verbose) {
  const r = new Rng(seed), log = [];
  const say = (s) => { log.push(s); if (verbose) console.log(s); };
  const cfg = saved?.config ?? genCase(r);
  const dir = path.join(ROOT, `case-${seed}`), td = path.join(dir, 'tmpl'), qd = path.join(dir, 'q'), bd = path.join(dir, 'b');
  fs.rmSync(dir, { recursive: true, force: true }); fs.mkdirSync(td, { recursive: true });
  const res = { seed, status: 'ok', steps: 0, labels: [], log };
  const done = () => { if (!process.env.FUZZ_KEEP) fs.rmSync(dir, { recursive: true, force: true }); return res; };
  say(`# case ${seed}`);
  for (const t of cfg.tmpl) {
    const x = exec(...qemuCmd(t), td); say(`tmpl: ${fmtCmd(qemuCmd(t))} -> rc=${x.rc} ${x.err.trim()}`);
    if (x.rc !== 0) { res.status = 'skip'; return done(); }
  }
  exec('cp', ['-a', '--sparse=always', td, qd]); exec('cp', ['-a', '--sparse=always', td, bd]);
  const st = { files: { ...cfg.files }, snaps: [], damage: cfg.damage };
  const update = () => {
    const i = qinfo(qd, 'img.qcow2'); if (!i) return;
    st.size = i['virtual-size']; st.cs = i['cluster-size'] ?? st.cs; st.backing = i['backing-filename'] ?? null;
    st.extL2 = !!i['format-specific']?.data?.['extended-l2']; st.snaps = (i.snapshots ?? []).map((s) => s.name);
  };
  update();
  const steps = saved?.steps ?? [], queue = [], n = saved ? steps.length : r.int(5, 25);
  for (let i = 0; i < n; i++) {
    const step = saved ? steps[i] : queue.shift() ?? genStep(r, st, queue);
    if (!saved) steps.push(step);
    res.steps++; res.labels.push(step.label);
    let rq, rb;
    if (step.tool === 'damage') {
      // truncation is only the same damage when the files are byte-identical; otherwise skip it on both
      const minSize = exec('cmp', ['-s', path.join(qd, 'img.qcow2'), path.join(bd, 'img.qcow2')], '/').rc === 0 ? fs.statSync(path.join(qd, 'img.qcow2')).size : -1;
      const aq = applyDamage(qd, step.damage, minSize), ab = applyDamage(bd, step.damage, minSize);
      step.applied = { q: aq, b: ab }; rq = rb = { rc: 0, out: '', err: '' };
      say(`[${i}] ${step.label} ${JSON.stringify(step.damage)} q=${JSON.stringify(aq)} b=${JSON.stringify(ab)}`);
    } else {
      rq = exec(...qemuCmd(step), qd); rb = exec(...bgCmd(step), bd);
      for (let t = 0; t < 3 && /is not installed|Cannot find module|ERR_MODULE_NOT_FOUND/.test(rb.err); t++) { // tree being rebuilt
        spawnSync('sleep', ['5']); rb = exec(...bgCmd(step), bd);
      }
      say(`[${i}] ${step.label}\n  Q$ ${fmtCmd(qemuCmd(step))}\n    rc=${rq.rc}${rq.timedOut ? ' TIMEOUT' : ''}\n${indent(rq.out, 'out')}${indent(rq.err, 'err')}`
        + `  B$ ${fmtCmd(bgCmd(step))}\n    rc=${rb.rc}${rb.timedOut ? ' TIMEOUT' : ''}\n${indent(rb.out, 'out')}${indent(rb.err, 'err')}`);
    }
    if (rq.timedOut) { res.status = 'qemu-timeout'; say('QEMU timed out: case ended'); return done(); }
    // A QEMU tool killed by a signal (an assertion, e.g. qcow2-cache.c "offset != 0") is QEMU's bug, not a divergence.
    if (rq.rc === null) { res.status = 'qemu-crash'; say('QEMU crashed: case ended'); return done(); }
    let div = rb.timedOut ? { what: 'bg-timeout' } : rq.rc !== rb.rc ? { what: 'rc', qemu: rq.rc, bg: rb.rc }
      : normErr(rq.err, qd) !== normErr(rb.err, bd) ? { what: 'stderr', qemu: normErr(rq.err, qd), bg: normErr(rb.err, bd) }
      : normOut(step, rq.out, qd) !== normOut(step, rb.out, bd) ? { what: 'stdout', qemu: normOut(step, rq.out, qd), bg: normOut(step, rb.out, bd) } : null;
    if (step.outs && rq.rc === 0) for (const [f, fmt] of step.outs) st.files[f] = fmt;
    div ??= diffImages(step.touchAll ? Object.entries(st.files) : [['img.qcow2', 'qcow2'], ...(step.outs ?? [])], qd, bd, rq.rc !== 0);
    if (div) {
      Object.assign(res, { status: 'diverge', cls: `${step.label}: ${div.what}`, stepIdx: i, div });
      say(`DIVERGENCE at step ${i} (${res.cls})\n  qemu: ${JSON.stringify(div.qemu)}\n  bg:   ${JSON.stringify(div.bg)}`);
      res.caseJson = { seed, cls: res.cls, config: cfg, steps: steps.slice(0, i + 1), divergence: { step: i, ...div } };
      return done();
    }
    update();
  }
  say(`ok: ${res.steps} steps`);
  return done();
}
const indent = (s, tag) => (s.trim() ? s.trimEnd().split('\n').map((l) => `    ${tag}| ${l}`).join('\n') + '\n' : '');

function toShell(c) {
  const L = ['#!/bin/sh', `# fuzz-ops reproducer, seed ${c.seed}: ${c.cls}`, `BG="node ${BG}"`, 'D=$(mktemp -d) && mkdir $D/q && cd $D/q'];
  for (const t of c.config.tmpl) L.push(fmtCmd(qemuCmd(t)));
  L.push('cd .. && cp -a --sparse=always q b');
  for (const s of c.steps) {
    if (s.tool === 'damage') {
      L.push(`# damage ${JSON.stringify(s.damage)} (same logical location in each twin)`);
      for (const [side, a] of Object.entries(s.applied ?? {})) L.push(a?.truncate !== undefined ? `truncate -s ${a.truncate} ${side}/img.qcow2`
        : a?.off !== undefined ? `printf '\\${a.new.toString(8).padStart(3, '0')}' | dd of=${side}/img.qcow2 bs=1 seek=${a.off} conv=notrunc status=none` : `# ${side}: n/a`);
    } else L.push(`echo "== QEMU"; (cd q && ${fmtCmd(qemuCmd(s))}); echo "rc=$?"`, `echo "== blockgraph"; (cd b && ${fmtCmd(bgCmd(s))}); echo "rc=$?"`);
  }
  L.push('qemu-img compare -f qcow2 -F qcow2 q/img.qcow2 b/img.qcow2', 'qemu-img check q/img.qcow2; qemu-img check b/img.qcow2');
  return L.join('\n') + '\n';
}
function saveFail(res, suffix = '') {
  const base = path.join(ROOT, `fail-${res.seed}${suffix}`);
  fs.writeFileSync(`${base}.json`, JSON.stringify(res.caseJson, null, 1));
  fs.writeFileSync(`${base}.log`, res.log.join('\n') + '\n');
  fs.writeFileSync(`${base}.sh`, toShell(res.caseJson));
  return base;
}

// ---------------------------------------------------------------- minimisation (greedy)
function minimize(file) {
  const c = JSON.parse(fs.readFileSync(file, 'utf8'));
  const clsOf = (cfg, steps) => { const r = runCase(c.seed, { config: cfg, steps: structuredClone(steps) }); return r.status === 'diverge' && r.stepIdx === steps.length - 1 ? r : null; };
  let cfg = c.config, steps = c.steps, best = clsOf(cfg, steps);
  if (!best) { console.log('does not reproduce'); return; }
  const cls = best.cls, same = (r) => r && r.cls.replace(/\(past-eof\)/, '') === cls.replace(/\(past-eof\)/, '');
  for (let i = steps.length - 2; i >= 0; i--) { const t = steps.filter((_, j) => j !== i), r = clsOf(cfg, t); if (same(r)) { steps = t; best = r; } }
  for (let i = 0; i < steps.length; i++) {
    if (steps[i].tool !== 'io') continue;
    for (let j = steps[i].args.length - 2; j >= 0; j--) {
      if (steps[i].args[j] !== '-c' || steps[i].args.filter((a) => a === '-c').length < 2) continue;
      const t = structuredClone(steps); t[i].args.splice(j, 2); const r = clsOf(cfg, t); if (same(r)) { steps = t; best = r; }
    }
  }
  for (let i = cfg.tmpl.length - 1; i >= 0; i--) {
    if (cfg.tmpl[i].tool !== 'io') continue;
    const t = { ...cfg, tmpl: cfg.tmpl.filter((_, j) => j !== i) }, r = clsOf(t, steps); if (same(r)) { cfg = t; best = r; }
  }
  const base = saveFail(best, '.min'); console.log(fs.readFileSync(`${base}.log`, 'utf8')); console.log(`minimized -> ${base}.{json,log,sh}`);
}

// ---------------------------------------------------------------- CLI
const argv = process.argv.slice(2), opt = (k, d) => { const i = argv.indexOf(`--${k}`); return i >= 0 ? Number(argv[i + 1]) : d; };
fs.mkdirSync(ROOT, { recursive: true });
if (argv[0] === 'seed' || argv[0] === 'replay') {
  const saved = argv[0] === 'replay' ? JSON.parse(fs.readFileSync(argv[1], 'utf8')) : null;
  const res = runCase(saved ? saved.seed : Number(argv[1]), saved, true);
  console.log(`status: ${res.status}${res.cls ? ` (${res.cls})` : ''}`);
  if (res.status === 'diverge' && !saved) console.log(`saved ${saveFail(res)}.{json,log,sh}`);
} else if (argv[0] === 'minimize') minimize(argv[1]);
else if (argv[0] === 'worker') { // internal: worker <firstSeed> <stride> <deadlineMs>
  const [, first, stride, deadline] = argv.map(Number);
  for (let s = first; Date.now() < deadline; s += stride) {
    const res = runCase(s, null, false);
    if (res.status === 'diverge') saveFail(res);
    process.stdout.write(JSON.stringify({ seed: s, status: res.status, cls: res.cls, steps: res.steps, labels: res.labels}) + '\n');
  }
} else if (argv[0] === 'run') {
  const minutes = opt('minutes', 10), W = Math.min(opt('workers', 1), 2), seed = opt('seed', 1), deadline = Date.now() + minutes * 60_000;
  const sum = { cmd: `node scripts/fuzz-ops.mjs run --minutes ${minutes} --workers ${W} --seed ${seed}`, cases: 0, steps: 0, status: {}, classes: {}, coverage: {} };
  let live = W;
  for (let k = 0; k < W; k++) {
    const ch = spawn(process.execPath, [fileURLToPath(import.meta.url), 'worker', String(seed + k), String(W), String(deadline)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let buf = '';
    ch.stdout.on('data', (d) => {
      buf += d; let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const m = JSON.parse(buf.slice(0, i)); buf = buf.slice(i + 1);
        sum.cases++; sum.steps += m.steps; sum.status[m.status] = (sum.status[m.status] ?? 0) + 1;
        for (const l of m.labels) sum.coverage[l] = (sum.coverage[l] ?? 0) + 1;
        if (m.cls) (sum.classes[m.cls] ??= []).push(m.seed);
        console.log(`[${new Date().toISOString().slice(11, 19)}] seed ${m.seed}: ${m.status}${m.cls ? ` — ${m.cls}` : ''} (${m.steps} steps; total ${sum.cases} cases)`);
        fs.writeFileSync(path.join(ROOT, 'summary.json'), JSON.stringify(sum, null, 1));
      }
    });
    ch.on('exit', () => { if (--live === 0) { console.log(JSON.stringify({ ...sum, coverage: undefined }, null, 1)); } });
  }
} else console.log('usage: fuzz-ops.mjs run --minutes M --workers W --seed S | seed N | replay case.json | minimize case.json');
