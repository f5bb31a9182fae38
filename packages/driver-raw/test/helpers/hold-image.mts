/**
 * Holds an image open through blockgraph in its own process, for the locking interop tests:
 *   node --conditions=@blockgraph/source --import tsx hold-image.mts '<json>'
 * json: { filename, format?: 'raw'|'file', readOnly?: boolean, perm?: number, shared?: number, locking? }
 * Prints "ready" once the backend holds its permissions (or "error: <message>" and exits 1), then waits for
 * stdin to close or a line "quit".
 */
import { Graph } from '@blockgraph/block-core';
import { allRawDrivers } from '@blockgraph/driver-raw/file';

const job = JSON.parse(process.argv[2] ?? '{}') as {
  filename: string;
  format?: string;
  readOnly?: boolean;
  perm?: number;
  shared?: number;
  locking?: string;
};
const graph = new Graph({ drivers: [...allRawDrivers] });
try {
  const node = await graph.openImage(job.filename, {
    format: job.format ?? 'raw',
    readOnly: job.readOnly ?? false,
    options: job.locking ? (job.format === 'file' ? { locking: job.locking } : { file: { locking: job.locking } }) : {},
  });
  graph.backend(node, {
    ...(job.perm !== undefined ? { perm: job.perm } : {}),
    ...(job.shared !== undefined ? { shared: job.shared } : {}),
  });
  process.stdout.write('ready\n');
} catch (e) {
  process.stdout.write(`error: ${(e as Error).message.replace(/\n/g, '\\n')}\n`);
  process.exit(1);
}
let input = '';
process.stdin.on('data', (chunk: Buffer) => {
  input += chunk.toString();
  if (input.includes('quit')) void graph.close().then(() => process.exit(0));
});
process.stdin.on('end', () => void graph.close().then(() => process.exit(0)));
