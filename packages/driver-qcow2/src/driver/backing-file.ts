import { BlockError } from '@blockgraph/block-core';
import { MAX_BACKING_FILE_NAME } from '../format/index.js';
import { updateHeader } from './header-io.js';
import type { Qcow2State } from './state.js';

/**
 * qcow2_change_backing_file() (qemu-img rebase, bdrv_change_backing_file): record another backing file name
 * and format in the header (or none) with one header rewrite — the name after the extensions, the format as
 * the backing-format extension. The open backing child is not touched; the new name applies from the next
 * open. ENOSPC when the name does not fit into cluster 0.
 */
export async function changeBackingFile(s: Qcow2State, backingFile: string | undefined, backingFormat: string | undefined): Promise<void> {
  // With a raw external data file the data file alone must describe the disk: no backing file.
  if (backingFile !== undefined && s.dataFileIsRaw) {
    throw new BlockError('EINVAL', 'A backing file cannot be used with data-file-raw');
  }
  if (backingFile !== undefined && new TextEncoder().encode(backingFile).length > MAX_BACKING_FILE_NAME) {
    throw new BlockError('EINVAL', 'Backing file name too long');
  }
  const h = s.header;
  const oldFile = h.backingFile;
  const oldFormat = h.extensions.backingFormat;
  h.backingFile = backingFile ?? null;
  h.extensions.backingFormat = backingFormat ?? null;
  try {
    await updateHeader(s);
  } catch (e) {
    h.backingFile = oldFile;
    h.extensions.backingFormat = oldFormat;
    throw e;
  }
  s.trace('backing_file_changed', { backingFile: backingFile ?? null, backingFormat: backingFormat ?? null });
}
