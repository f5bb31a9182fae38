/** Finding images in a backing chain by the names the overlays record (qemu-img commit -b, rebase -b). */
import { realpathSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { BlockNode } from '@blockgraph/block-core';
import { driverInfo } from './image-info.js';

function canonical(path: string): string | undefined {
  try {
    return realpathSync(path);
  } catch {
    return undefined;
  }
}

/**
 * bdrv_find_backing_image() for file names: `name`, taken relative to each overlay's directory unless absolute,
 * is compared, canonicalised, with the backing file that overlay records; the image below that overlay is it.
 */
export function findBackingImage(top: BlockNode, name: string): BlockNode | undefined {
  for (let cur: BlockNode | undefined = top.skipFilters(); cur; cur = cur.backingChainNext()) {
    const below = cur.backingChainNext();
    if (!below) return undefined;
    const recorded = driverInfo(cur)?.backingFilename;
    if (recorded === undefined) continue;
    const dir = cur.filename !== undefined ? dirname(cur.filename) : '.';
    const want = canonical(isAbsolute(name) ? name : resolve(dir, name));
    if (want !== undefined && want === canonical(isAbsolute(recorded) ? recorded : resolve(dir, recorded))) return below;
  }
  return undefined;
}
