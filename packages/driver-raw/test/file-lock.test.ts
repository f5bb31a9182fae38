import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { BlockError } from '@blockgraph/block-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE_PERM,
  CREATE_SHARED,
  ImageLock,
  ImageLockError,
  PERM_ALL,
  PERM_CONSISTENT_READ,
  PERM_RESIZE,
  PERM_WRITE,
  PERM_WRITE_UNCHANGED,
  permNames,
  resolveLocking,
} from '../src/node/file-lock.js';
import { loadNative, nativeLoadError, type NativeHelper } from '../src/node/native.js';
import { newGraph } from './helpers/holder.js';
import {
  QemuIoHolder,
  describeRequiring,
  lockedBytes,
  makeTempDir,
  missingTools,
  runTool,
} from './helpers/qemu.js';

const helper = loadNative();
const missingHelper = helper ? [] : [`native helper (${nativeLoadError()?.message ?? 'disabled'})`];

function native(): NativeHelper {
  if (!helper) throw new Error('native helper not loaded');
  return helper;
}

/** A reader that lets anybody do anything: qemu-io -r, qemu-img map. */
const READER = { perm: PERM_CONSISTENT_READ, shared: PERM_ALL };
/** A writer that lets others write too: qemu-io -f raw (read-write). */
const SHARING_WRITER = { perm: PERM_CONSISTENT_READ | PERM_WRITE, shared: PERM_ALL };
/** A writer that forbids other writers and resizers: a guest disk, qemu-img's writers. */
const EXCLUSIVE_WRITER = {
  perm: PERM_CONSISTENT_READ | PERM_WRITE,
  shared: PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED,
};
/** A reader that forbids writers and resizers: qemu-img convert's source. */
const EXCLUSIVE_READER = { perm: PERM_CONSISTENT_READ, shared: PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED };

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected an exception');
}

function hint(path: string): string {
  return `Is another process using the image [${path}]?`;
}

describe('permNames', () => {
  it("joins QEMU's permission names like bdrv_perm_names()", () => {
    expect(permNames(PERM_WRITE)).toBe('write');
    expect(permNames(PERM_ALL)).toBe('consistent read, write, write unchanged, resize');
    expect(permNames(0)).toBe('');
  });
});

describe('resolveLocking', () => {
  it('follows raw_open_common(): off never locks, auto locks only with OFD locks, on insists', () => {
    expect(resolveLocking('off', helper)).toEqual({ useLock: false, warning: null });
    expect(resolveLocking('off', null)).toEqual({ useLock: false, warning: null });
    expect(resolveLocking('auto', null)).toEqual({ useLock: false, warning: null });
    expect(caught(() => resolveLocking('on', null))).toMatchObject({ code: 'ENOTSUP' });
    expect(caught(() => resolveLocking('sometimes' as 'on', helper))).toMatchObject({
      code: 'EINVAL',
      message: "Invalid parameter 'sometimes'",
    });
  });

  describeRequiring('with the native helper', missingHelper, () => {
    it('auto and on lock with OFD locks; with POSIX locks auto does not and on warns', () => {
      const n = native();
      const kind = n.lockKind();
      try {
        n.setLockKind('ofd');
        expect(resolveLocking('auto', n)).toEqual({ useLock: true, warning: null });
        expect(resolveLocking('on', n)).toEqual({ useLock: true, warning: null });
        n.setLockKind('posix');
        expect(resolveLocking('auto', n)).toEqual({ useLock: false, warning: null });
        expect(resolveLocking('on', n)).toEqual({
          useLock: true,
          warning: {
            message: 'File lock requested but OFD locking syscall is unavailable, falling back to POSIX file locks',
            hint: 'Due to the implementation, locks can be lost unexpectedly.\n',
          },
        });
      } finally {
        n.setLockKind(kind);
      }
    });

    it("opening with locking=on on POSIX locks emits QEMU's warning as a WARNING graph event", async () => {
      const n = native();
      const kind = n.lockKind();
      const { dir, cleanup } = makeTempDir('lock-warn');
      const graph = newGraph();
      try {
        const p = join(dir, 'w.raw');
        closeSync(openSync(p, 'w'));
        const events: Record<string, unknown>[] = [];
        graph.on((e) => {
          if (e.event === 'WARNING') events.push(e.data);
        });
        n.setLockKind('posix');
        const node = await graph.addNode({ driver: 'file', filename: p, locking: 'on', nodeName: 'f0' });
        expect(node.nodeName).toBe('f0');
        expect(events).toEqual([
          {
            'node-name': 'f0',
            message: 'File lock requested but OFD locking syscall is unavailable, falling back to POSIX file locks',
            hint: 'Due to the implementation, locks can be lost unexpectedly.\n',
          },
        ]);
      } finally {
        n.setLockKind(kind);
        await graph.close();
        cleanup();
      }
    });

    it("an unlock that fails (QEMU's warn_report_err) is a WARNING graph event of the file node", async () => {
      const { dir, cleanup } = makeTempDir('unlock-warn');
      const graph = newGraph();
      try {
        const p = join(dir, 'u.raw');
        closeSync(openSync(p, 'w'));
        const events: Record<string, unknown>[] = [];
        graph.on((e) => {
          if (e.event === 'WARNING') events.push(e.data);
        });
        const node = await graph.addNode({ driver: 'file', filename: p, nodeName: 'f1' });
        graph.backend(node);
        const inst = node.impl as unknown as { fd: number; lock: ImageLock };
        expect(lockedBytes(p)).toEqual([100, 101, 103, 201, 203]);
        // Unlocking "cannot fail": make it fail by closing the descriptor under the lock. The instance forgets
        // the number at once, so that closing the node cannot close a file that reused it.
        closeSync(inst.fd);
        inst.fd = -1;
        inst.lock.release();
        expect(events).toEqual([{ 'node-name': 'f1', message: 'Failed to unlock byte 100: Bad file descriptor' }]);
      } finally {
        await graph.close();
        cleanup();
      }
    });
  });
});

describeRequiring('ImageLock', missingHelper, () => {
  let dir: string;
  let cleanup: () => void;
  let image: string;
  const fds: number[] = [];
  const locks: ImageLock[] = [];

  function openImage(path = image): number {
    const fd = openSync(path, 'r+');
    fds.push(fd);
    return fd;
  }

  function newLock(path = image): ImageLock {
    const lock = new ImageLock(openImage(path), path, native());
    locks.push(lock);
    return lock;
  }

  beforeAll(() => {
    ({ dir, cleanup } = makeTempDir('lock'));
    image = join(dir, 'disk.img');
    closeSync(openSync(image, 'w'));
  });
  afterEach(() => {
    for (const lock of locks.splice(0)) lock.release();
    for (const fd of fds.splice(0)) closeSync(fd);
    expect(lockedBytes(image)).toEqual([]);
  });
  afterAll(() => cleanup());

  it('locks byte 100+i for each used permission and 200+i for each unshared one', () => {
    const lock = newLock();
    lock.apply(EXCLUSIVE_WRITER.perm, EXCLUSIVE_WRITER.shared);
    expect(lockedBytes(image)).toEqual([100, 101, 201, 203]);
    expect(lock.perm).toBe(EXCLUSIVE_WRITER.perm);
    expect(lock.shared).toBe(EXCLUSIVE_WRITER.shared);
    expect(lock.lockedPerm).toBe(PERM_CONSISTENT_READ | PERM_WRITE);
    expect(lock.lockedUnshared).toBe(PERM_WRITE | PERM_RESIZE);

    lock.apply(PERM_ALL, 0);
    expect(lockedBytes(image)).toEqual([100, 101, 102, 103, 200, 201, 202, 203]);
    lock.apply(CREATE_PERM, CREATE_SHARED);
    expect(lockedBytes(image)).toEqual([101, 103, 203]);
    lock.release();
    expect(lockedBytes(image)).toEqual([]);
    expect(lock.perm).toBe(0);
    expect(lock.shared).toBe(PERM_ALL);
  });

  it('refuses a permission another holder does not share, with QEMU text, and rolls back', () => {
    const owner = newLock();
    owner.apply(EXCLUSIVE_WRITER.perm, EXCLUSIVE_WRITER.shared);
    const other = newLock();

    const error = caught(() => other.prepare(SHARING_WRITER.perm, SHARING_WRITER.shared));
    expect(error).toBeInstanceOf(ImageLockError);
    expect(error).toBeInstanceOf(BlockError);
    expect(error).toMatchObject({
      code: 'EAGAIN',
      message: `Failed to get "write" lock\n${hint(image)}`,
      reason: 'Failed to get "write" lock',
      hint: hint(image),
    });
    expect(other.preparing).toBe(false);
    expect(other.lockedPerm).toBe(0);
    expect(other.lockedUnshared).toBe(0);
    expect(lockedBytes(image)).toEqual([100, 101, 201, 203]);

    // check() alone tests without locking and without the hint, like raw_check_lock_bytes().
    expect(caught(() => other.check(PERM_RESIZE, PERM_ALL))).toMatchObject({
      code: 'EAGAIN',
      message: 'Failed to get "resize" lock',
    });
    expect(caught(() => other.check(PERM_CONSISTENT_READ, PERM_ALL & ~PERM_WRITE))).toMatchObject({
      message: 'Failed to get shared "write" lock',
    });
    other.check(READER.perm, READER.shared);
    other.apply(READER.perm, READER.shared);
  });

  it('keeps the committed locks when a wider prepare fails', () => {
    const reader = newLock();
    reader.apply(READER.perm, READER.shared);
    const writer = newLock();
    writer.apply(EXCLUSIVE_WRITER.perm, EXCLUSIVE_WRITER.shared);

    expect(caught(() => reader.prepare(PERM_CONSISTENT_READ | PERM_RESIZE, PERM_ALL))).toMatchObject({
      message: `Failed to get "resize" lock\n${hint(image)}`,
    });
    expect(reader.lockedPerm).toBe(PERM_CONSISTENT_READ);
    expect(reader.lockedUnshared).toBe(0);
    expect(reader.perm).toBe(PERM_CONSISTENT_READ);

    writer.release();
    reader.prepare(PERM_CONSISTENT_READ | PERM_RESIZE, PERM_ALL);
    reader.commit();
    expect(lockedBytes(image)).toEqual([100, 103]);
  });

  it('takes the union of old and new locks in prepare, and settles them in commit or abort', () => {
    const lock = newLock();
    lock.apply(EXCLUSIVE_WRITER.perm, EXCLUSIVE_WRITER.shared);

    // Widening: the new bytes are held from prepare on, so others see them during the transaction.
    lock.prepare(PERM_CONSISTENT_READ | PERM_RESIZE, PERM_ALL & ~PERM_WRITE_UNCHANGED);
    expect(lockedBytes(image)).toEqual([100, 101, 103, 201, 202, 203]);
    lock.abort();
    expect(lockedBytes(image)).toEqual([100, 101, 201, 203]);
    expect(lock.perm).toBe(EXCLUSIVE_WRITER.perm);

    lock.prepare(PERM_CONSISTENT_READ | PERM_RESIZE, PERM_ALL & ~PERM_WRITE_UNCHANGED);
    lock.commit();
    expect(lockedBytes(image)).toEqual([100, 103, 202]);

    // Narrowing: nothing changes until commit, because unlocking cannot conflict.
    lock.prepare(READER.perm, READER.shared);
    expect(lockedBytes(image)).toEqual([100, 103, 202]);
    lock.commit();
    expect(lockedBytes(image)).toEqual([100]);
  });

  it('refuses commit without prepare and a second prepare', () => {
    const lock = newLock();
    expect(caught(() => lock.commit())).toMatchObject({ code: 'EINVAL' });
    lock.prepare(READER.perm, READER.shared);
    expect(caught(() => lock.prepare(READER.perm, READER.shared))).toMatchObject({ code: 'EBUSY' });
    lock.commit();
  });

  it('moves its locks to a new fd when a reopen needs one', () => {
    const lock = newLock();
    const oldFd = lock.fd;
    lock.apply(READER.perm, READER.shared);
    const newFd = openSync(image, 'r+');
    fds.push(newFd);

    lock.prepare(EXCLUSIVE_WRITER.perm, EXCLUSIVE_WRITER.shared, newFd);
    lock.commit();
    expect(lock.fd).toBe(newFd);
    closeSync(fds.splice(fds.indexOf(oldFd), 1)[0]!);
    expect(lockedBytes(image)).toEqual([100, 101, 201, 203]);
    expect(lock.lockedPerm).toBe(EXCLUSIVE_WRITER.perm);
  });

  it("reports a failing lock call with the errno text, QEMU's error_setg_errno()", () => {
    const fd = openSync(image, 'r+');
    const warnings: string[] = [];
    const lock = new ImageLock(fd, image, native(), { warn: (message) => warnings.push(message) });
    lock.apply(READER.perm, READER.shared);
    closeSync(fd);

    const error = caught(() => lock.prepare(SHARING_WRITER.perm, SHARING_WRITER.shared));
    expect(error).toMatchObject({ code: 'EIO', message: 'Failed to lock byte 101: Bad file descriptor' });
    expect((error as ImageLockError).hint).toBeUndefined();
    // The rollback had nothing to unlock: byte 100 belongs to the committed state.
    expect(warnings).toEqual([]);
    expect(lock.lockedPerm).toBe(PERM_CONSISTENT_READ);

    // Unlocking cannot fail in QEMU's model; when it does, QEMU only warns, and so do we.
    lock.release();
    expect(warnings).toEqual(['Failed to unlock byte 100: Bad file descriptor']);
  });
});

describeRequiring(
  'ImageLock against QEMU 7.2',
  [...missingHelper, ...missingTools('qemu-img', 'qemu-io')],
  () => {
    let dir: string;
    let cleanup: () => void;
    let raw: string;
    let qcow2: string;
    const fds: number[] = [];
    const locks: ImageLock[] = [];
    const holders: QemuIoHolder[] = [];

    function newLock(path: string): ImageLock {
      const fd = openSync(path, 'r+');
      fds.push(fd);
      const lock = new ImageLock(fd, path, native());
      locks.push(lock);
      return lock;
    }

    async function hold(...args: string[]): Promise<QemuIoHolder> {
      const holder = await QemuIoHolder.start(args);
      holders.push(holder);
      return holder;
    }

    function qemu(command: 'qemu-img' | 'qemu-io', ...args: string[]) {
      return runTool(command, args);
    }

    beforeAll(() => {
      ({ dir, cleanup } = makeTempDir('qemu-lock'));
      raw = join(dir, 'disk.raw');
      qcow2 = join(dir, 'disk.qcow2');
      expect(qemu('qemu-img', 'create', '-f', 'raw', raw, '1M').status).toBe(0);
      expect(qemu('qemu-img', 'create', '-f', 'qcow2', qcow2, '1M').status).toBe(0);
    });
    afterEach(async () => {
      for (const holder of holders.splice(0)) await holder.stop();
      for (const lock of locks.splice(0)) lock.release();
      for (const fd of fds.splice(0)) closeSync(fd);
    });
    afterAll(() => cleanup());

    describe('QEMU holds the image, blockgraph asks', () => {
      it('qemu-io -f raw (read-write) uses read+write and shares everything', async () => {
        await hold('-f', 'raw', raw);
        expect(lockedBytes(raw)).toEqual([100, 101]);
        const lock = newLock(raw);

        // Readers and writers that share writes coexist with it, as a second qemu-io would.
        lock.check(READER.perm, READER.shared);
        lock.check(SHARING_WRITER.perm, SHARING_WRITER.shared);
        expect(qemu('qemu-io', '-f', 'raw', '-c', 'read 0 512', raw).status).toBe(0);

        // Refusing to share writes while it writes fails, exactly as qemu-img convert's source does.
        const error = caught(() => lock.prepare(EXCLUSIVE_READER.perm, EXCLUSIVE_READER.shared));
        expect(error).toMatchObject({
          code: 'EAGAIN',
          message: `Failed to get shared "write" lock\n${hint(raw)}`,
        });
        const convert = qemu('qemu-img', 'convert', '-f', 'raw', '-O', 'raw', raw, join(dir, 'copy.raw'));
        expect(convert.status).toBe(1);
        expect(convert.stderr).toBe(`qemu-img: Could not open '${raw}': ${(error as Error).message}\n`);

        expect(caught(() => lock.prepare(EXCLUSIVE_WRITER.perm, EXCLUSIVE_WRITER.shared))).toMatchObject({
          message: `Failed to get shared "write" lock\n${hint(raw)}`,
        });
        // Nothing of ours is left behind after the failures.
        expect(lockedBytes(raw)).toEqual([100, 101]);
      });

      it('qemu-io -f qcow2 (read-write) forbids other writers and resizers', async () => {
        await hold('-f', 'qcow2', qcow2);
        expect(lockedBytes(qcow2)).toEqual([100, 101, 103, 201, 203]);
        const lock = newLock(qcow2);

        lock.check(READER.perm, READER.shared);
        expect(caught(() => lock.check(SHARING_WRITER.perm, SHARING_WRITER.shared))).toMatchObject({
          code: 'EAGAIN',
          message: 'Failed to get "write" lock',
        });
        expect(caught(() => lock.check(PERM_RESIZE, PERM_ALL))).toMatchObject({
          message: 'Failed to get "resize" lock',
        });

        const error = caught(() => lock.prepare(SHARING_WRITER.perm, SHARING_WRITER.shared));
        expect(error).toBeInstanceOf(ImageLockError);
        // The same words as a second QEMU process opening the file for writing.
        const io = qemu('qemu-io', '-f', 'raw', '-c', 'read 0 1', qcow2);
        expect(io.status).toBe(1);
        expect(io.stderr).toBe(`qemu-io: can't open device ${qcow2}: ${(error as Error).message}\n`);

        // Image creation takes WRITE and RESIZE and refuses to share RESIZE, like qemu-img create.
        const createError = caught(() => lock.apply(CREATE_PERM, CREATE_SHARED));
        const create = qemu('qemu-img', 'create', '-f', 'raw', qcow2, '1M');
        expect(create.status).toBe(1);
        expect(create.stderr).toBe(`qemu-img: ${qcow2}: ${(createError as Error).message}\n`);
        expect(lockedBytes(qcow2)).toEqual([100, 101, 103, 201, 203]);
      });

      it('locks the same bytes as qemu-io for the same permissions', async () => {
        const qemuHeld = await hold('-f', 'qcow2', qcow2);
        const qemuBytes = lockedBytes(qcow2);
        await qemuHeld.stop();
        expect(lockedBytes(qcow2)).toEqual([]);

        // qcow2's file child: read, write, resize; shares neither write nor resize.
        newLock(qcow2).apply(
          PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE,
          PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED,
        );
        expect(lockedBytes(qcow2)).toEqual(qemuBytes);
      });
    });

    describe('blockgraph holds the image, QEMU asks', () => {
      function expectQemuLockedOut(): void {
        const info = qemu('qemu-img', 'info', qcow2);
        expect(info.status).toBe(1);
        expect(info.stderr).toBe(
          `qemu-img: Could not open '${qcow2}': Failed to get shared "write" lock\n${hint(qcow2)}\n`,
        );
        const infoForceShare = qemu('qemu-img', 'info', '-U', qcow2);
        expect(infoForceShare.status).toBe(0);
        expect(infoForceShare.stdout).toContain('file format: qcow2');

        const write = qemu('qemu-io', '-f', 'raw', '-c', 'write 0 512', raw);
        expect(write.status).toBe(1);
        expect(write.stderr).toBe(`qemu-io: can't open device ${raw}: Failed to get "write" lock\n${hint(raw)}\n`);
        // We share reads, so a read-only qemu-io still works.
        const read = qemu('qemu-io', '-r', '-f', 'raw', '-c', 'read 0 512', raw);
        expect(read.stderr).toBe('');
        expect(read.status).toBe(0);
        expect(read.stdout).toContain('read 512/512 bytes at offset 0');
      }

      function expectQemuAllowed(): void {
        const info = qemu('qemu-img', 'info', qcow2);
        expect(info.stderr).toBe('');
        expect(info.status).toBe(0);
        const write = qemu('qemu-io', '-f', 'raw', '-c', 'write 0 512', raw);
        expect(write.stderr).toBe('');
        expect(write.status).toBe(0);
      }

      it('an exclusive writer locks qemu-img and qemu-io out until release', () => {
        const qcow2Lock = newLock(qcow2);
        const rawLock = newLock(raw);
        qcow2Lock.apply(EXCLUSIVE_WRITER.perm, EXCLUSIVE_WRITER.shared);
        rawLock.apply(EXCLUSIVE_WRITER.perm, EXCLUSIVE_WRITER.shared);
        expectQemuLockedOut();

        // qemu-img info on a raw image takes no permissions at all in 7.2, so it is never locked out.
        const rawInfo = qemu('qemu-img', 'info', '-f', 'raw', raw);
        expect(rawInfo.status).toBe(0);

        qcow2Lock.release();
        rawLock.release();
        expectQemuAllowed();
      });

      it('works the same with POSIX locks (the fallback without OFD locks)', () => {
        const n = native();
        const kind = n.lockKind();
        n.setLockKind('posix');
        try {
          const qcow2Lock = newLock(qcow2);
          const rawLock = newLock(raw);
          qcow2Lock.apply(EXCLUSIVE_WRITER.perm, EXCLUSIVE_WRITER.shared);
          rawLock.apply(EXCLUSIVE_WRITER.perm, EXCLUSIVE_WRITER.shared);
          expect(lockedBytes(qcow2)).toEqual([100, 101, 201, 203]);
          expectQemuLockedOut();
          qcow2Lock.release();
          rawLock.release();
          expectQemuAllowed();
        } finally {
          n.setLockKind(kind);
        }
      });

      it('a shared reader does not disturb QEMU writers', async () => {
        newLock(raw).apply(READER.perm, READER.shared);
        const write = qemu('qemu-io', '-f', 'raw', '-c', 'write 0 512', raw);
        expect(write.stderr).toBe('');
        expect(write.status).toBe(0);
        // ... and a QEMU writer can start while we read.
        await hold('-f', 'raw', raw);
        expect(lockedBytes(raw)).toEqual([100, 101]);
      });
    });
  },
);
