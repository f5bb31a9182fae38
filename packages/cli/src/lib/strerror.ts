/** strerror() of a failed block request, as qemu-img and qemu-io print it ("Input/output error"). */
import { STRERROR, isBlockError } from '@blockgraph/block-core';
import { errMessage } from './open.js';

export function strerror(e: unknown): string {
  if (isBlockError(e)) return STRERROR[e.code];
  const code = (e as { code?: string } | null)?.code;
  if (code && code in STRERROR) return STRERROR[code as keyof typeof STRERROR];
  return errMessage(e);
}
