/** What BENCHMARKS.md records about the machine and the software. */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import process from 'node:process';

function sh(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : '';
}

export function machineInfo(dir) {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpu = m[1].trim();
  } catch {
    /* not Linux */
  }
  const mount = sh('findmnt', ['-no', 'SOURCE,FSTYPE', '-T', dir]) || 'unknown';
  const dev = mount.split(/\s+/)[0] ?? '';
  let disk = '';
  if (dev.startsWith('/dev/')) {
    const [name, size, rota, ...model] = sh('lsblk', ['-dno', 'NAME,SIZE,ROTA,MODEL', dev.replace(/[0-9]+$/, '').replace(/p$/, '')]).split(/\s+/);
    if (name) disk = `${name}, ${size}, ${rota === '1' ? 'rotational' : 'non-rotational'}${model.length ? `, ${model.join(' ')}` : ''}`;
  }
  return {
    cpu,
    cores: os.cpus().length,
    memory: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    disk: `${dir} on ${mount}${disk ? ` (${disk})` : ''}`,
    load: os.loadavg().map((l) => l.toFixed(2)).join(' '),
  };
}

export function versions(root) {
  const rev = sh('git', ['-C', root, 'rev-parse', '--short', 'HEAD']);
  const dirty = sh('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no']) ? '-dirty' : '';
  return {
    node: process.version,
    qemu: sh('qemu-img', ['--version']).split('\n')[0] || 'qemu-img not found',
    blockgraph: rev ? `${rev}${dirty}` : 'unknown (no git)',
  };
}
