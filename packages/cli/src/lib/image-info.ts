/**
 * qemu-img info's ImageInfo (block/qapi.c bdrv_query_image_info) and its human dump (bdrv_image_info_dump),
 * built from the driver contract: getInfo(), getSpecificInfo(), getAllocatedFileSize(), snapshotList().
 */
import { ChildRole, isBlockError, kebabCase, resolveRelativeFilename, type BlockNode, type DriverInfo, type SnapshotInfo } from '@blockgraph/block-core';
import { qdictOrder, toQemuJson, type QValue } from './qjson.js';
import { padLeft, padRight, sizeToStr } from './printf.js';

type QObj = { [key: string]: QValue | undefined };

/**
 * bdrv_get_info(): the driver's own, else the filtered child's (raw passes it through). QEMU's file-posix and
 * raw-format answer with a zeroed BlockDriverInfo, which is what makes qemu-img print "dirty-flag": false.
 */
export function driverInfo(node: BlockNode): DriverInfo | undefined {
  if (node.impl.getInfo) return node.impl.getInfo();
  const filtered = node.filteredChild();
  if (filtered && (node.isFilter || node.driver.name === 'raw')) return driverInfo(filtered.node);
  if (node.driver.name === 'file' || node.driver.name === 'raw') return {};
  return undefined;
}

/** bdrv_get_allocated_file_size(); undefined when unavailable. */
export async function allocatedFileSize(node: BlockNode): Promise<number | undefined> {
  try {
    if (node.impl.getAllocatedFileSize) return await node.impl.getAllocatedFileSize();
  } catch {
    return undefined;
  }
  if (node.driver.kind === 'protocol') return undefined;
  if (node.isFilter) {
    const c = node.filteredChild();
    return c ? allocatedFileSize(c.node) : undefined;
  }
  // bdrv_sum_allocated_file_size(): the children holding data or metadata (not the backing file).
  let sum = 0;
  let any = false;
  for (const c of node.children) {
    if (!(c.role & (ChildRole.DATA | ChildRole.METADATA)) || c.role & ChildRole.COW) continue;
    const n = await allocatedFileSize(c.node);
    if (n === undefined) return undefined;
    sum += n;
    any = true;
  }
  return any ? sum : undefined;
}

/** Keys of format-specific data in QEMU's spelling (drivers may answer in camelCase). */
export function kebabKeys(v: unknown): QValue {
  if (Array.isArray(v)) return v.map(kebabKeys);
  if (v && typeof v === 'object' && !(v instanceof Uint8Array)) {
    const o: QObj = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) o[kebabCase(k)] = kebabKeys(x);
    return o;
  }
  return v as QValue;
}

/** A node's name for messages and `filename`: its file name, or QEMU's json:{...} form of its options. */
export function displayFilename(node: BlockNode): string {
  const f = node.filename;
  if (f !== undefined && !(node.driver.name === 'null-co' && f === 'null-co://')) return f;
  const opts: QObj = { driver: node.driver.name };
  for (const [k, v] of Object.entries(node.options)) {
    if (v === undefined || k === 'file' || k === 'backing') continue;
    opts[kebabCase(k)] = kebabKeys(v);
  }
  return `json:${toQemuJson(opts)}`;
}

export function snapshotToQapi(s: SnapshotInfo): QObj {
  return {
    id: s.id,
    name: s.name,
    'vm-state-size': s.vmStateSize,
    'date-sec': s.dateSec,
    'date-nsec': s.dateNsec,
    'vm-clock-sec': Number(BigInt(s.vmClockNsec) / 1_000_000_000n),
    'vm-clock-nsec': Number(BigInt(s.vmClockNsec) % 1_000_000_000n),
    icount: s.icount,
  };
}

/** bdrv_query_image_info(). Keys in QAPI field order (matters for QEMU's hash order only on collisions). */
export async function queryImageInfo(node: BlockNode): Promise<QObj> {
  const info = driverInfo(node);
  const actual = await allocatedFileSize(node);
  const out: QObj = {
    filename: displayFilename(node),
    format: node.driver.name,
    'dirty-flag': info ? info.isDirty ?? false : undefined,
    'actual-size': actual !== undefined && actual >= 0 ? actual : undefined,
    'virtual-size': node.totalBytes,
    'cluster-size': info?.clusterSize ? info.clusterSize : undefined,
  };
  if (info?.encrypted) out.encrypted = true;
  if (info?.backingFilename) {
    out['backing-filename'] = info.backingFilename;
    out['full-backing-filename'] = resolveRelativeFilename(node.filename ?? '', info.backingFilename);
    if (info.backingFormat) out['backing-filename-format'] = info.backingFormat;
  }
  if (node.impl.snapshotList) {
    let list: SnapshotInfo[] = [];
    try {
      list = await node.impl.snapshotList();
    } catch (e) {
      // bdrv_query_snapshot_info_list(): a format that cannot have snapshots here (an external data file) has none.
      if (!isBlockError(e) || e.code !== 'ENOTSUP') throw e;
    }
    if (list.length) out.snapshots = list.map(snapshotToQapi);
  }
  const spec = node.impl.getSpecificInfo?.();
  if (spec) out['format-specific'] = { type: spec.type, data: kebabKeys(spec.data) };
  return out;
}

/** bdrv_snapshot_dump(): the header (no argument) or one snapshot's row. */
export function snapshotRow(sn?: QObj): string {
  if (!sn) {
    return padRight('ID', 10) + padRight('TAG', 17) + padLeft('VM SIZE', 8) + padLeft('DATE', 20) + padLeft('VM CLOCK', 13) + padLeft('ICOUNT', 11);
  }
  const d = new Date(Number(sn['date-sec']) * 1000);
  const two = (n: number) => String(n).padStart(2, '0');
  const date = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  const secs = Number(sn['vm-clock-sec']);
  const ms = Math.floor(Number(sn['vm-clock-nsec']) / 1e6);
  const clock = `${String(Math.floor(secs / 3600)).padStart(2, '0')}:${two(Math.floor(secs / 60) % 60)}:${two(secs % 60)}.${String(ms).padStart(3, '0')}`;
  const icount = sn.icount === undefined ? '' : String(sn.icount);
  return `${padRight(String(sn.id), 9)} ${padRight(String(sn.name), 16)} ${padLeft(sizeToStr(Number(sn['vm-state-size'])), 8)}${padLeft(date, 20)}${padLeft(clock, 13)}${padLeft(icount, 11)}`;
}

/** dump_qobject(): the human form of format-specific data. */
export function dumpQObject(indent: number, v: QValue): string {
  if (Array.isArray(v)) {
    let s = '';
    v.forEach((item, i) => {
      const composite = typeof item === 'object' && item !== null;
      s += `${' '.repeat(indent * 4)}[${i}]:${composite ? '\n' : ' '}`;
      s += dumpQObject(indent + 1, item);
    });
    return s;
  }
  if (v !== null && typeof v === 'object') {
    let s = '';
    const obj = v as QObj;
    for (const k of qdictOrder(Object.keys(obj).filter((key) => obj[key] !== undefined))) {
      const item = obj[k] as QValue;
      const composite = typeof item === 'object' && item !== null;
      s += `${' '.repeat(indent * 4)}${k.replace(/-/g, ' ')}:${composite ? '\n' : ' '}`;
      s += dumpQObject(indent + 1, item);
    }
    return s;
  }
  if (typeof v === 'boolean') return `${v ? 'true' : 'false'}\n`;
  return `${String(v)}\n`;
}

/** bdrv_image_info_dump(). */
export function dumpImageInfoHuman(info: QObj): string {
  let s = '';
  const vsize = Number(info['virtual-size']);
  const dsize = info['actual-size'] === undefined ? 'unavailable' : sizeToStr(Number(info['actual-size']));
  s += `image: ${String(info.filename)}\nfile format: ${String(info.format)}\nvirtual size: ${sizeToStr(vsize)} (${vsize} bytes)\ndisk size: ${dsize}\n`;
  if (info.encrypted) s += 'encrypted: yes\n';
  if (info['cluster-size'] !== undefined) s += `cluster_size: ${String(info['cluster-size'])}\n`;
  if (info['dirty-flag'] === true) s += 'cleanly shut down: no\n';
  if (info['backing-filename'] !== undefined) {
    const bf = String(info['backing-filename']);
    s += `backing file: ${bf}`;
    if (info['full-backing-filename'] === undefined) s += ' (cannot determine actual path)';
    else if (info['full-backing-filename'] !== bf) s += ` (actual path: ${String(info['full-backing-filename'])})`;
    s += '\n';
    if (info['backing-filename-format'] !== undefined) s += `backing file format: ${String(info['backing-filename-format'])}\n`;
  }
  const snaps = info.snapshots as QObj[] | undefined;
  if (snaps) {
    s += `Snapshot list:\n${snapshotRow()}\n`;
    for (const sn of snaps) s += `${snapshotRow(sn)}\n`;
  }
  const fs = info['format-specific'] as QObj | undefined;
  if (fs) {
    s += 'Format specific information:\n';
    s += dumpQObject(1, fs.data as QValue);
  }
  return s;
}
