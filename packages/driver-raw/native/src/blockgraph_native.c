/*
 * The few system calls Node's fs module lacks and the file protocol needs:
 * SEEK_DATA/SEEK_HOLE for block status, fallocate for preallocation, discard
 * and write-zeroes, and byte-range locks for QEMU's image-locking protocol.
 *
 * Most functions are synchronous and cheap (a single system call), so there is
 * no thread-pool round trip; the *Async ones wait for the disk and run on a
 * thread (fallocate on libuv's pool, fdatasync and sync_file_range on side
 * threads of their own). Buffered writes can go through a queue per file,
 * drained by a side thread (pwritevQueued); copy_file_range runs on a side thread too (copyFileRangeAsync). Failures throw an Error (or reject with one) whose `code` is
 * the errno name, the same shape as Node's own fs errors. Also: cachestat(2).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <pthread.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <sys/uio.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

#ifdef __linux__
#include <linux/falloc.h>
#include <sys/syscall.h>
#endif

#include <node_api.h>

#define BLOCKGRAPH_NATIVE_VERSION "1.7.0"

/* Offsets arrive as JS numbers; beyond 2^53 they are no longer exact. */
#define MAX_SAFE_INTEGER 9007199254740991.0

typedef enum {
    LOCK_KIND_OFD,
    LOCK_KIND_POSIX,
} LockKind;

typedef struct {
    /* What the kernel offers, probed once per environment. */
    LockKind available;
    /* What lock calls use; differs from `available` only when forced. */
    LockKind active;
    /* Completions of side-thread jobs (created on first use), and how many are in flight. */
    napi_threadsafe_function side_tsfn;
    uint32_t side_pending;
} AddonState;

static const char *errno_name(int err)
{
    switch (err) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ETXTBSY: return "ETXTBSY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EROFS: return "EROFS";
    case EDEADLK: return "EDEADLK";
    case ENOLCK: return "ENOLCK";
    case ENOSYS: return "ENOSYS";
    case EOVERFLOW: return "EOVERFLOW";
    case EXDEV: return "EXDEV";
    /* On Linux ENOTSUP == EOPNOTSUPP; fallocate(2) documents the latter. */
    case EOPNOTSUPP: return "EOPNOTSUPP";
#if defined(ENOTSUP) && ENOTSUP != EOPNOTSUPP
    case ENOTSUP: return "ENOTSUP";
#endif
    default: return NULL;
    }
}

/* An Error shaped like Node's fs errors (code, errno, syscall, plus `description`), or NULL. */
static napi_value errno_error(napi_env env, int err, const char *syscall)
{
    char code_buf[16];
    const char *code = errno_name(err);
    if (code == NULL) {
        snprintf(code_buf, sizeof(code_buf), "E%d", err);
        code = code_buf;
    }

    char message[256];
    snprintf(message, sizeof(message), "%s: %s, %s", code, strerror(err), syscall);

    napi_value code_value, message_value, error, errno_value, syscall_value, description_value;
    if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_value) != napi_ok ||
        napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &message_value) != napi_ok ||
        napi_create_error(env, code_value, message_value, &error) != napi_ok) {
        return NULL;
    }
    /* Node's fs errors carry a negative errno and the syscall; match them. */
    if (napi_create_int32(env, -err, &errno_value) == napi_ok) {
        napi_set_named_property(env, error, "errno", errno_value);
    }
    if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value) == napi_ok) {
        napi_set_named_property(env, error, "syscall", syscall_value);
    }
    /* strerror() alone, for callers that format errors QEMU's way ("...: %s"). */
    if (napi_create_string_utf8(env, strerror(err), NAPI_AUTO_LENGTH, &description_value) == napi_ok) {
        napi_set_named_property(env, error, "description", description_value);
    }
    return error;
}

static void throw_errno(napi_env env, int err, const char *syscall)
{
    napi_value error = errno_error(env, err, syscall);
    if (error == NULL) {
        napi_throw_error(env, errno_name(err), strerror(err));
        return;
    }
    napi_throw(env, error);
}

static void throw_arg_error(napi_env env, const char *message)
{
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
}

static bool get_args(napi_env env, napi_callback_info info, size_t expected,
                     napi_value *argv)
{
    size_t argc = expected;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
        napi_throw_error(env, NULL, "napi_get_cb_info failed");
        return false;
    }
    if (argc < expected) {
        char message[64];
        snprintf(message, sizeof(message), "expected %zu arguments, got %zu", expected, argc);
        throw_arg_error(env, message);
        return false;
    }
    return true;
}

/* An integral JS number within ±(2^53 - 1); `what` names it in the error. */
static bool get_integer(napi_env env, napi_value value, const char *what, int64_t *out)
{
    double d;
    if (napi_get_value_double(env, value, &d) != napi_ok) {
        char message[96];
        snprintf(message, sizeof(message), "%s must be a number", what);
        throw_arg_error(env, message);
        return false;
    }
    if (!isfinite(d) || trunc(d) != d || fabs(d) > MAX_SAFE_INTEGER) {
        char message[96];
        snprintf(message, sizeof(message), "%s must be a safe integer", what);
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", message);
        return false;
    }
    *out = (int64_t)d;
    return true;
}

static bool get_fd(napi_env env, napi_value value, int *out)
{
    int64_t fd;
    if (!get_integer(env, value, "fd", &fd)) {
        return false;
    }
    if (fd < INT_MIN || fd > INT_MAX) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fd is out of range");
        return false;
    }
    *out = (int)fd;
    return true;
}

/* The bytes of a Uint8Array (or any TypedArray/DataView) argument. */
static bool get_bytes(napi_env env, napi_value value, void **data, size_t *length)
{
    bool is_typedarray = false;
    if (napi_is_typedarray(env, value, &is_typedarray) == napi_ok && is_typedarray) {
        napi_typedarray_type type;
        size_t count;
        napi_value buffer;
        size_t byte_offset;
        if (napi_get_typedarray_info(env, value, &type, &count, data, &buffer, &byte_offset) != napi_ok) {
            throw_arg_error(env, "buffer must be a Uint8Array");
            return false;
        }
        *length = count; /* callers pass Uint8Array: elements are bytes */
        return type == napi_uint8_array || type == napi_int8_array || type == napi_uint8_clamped_array
                   ? true
                   : (throw_arg_error(env, "buffer must be a Uint8Array"), false);
    }
    throw_arg_error(env, "buffer must be a Uint8Array");
    return false;
}

static napi_value make_number(napi_env env, double value)
{
    napi_value result;
    if (napi_create_double(env, value, &result) != napi_ok) {
        napi_throw_error(env, NULL, "napi_create_double failed");
        return NULL;
    }
    return result;
}

static napi_value make_boolean(napi_env env, bool value)
{
    napi_value result;
    if (napi_get_boolean(env, value, &result) != napi_ok) {
        napi_throw_error(env, NULL, "napi_get_boolean failed");
        return NULL;
    }
    return result;
}

static napi_value seek(napi_env env, napi_callback_info info, int whence,
                       const char *syscall)
{
    napi_value argv[2];
    int fd;
    int64_t offset;
    if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], &fd) ||
        !get_integer(env, argv[1], "offset", &offset)) {
        return NULL;
    }
    off_t result = lseek(fd, (off_t)offset, whence);
    if (result < 0) {
        /* ENXIO: no data (or hole) at or after offset, e.g. past EOF. */
        if (errno == ENXIO) {
            return make_number(env, -1);
        }
        throw_errno(env, errno, syscall);
        return NULL;
    }
    return make_number(env, (double)result);
}

static napi_value seek_data(napi_env env, napi_callback_info info)
{
#ifdef SEEK_DATA
    return seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)");
#else
    throw_errno(env, ENOSYS, "lseek(SEEK_DATA)");
    return NULL;
#endif
}

static napi_value seek_hole(napi_env env, napi_callback_info info)
{
#ifdef SEEK_HOLE
    return seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)");
#else
    throw_errno(env, ENOSYS, "lseek(SEEK_HOLE)");
    return NULL;
#endif
}

static napi_value do_fallocate(napi_env env, napi_callback_info info)
{
    napi_value argv[4];
    int fd;
    int64_t mode, offset, length;
    if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], &fd) ||
        !get_integer(env, argv[1], "mode", &mode) ||
        !get_integer(env, argv[2], "offset", &offset) ||
        !get_integer(env, argv[3], "length", &length)) {
        return NULL;
    }
    if (mode < 0 || mode > INT_MAX) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "mode is out of range");
        return NULL;
    }
#ifdef __linux__
    int ret;
    do {
        ret = fallocate(fd, (int)mode, (off_t)offset, (off_t)length);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0) {
        throw_errno(env, errno, "fallocate");
    }
#else
    throw_errno(env, ENOSYS, "fallocate");
#endif
    return NULL;
}

static AddonState *get_state(napi_env env)
{
    AddonState *state = NULL;
    if (napi_get_instance_data(env, (void **)&state) != napi_ok || state == NULL) {
        napi_throw_error(env, NULL, "blockgraph_native: missing instance data");
        return NULL;
    }
    return state;
}

/* QEMU's qemu_probe_lock_ops(): ask F_OFD_GETLK about /dev/null. */
static LockKind probe_lock_kind(void)
{
#ifdef F_OFD_GETLK
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        return LOCK_KIND_POSIX;
    }
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_whence = SEEK_SET;
    fl.l_type = F_WRLCK;
    int ret = fcntl(fd, F_OFD_GETLK, &fl);
    close(fd);
    return ret == 0 ? LOCK_KIND_OFD : LOCK_KIND_POSIX;
#else
    return LOCK_KIND_POSIX;
#endif
}

static bool get_lock_type(napi_env env, napi_value value, bool allow_unlock, short *out)
{
    char buf[4];
    size_t len = 0;
    if (napi_get_value_string_utf8(env, value, buf, sizeof(buf), &len) != napi_ok) {
        throw_arg_error(env, "type must be a string");
        return false;
    }
    if (len == 1 && buf[0] == 'r') {
        *out = F_RDLCK;
        return true;
    }
    if (len == 1 && buf[0] == 'w') {
        *out = F_WRLCK;
        return true;
    }
    if (allow_unlock && len == 1 && buf[0] == 'u') {
        *out = F_UNLCK;
        return true;
    }
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE",
                          allow_unlock ? "type must be 'r', 'w' or 'u'" : "type must be 'r' or 'w'");
    return false;
}

static bool get_lock_args(napi_env env, napi_callback_info info, bool allow_unlock,
                          int *fd, struct flock *fl)
{
    napi_value argv[4];
    int64_t start, len;
    short type;
    if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], fd) ||
        !get_integer(env, argv[1], "start", &start) ||
        !get_integer(env, argv[2], "len", &len) ||
        !get_lock_type(env, argv[3], allow_unlock, &type)) {
        return false;
    }
    memset(fl, 0, sizeof(*fl));
    fl->l_type = type;
    fl->l_whence = SEEK_SET;
    fl->l_start = (off_t)start;
    fl->l_len = (off_t)len;
    return true;
}


/* fallocate() on the thread pool: hole punching and zeroing can wait for the file system (inode locks held
 * by writes in flight, page cache writeback), and must not hold up the event loop meanwhile. */
/* Settle a promise from a background system call: resolve on err 0, else reject with the errno error (or a plain
 * Error naming the call when even that cannot be built). */
static void settle_errno(napi_env env, napi_deferred deferred, int err, const char *syscall)
{
    if (err == 0) {
        napi_value undefined;
        napi_get_undefined(env, &undefined);
        napi_resolve_deferred(env, deferred, undefined);
        return;
    }
    napi_value error = errno_error(env, err, syscall);
    if (error == NULL) {
        napi_value msg;
        napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &msg);
        napi_create_error(env, NULL, msg, &error);
    }
    napi_reject_deferred(env, deferred, error);
}

/* Arguments (fd, offset, length) with offset and length not negative. */
static bool get_fd_range(napi_env env, napi_callback_info info, int *fd, int64_t *offset, int64_t *length)
{
    napi_value argv[3];
    if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], fd) ||
        !get_integer(env, argv[1], "offset", offset) || !get_integer(env, argv[2], "length", length)) {
        return false;
    }
    if (*offset < 0 || *length < 0) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "offset and length must not be negative");
        return false;
    }
    return true;
}

typedef struct {
    napi_async_work work;
    napi_deferred deferred;
    int fd;
    int mode;
    int64_t offset;
    int64_t length;
    int err;
} FallocateJob;

static void fallocate_execute(napi_env env, void *data)
{
    FallocateJob *job = data;
#ifdef __linux__
    int ret;
    do {
        ret = fallocate(job->fd, job->mode, (off_t)job->offset, (off_t)job->length);
    } while (ret < 0 && errno == EINTR);
    job->err = ret < 0 ? errno : 0;
#else
    job->err = ENOSYS;
#endif
}

static void fallocate_complete(napi_env env, napi_status status, void *data)
{
    FallocateJob *job = data;
    settle_errno(env, job->deferred, status == napi_ok ? job->err : (job->err ? job->err : EIO), "fallocate");
    napi_delete_async_work(env, job->work);
    free(job);
}

static napi_value do_fallocate_async(napi_env env, napi_callback_info info)
{
    napi_value argv[4];
    int fd;
    int64_t mode, offset, length;
    if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], &fd) ||
        !get_integer(env, argv[1], "mode", &mode) ||
        !get_integer(env, argv[2], "offset", &offset) ||
        !get_integer(env, argv[3], "length", &length)) {
        return NULL;
    }
    if (mode < 0 || mode > INT_MAX) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "mode is out of range");
        return NULL;
    }
    FallocateJob *job = calloc(1, sizeof(*job));
    if (job == NULL) {
        throw_errno(env, ENOMEM, "fallocate");
        return NULL;
    }
    job->fd = fd;
    job->mode = (int)mode;
    job->offset = offset;
    job->length = length;
    napi_value promise, name;
    if (napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
        napi_create_string_utf8(env, "blockgraph:fallocate", NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_create_async_work(env, NULL, name, fallocate_execute, fallocate_complete, job, &job->work) != napi_ok ||
        napi_queue_async_work(env, job->work) != napi_ok) {
        free(job);
        napi_throw_error(env, NULL, "blockgraph_native: could not queue fallocate");
        return NULL;
    }
    return promise;
}

/* fdatasync() on a side thread, not on libuv's pool. A flush can wait for the disk for a long time (behind the
 * writeback of everything else that is dirty), and the pool is sized for copies: a flush there would leave data
 * requests a thread short for as long as it lasts. sync_file_range(SYNC_FILE_RANGE_WRITE) runs the same way: it
 * only starts writeback, but submitting it can wait for the device queue.
 *
 * The side threads are a pool of their own that grows and shrinks as QEMU's thread pool does: a job that finds no
 * free thread starts one (up to SIDE_MAX_THREADS), and a thread idle for SIDE_IDLE_SECONDS ends. Starting a thread
 * for every job cost about 60 us per flush on an idle machine and milliseconds on a busy one (8192 flushes of
 * `check -r all`: 3.3 s against qemu-img's 2.7 s idle, 13-18 s against 3.5-6.7 s busy). Completions reach the
 * JS thread through one threadsafe function per environment, referenced only while jobs are in flight so that an
 * idle helper never keeps the event loop alive. */
#define SIDE_MAX_THREADS 64
#define SIDE_IDLE_SECONDS 10

typedef enum { SIDE_FDATASYNC, SIDE_START_WRITEBACK, SIDE_COPY_RANGE } SideOp;

/* What the side threads run: a job of its own (a flush), or the draining of one file's write queue. `run` returns
 * the completion to hand to the JS thread once the side thread counts as free again (NULL: none, or handed over
 * already): a caller that submits its next job as soon as one settles must find the thread that ran it free. */
typedef struct SideTask {
    struct SideTask *next;
    void *(*run)(struct SideTask *task);
} SideTask;

/* What reaches the JS thread through the threadsafe function: a flush's result or a queued write's. */
typedef enum { DONE_SIDE_JOB, DONE_WRITE } DoneKind;

#define CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* Every completion starts with its kind, so the one threadsafe function can tell them apart. */
typedef struct SideJob {
    DoneKind kind; /* DONE_SIDE_JOB */
    SideTask task;
    napi_threadsafe_function tsfn;
    napi_deferred deferred;
    SideOp op;
    int fd;
    int64_t offset;
    int64_t length;
    /* SIDE_COPY_RANGE: the file and offset copied to (fd and offset are the source). */
    int fd_out;
    int64_t offset_out;
    int err;
} SideJob;

static pthread_mutex_t side_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t side_wake = PTHREAD_COND_INITIALIZER;
static SideTask *side_head, *side_tail;
/* A thread is busy from taking a task until it has run it, and it hands the task's completion to the JS thread
 * only after that; the others are free (waiting, or on their way back to the queue). Counting free rather than
 * waiting threads matters: a caller that flushes again as soon as its flush settles would otherwise find the thread
 * that just ran it not yet waiting, and start another one every time. */
static int side_queued, side_threads, side_busy;

static const char *side_syscall(SideOp op)
{
    return op == SIDE_FDATASYNC ? "fdatasync" : op == SIDE_COPY_RANGE ? "copy_file_range" : "sync_file_range";
}

/*
 * Buffered writes, one file at a time (pwritevQueued). Every buffered write to a regular file takes the inode's
 * lock for its whole copy into the page cache (ext4, xfs, btrfs, tmpfs), so writes to one file run one after the
 * other whatever the number of threads issuing them. Issued from libuv's pool, four 1 MiB writes in flight kept
 * one thread copying and the others spinning on that lock (rwsem_spin_on_owner: a quarter of the samples), on the
 * cores the event loop needs; and every submission woke a pool thread, which cost the event loop 20-80 us per
 * write on this VM (the futex wake, then being preempted by the thread it woke). Here each file has a queue, and
 * one side thread drains it while it is not empty: a write queued behind others costs a lock and a list append,
 * and the thread goes from one write to the next without waiting for the event loop. Writes to different files
 * still run in parallel, on threads of their own.
 */
typedef struct WriteJob {
    DoneKind kind; /* DONE_WRITE */
    struct WriteJob *next;
    napi_threadsafe_function tsfn;
    napi_deferred deferred;
    /* The JS array of buffers: referenced until the write settles, so that the buffers cannot go away under it. */
    napi_ref keep;
    int64_t position;
    size_t total;
    int err;
    int iovcnt;
    struct iovec iov[];
} WriteJob;

/* A file with writes queued or being written; it exists exactly while a side thread is assigned to drain it. */
typedef struct FdQueue {
    SideTask task;
    struct FdQueue *next_queue;
    int fd;
    WriteJob *head, *tail;
} FdQueue;

/* Lock order: write_lock, then side_lock. */
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;
static FdQueue *write_queues;

/* On the JS thread: settle a side job's or a write's promise; env is NULL when the environment is going away. */
static void side_settle(napi_env env, napi_value js_cb, void *context, void *data)
{
    AddonState *state = context;
    if (*(DoneKind *)data == DONE_WRITE) {
        WriteJob *job = data;
        if (env != NULL) {
            settle_errno(env, job->deferred, job->err, "pwritev");
            napi_delete_reference(env, job->keep);
        }
        free(job);
    } else {
        SideJob *job = data;
        if (env != NULL) settle_errno(env, job->deferred, job->err, side_syscall(job->op));
        free(job);
    }
    if (env != NULL && --state->side_pending == 0) napi_unref_threadsafe_function(env, state->side_tsfn);
}

/* The whole range with copy_file_range(2), as QEMU's handle_aiocb_copy_range(): no progress (the source ends
 * early) is ENOSPC and a kernel without the call ENOTSUP, both of which tell the caller to copy through a buffer
 * instead. 0 or an errno. */
static int copy_range_run(SideJob *job)
{
#ifdef __linux__
    loff_t in = (loff_t)job->offset;
    loff_t out = (loff_t)job->offset_out;
    int64_t left = job->length;
    while (left > 0) {
        size_t chunk = left > (int64_t)0x40000000 ? (size_t)0x40000000 : (size_t)left;
        ssize_t n = copy_file_range(job->fd, &in, job->fd_out, &out, chunk, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno == ENOSYS ? ENOTSUP : errno;
        if (n == 0) return ENOSPC;
        left -= n;
    }
    return 0;
#else
    (void)job;
    return ENOTSUP;
#endif
}

static void *side_job_run(SideTask *task)
{
    SideJob *job = CONTAINER_OF(task, SideJob, task);
    int ret;
    if (job->op == SIDE_COPY_RANGE) {
        job->err = copy_range_run(job);
        return job;
    }
    do {
        if (job->op == SIDE_FDATASYNC) {
            ret = fdatasync(job->fd);
        } else {
#ifdef __linux__
            ret = sync_file_range(job->fd, (off_t)job->offset, (off_t)job->length, SYNC_FILE_RANGE_WRITE);
#else
            ret = -1;
            errno = ENOSYS;
#endif
        }
    } while (ret < 0 && errno == EINTR);
    job->err = ret < 0 ? errno : 0;
    return job;
}

static void *side_thread(void *arg)
{
#ifdef __linux__
    pthread_setname_np(pthread_self(), "blockgraph-side");
#endif
    pthread_mutex_lock(&side_lock);
    for (;;) {
        while (side_head == NULL) {
            struct timespec deadline;
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_sec += SIDE_IDLE_SECONDS;
            int r = pthread_cond_timedwait(&side_wake, &side_lock, &deadline);
            if (r == ETIMEDOUT && side_head == NULL) {
                side_threads--;
                pthread_mutex_unlock(&side_lock);
                return NULL;
            }
        }
        SideTask *task = side_head;
        side_head = task->next;
        if (side_head == NULL) side_tail = NULL;
        side_queued--;
        side_busy++;
        pthread_mutex_unlock(&side_lock);
        SideJob *done = task->run(task);
        pthread_mutex_lock(&side_lock);
        side_busy--;
        if (done != NULL) {
            pthread_mutex_unlock(&side_lock);
            /* napi_closing: the environment is gone, and its promise with it. */
            if (napi_call_threadsafe_function(done->tsfn, done, napi_tsfn_nonblocking) != napi_ok) free(done);
            pthread_mutex_lock(&side_lock);
        }
    }
}

/* Queue a task; start a thread when there are more tasks queued than free threads. 0, or the pthread_create error
 * when no thread is left to run it (the task is then taken off the queue again). */
static int side_submit(SideTask *task)
{
    task->next = NULL;
    pthread_mutex_lock(&side_lock);
    if (side_tail) side_tail->next = task;
    else side_head = task;
    side_tail = task;
    side_queued++;
    int err = 0;
    if (side_queued > side_threads - side_busy && side_threads < SIDE_MAX_THREADS) {
        pthread_attr_t attr;
        pthread_t thread;
        err = pthread_attr_init(&attr);
        if (err == 0) {
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            pthread_attr_setstacksize(&attr, 64 * 1024);
            err = pthread_create(&thread, &attr, side_thread, NULL);
            pthread_attr_destroy(&attr);
        }
        if (err == 0) side_threads++;
    }
    if (err != 0 && side_threads > 0) err = 0; /* a running thread will take it */
    if (err != 0) {
        /* No thread at all: the task is the only one queued (any earlier one had a thread). */
        side_head = side_tail = NULL;
        side_queued = 0;
    } else {
        pthread_cond_signal(&side_wake);
    }
    pthread_mutex_unlock(&side_lock);
    return err;
}

/* The environment's threadsafe function for side-thread completions, created on first use and unreferenced while
 * nothing is in flight. NULL (with an exception pending) when it cannot be made. */
static AddonState *side_state(napi_env env)
{
    AddonState *state;
    if (napi_get_instance_data(env, (void **)&state) != napi_ok || state == NULL) {
        napi_throw_error(env, NULL, "blockgraph_native: no instance data");
        return NULL;
    }
    napi_value name;
    if (state->side_tsfn == NULL &&
        (napi_create_string_utf8(env, "blockgraph:side-thread", NAPI_AUTO_LENGTH, &name) != napi_ok ||
         napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, state, side_settle,
                                         &state->side_tsfn) != napi_ok ||
         napi_unref_threadsafe_function(env, state->side_tsfn) != napi_ok)) {
        state->side_tsfn = NULL;
        napi_throw_error(env, NULL, "blockgraph_native: could not set up the side threads");
        return NULL;
    }
    return state;
}

static napi_value start_side_job_to(napi_env env, SideOp op, int fd, int64_t offset, int64_t length, int fd_out,
                                    int64_t offset_out)
{
    AddonState *state = side_state(env);
    if (state == NULL) return NULL;
    SideJob *job = calloc(1, sizeof(*job));
    if (job == NULL) {
        throw_errno(env, ENOMEM, side_syscall(op));
        return NULL;
    }
    job->kind = DONE_SIDE_JOB;
    job->task.run = side_job_run;
    job->tsfn = state->side_tsfn;
    job->op = op;
    job->fd = fd;
    job->offset = offset;
    job->length = length;
    job->fd_out = fd_out;
    job->offset_out = offset_out;
    napi_value promise;
    if (napi_create_promise(env, &job->deferred, &promise) != napi_ok) {
        free(job);
        napi_throw_error(env, NULL, "blockgraph_native: could not create a promise");
        return NULL;
    }
    if (state->side_pending++ == 0) napi_ref_threadsafe_function(env, state->side_tsfn);
    int err = side_submit(&job->task);
    if (err != 0) {
        /* The promise stays pending forever if we returned it unsettled: reject it here instead. */
        if (--state->side_pending == 0) napi_unref_threadsafe_function(env, state->side_tsfn);
        settle_errno(env, job->deferred, err, "pthread_create");
        free(job);
    }
    return promise;
}

/* Write all of the job's buffers, as pwriteFull() does in JS: a short write goes on where it stopped, a write
 * that makes no progress is an I/O error, EINTR is retried. */
static void write_job_run(int fd, WriteJob *job)
{
    struct iovec *iov = job->iov;
    int left = job->iovcnt;
    int64_t position = job->position;
    size_t remaining = job->total;
    job->err = 0;
    while (remaining > 0) {
        while (left > 0 && iov->iov_len == 0) {
            iov++;
            left--;
        }
        ssize_t n = pwritev(fd, iov, left > IOV_MAX ? IOV_MAX : left, (off_t)position);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            job->err = n < 0 ? errno : EIO;
            return;
        }
        position += n;
        remaining -= (size_t)n;
        size_t done = (size_t)n;
        while (done > 0) {
            size_t step = done < iov->iov_len ? done : iov->iov_len;
            iov->iov_base = (char *)iov->iov_base + step;
            iov->iov_len -= step;
            done -= step;
            if (iov->iov_len == 0) {
                iov++;
                left--;
            }
        }
    }
}

static void write_queue_unlink(FdQueue *q)
{
    for (FdQueue **pp = &write_queues; *pp != NULL; pp = &(*pp)->next_queue) {
        if (*pp == q) {
            *pp = q->next_queue;
            return;
        }
    }
}

/* On a side thread: write the file's queued writes in order until none is left, then give the queue up. */
static void *write_drain(SideTask *task)
{
    FdQueue *q = CONTAINER_OF(task, FdQueue, task);
    pthread_mutex_lock(&write_lock);
    for (;;) {
        WriteJob *job = q->head;
        if (job == NULL) break;
        q->head = job->next;
        if (q->head == NULL) q->tail = NULL;
        pthread_mutex_unlock(&write_lock);
        write_job_run(q->fd, job);
        if (napi_call_threadsafe_function(job->tsfn, job, napi_tsfn_nonblocking) != napi_ok) free(job);
        pthread_mutex_lock(&write_lock);
    }
    write_queue_unlink(q);
    pthread_mutex_unlock(&write_lock);
    free(q);
    return NULL;
}

/* Append a write to its file's queue, assigning a side thread to the queue when it has none. 0 or an errno. */
static int write_enqueue(int fd, WriteJob *job)
{
    job->next = NULL;
    pthread_mutex_lock(&write_lock);
    FdQueue *q = write_queues;
    while (q != NULL && q->fd != fd) q = q->next_queue;
    int err = 0;
    if (q != NULL) {
        /* Its thread may have taken the last job already; it looks at the queue again before giving it up. */
        if (q->tail != NULL) q->tail->next = job;
        else q->head = job;
        q->tail = job;
    } else if ((q = calloc(1, sizeof(*q))) == NULL) {
        err = ENOMEM;
    } else {
        q->task.run = write_drain;
        q->fd = fd;
        q->head = q->tail = job;
        q->next_queue = write_queues;
        write_queues = q;
        err = side_submit(&q->task);
        if (err != 0) {
            write_queues = q->next_queue;
            free(q);
        }
    }
    pthread_mutex_unlock(&write_lock);
    return err;
}

/* pwritevQueued(fd, buffers, position): resolves once all of the buffers are written at position. */
static napi_value pwritev_queued(napi_env env, napi_callback_info info)
{
    napi_value argv[3];
    int fd;
    int64_t position;
    bool is_array = false;
    uint32_t count;
    if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], &fd)) return NULL;
    if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
        napi_get_array_length(env, argv[1], &count) != napi_ok) {
        throw_arg_error(env, "buffers must be an array of Uint8Array");
        return NULL;
    }
    if (!get_integer(env, argv[2], "position", &position)) return NULL;
    if (position < 0) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "position must not be negative");
        return NULL;
    }
    AddonState *state = side_state(env);
    if (state == NULL) return NULL;
    WriteJob *job = calloc(1, sizeof(*job) + (size_t)count * sizeof(struct iovec));
    if (job == NULL) {
        throw_errno(env, ENOMEM, "pwritev");
        return NULL;
    }
    job->kind = DONE_WRITE;
    job->tsfn = state->side_tsfn;
    job->position = position;
    job->iovcnt = (int)count;
    for (uint32_t i = 0; i < count; i++) {
        napi_value element;
        void *data;
        size_t length;
        if (napi_get_element(env, argv[1], i, &element) != napi_ok || !get_bytes(env, element, &data, &length)) {
            free(job);
            return NULL;
        }
        job->iov[i].iov_base = data;
        job->iov[i].iov_len = length;
        job->total += length;
    }
    napi_value promise;
    if (napi_create_reference(env, argv[1], 1, &job->keep) != napi_ok) {
        free(job);
        napi_throw_error(env, NULL, "blockgraph_native: could not reference the buffers");
        return NULL;
    }
    if (napi_create_promise(env, &job->deferred, &promise) != napi_ok) {
        napi_delete_reference(env, job->keep);
        free(job);
        napi_throw_error(env, NULL, "blockgraph_native: could not create a promise");
        return NULL;
    }
    if (state->side_pending++ == 0) napi_ref_threadsafe_function(env, state->side_tsfn);
    int err = write_enqueue(fd, job);
    if (err != 0) {
        if (--state->side_pending == 0) napi_unref_threadsafe_function(env, state->side_tsfn);
        settle_errno(env, job->deferred, err, err == ENOMEM ? "pwritev" : "pthread_create");
        napi_delete_reference(env, job->keep);
        free(job);
    }
    return promise;
}

static napi_value start_side_job(napi_env env, SideOp op, int fd, int64_t offset, int64_t length)
{
    return start_side_job_to(env, op, fd, offset, length, -1, 0);
}

static napi_value do_fdatasync_async(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    int fd;
    if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], &fd)) return NULL;
    return start_side_job(env, SIDE_FDATASYNC, fd, 0, 0);
}

static napi_value do_start_writeback_async(napi_env env, napi_callback_info info)
{
    int fd;
    int64_t offset, length;
    if (!get_fd_range(env, info, &fd, &offset, &length)) return NULL;
    return start_side_job(env, SIDE_START_WRITEBACK, fd, offset, length);
}

/* copyFileRangeAsync(fdIn, offsetIn, fdOut, offsetOut, length) */
static napi_value do_copy_file_range_async(napi_env env, napi_callback_info info)
{
    napi_value argv[5];
    int fd_in, fd_out;
    int64_t offset_in, offset_out, length;
    if (!get_args(env, info, 5, argv) || !get_fd(env, argv[0], &fd_in) ||
        !get_integer(env, argv[1], "offsetIn", &offset_in) || !get_fd(env, argv[2], &fd_out) ||
        !get_integer(env, argv[3], "offsetOut", &offset_out) || !get_integer(env, argv[4], "length", &length)) {
        return NULL;
    }
    if (offset_in < 0 || offset_out < 0 || length < 0) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "offsets and length must not be negative");
        return NULL;
    }
    return start_side_job_to(env, SIDE_COPY_RANGE, fd_in, offset_in, length, fd_out, offset_out);
}

/* cachestat(2) (Linux 6.5+): how many pages of a file range are in the page cache, dirty, under writeback.
 * glibc has no wrapper yet, so it goes through syscall(); the number is the same on every architecture. */
#if defined(__linux__) && !defined(__NR_cachestat)
#define __NR_cachestat 451
#endif

struct bg_cachestat_range {
    uint64_t off;
    uint64_t len;
};

struct bg_cachestat {
    uint64_t nr_cache;
    uint64_t nr_dirty;
    uint64_t nr_writeback;
    uint64_t nr_evicted;
    uint64_t nr_recently_evicted;
};

static bool set_count(napi_env env, napi_value obj, const char *name, uint64_t value)
{
    napi_value v;
    return napi_create_double(env, (double)value, &v) == napi_ok &&
           napi_set_named_property(env, obj, name, v) == napi_ok;
}

static napi_value page_cache_stat(napi_env env, napi_callback_info info)
{
    int fd;
    int64_t offset, length;
    if (!get_fd_range(env, info, &fd, &offset, &length)) return NULL;
#ifdef __linux__
    struct bg_cachestat_range range = {(uint64_t)offset, (uint64_t)length};
    struct bg_cachestat cs;
    memset(&cs, 0, sizeof(cs));
    if (syscall(__NR_cachestat, (unsigned int)fd, &range, &cs, 0u) < 0) {
        throw_errno(env, errno, "cachestat");
        return NULL;
    }
    napi_value result;
    if (napi_create_object(env, &result) != napi_ok || !set_count(env, result, "cached", cs.nr_cache) ||
        !set_count(env, result, "dirty", cs.nr_dirty) || !set_count(env, result, "writeback", cs.nr_writeback) ||
        !set_count(env, result, "evicted", cs.nr_evicted) ||
        !set_count(env, result, "recentlyEvicted", cs.nr_recently_evicted)) {
        napi_throw_error(env, NULL, "blockgraph_native: could not build the cachestat result");
        return NULL;
    }
    return result;
#else
    throw_errno(env, ENOSYS, "cachestat");
    return NULL;
#endif
}

static napi_value ofd_lock(napi_env env, napi_callback_info info)
{
    AddonState *state = get_state(env);
    int fd;
    struct flock fl;
    if (state == NULL || !get_lock_args(env, info, true, &fd, &fl)) {
        return NULL;
    }
    int cmd = F_SETLK;
    const char *syscall = "fcntl(F_SETLK)";
#ifdef F_OFD_SETLK
    if (state->active == LOCK_KIND_OFD) {
        cmd = F_OFD_SETLK;
        syscall = "fcntl(F_OFD_SETLK)";
    }
#endif
    int ret;
    do {
        ret = fcntl(fd, cmd, &fl);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0) {
        throw_errno(env, errno, syscall);
    }
    return NULL;
}

static napi_value ofd_test(napi_env env, napi_callback_info info)
{
    AddonState *state = get_state(env);
    int fd;
    struct flock fl;
    if (state == NULL || !get_lock_args(env, info, false, &fd, &fl)) {
        return NULL;
    }
    int cmd = F_GETLK;
    const char *syscall = "fcntl(F_GETLK)";
#ifdef F_OFD_GETLK
    if (state->active == LOCK_KIND_OFD) {
        cmd = F_OFD_GETLK;
        syscall = "fcntl(F_OFD_GETLK)";
    }
#endif
    int ret;
    do {
        ret = fcntl(fd, cmd, &fl);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0) {
        throw_errno(env, errno, syscall);
        return NULL;
    }
    return make_boolean(env, fl.l_type == F_UNLCK);
}

static napi_value lock_kind_value(napi_env env, LockKind kind)
{
    napi_value result;
    const char *name = kind == LOCK_KIND_OFD ? "ofd" : "posix";
    if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &result) != napi_ok) {
        napi_throw_error(env, NULL, "napi_create_string_utf8 failed");
        return NULL;
    }
    return result;
}

static napi_value get_lock_kind(napi_env env, napi_callback_info info)
{
    AddonState *state = get_state(env);
    return state == NULL ? NULL : lock_kind_value(env, state->active);
}

/*
 * Lets tests exercise the POSIX fallback on kernels that have OFD locks.
 * Asking for OFD locks where the kernel has none fails with EOPNOTSUPP.
 */
static napi_value set_lock_kind(napi_env env, napi_callback_info info)
{
    AddonState *state = get_state(env);
    napi_value argv[1];
    if (state == NULL || !get_args(env, info, 1, argv)) {
        return NULL;
    }
    char buf[8];
    size_t len = 0;
    if (napi_get_value_string_utf8(env, argv[0], buf, sizeof(buf), &len) != napi_ok) {
        throw_arg_error(env, "kind must be a string");
        return NULL;
    }
    if (strcmp(buf, "posix") == 0) {
        state->active = LOCK_KIND_POSIX;
    } else if (strcmp(buf, "ofd") == 0) {
        if (state->available != LOCK_KIND_OFD) {
            throw_errno(env, EOPNOTSUPP, "fcntl(F_OFD_GETLK)");
            return NULL;
        }
        state->active = LOCK_KIND_OFD;
    } else {
        napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "kind must be 'ofd' or 'posix'");
    }
    return NULL;
}


#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

/*
 * preadv2/pwritev2 with RWF_NOWAIT: done right here on the main thread when the data is in the page cache
 * (a cache hit costs a couple of microseconds, against tens for a thread-pool round trip). Returns the bytes
 * transferred, -1 when the call would block (the caller falls back to the thread pool), -2 when the kernel
 * or file system does not support RWF_NOWAIT at all.
 */
static napi_value rw_nowait(napi_env env, napi_callback_info info, bool write)
{
    napi_value argv[3];
    int fd;
    int64_t position;
    void *data;
    size_t length;
    if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], &fd) || !get_bytes(env, argv[1], &data, &length) ||
        !get_integer(env, argv[2], "position", &position)) {
        return NULL;
    }
#ifdef __linux__
    struct iovec iov = { .iov_base = data, .iov_len = length };
    ssize_t n;
    do {
        n = write ? pwritev2(fd, &iov, 1, (off_t)position, RWF_NOWAIT)
                  : preadv2(fd, &iov, 1, (off_t)position, RWF_NOWAIT);
    } while (n < 0 && errno == EINTR);
    if (n >= 0) {
        return make_number(env, (double)n);
    }
    if (errno == EAGAIN) {
        return make_number(env, -1);
    }
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) {
        return make_number(env, -2);
    }
    throw_errno(env, errno, write ? "pwritev2" : "preadv2");
    return NULL;
#else
    return make_number(env, -2);
#endif
}

static napi_value pread_nowait(napi_env env, napi_callback_info info)
{
    return rw_nowait(env, info, false);
}

static napi_value pwrite_nowait(napi_env env, napi_callback_info info)
{
    return rw_nowait(env, info, true);
}

static void free_state(napi_env env, void *data, void *hint)
{
    free(data);
}

static bool export_function(napi_env env, napi_value exports, const char *name, napi_callback cb)
{
    napi_value fn;
    return napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn) == napi_ok &&
           napi_set_named_property(env, exports, name, fn) == napi_ok;
}

static bool export_int(napi_env env, napi_value exports, const char *name, int32_t value)
{
    napi_value v;
    return napi_create_int32(env, value, &v) == napi_ok &&
           napi_set_named_property(env, exports, name, v) == napi_ok;
}

#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef FALLOC_FL_ZERO_RANGE
#define FALLOC_FL_ZERO_RANGE 0x10
#endif

NAPI_MODULE_INIT()
{
    AddonState *state = calloc(1, sizeof(*state));
    if (state == NULL) {
        napi_throw_error(env, "ENOMEM", "blockgraph_native: out of memory");
        return NULL;
    }
    state->available = probe_lock_kind();
    state->active = state->available;
    if (napi_set_instance_data(env, state, free_state, NULL) != napi_ok) {
        free(state);
        napi_throw_error(env, NULL, "blockgraph_native: napi_set_instance_data failed");
        return NULL;
    }

    napi_value version;
    bool ok = napi_create_string_utf8(env, BLOCKGRAPH_NATIVE_VERSION, NAPI_AUTO_LENGTH,
                                      &version) == napi_ok &&
              napi_set_named_property(env, exports, "version", version) == napi_ok &&
              export_int(env, exports, "FALLOC_FL_KEEP_SIZE", FALLOC_FL_KEEP_SIZE) &&
              export_int(env, exports, "FALLOC_FL_PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE) &&
              export_int(env, exports, "FALLOC_FL_ZERO_RANGE", FALLOC_FL_ZERO_RANGE) &&
              export_function(env, exports, "seekData", seek_data) &&
              export_function(env, exports, "seekHole", seek_hole) &&
              export_function(env, exports, "fallocate", do_fallocate) &&
              export_function(env, exports, "fallocateAsync", do_fallocate_async) &&
              export_function(env, exports, "fdatasyncAsync", do_fdatasync_async) &&
              export_function(env, exports, "startWritebackAsync", do_start_writeback_async) &&
              export_function(env, exports, "pwritevQueued", pwritev_queued) &&
              export_function(env, exports, "copyFileRangeAsync", do_copy_file_range_async) &&
              export_function(env, exports, "pageCacheStat", page_cache_stat) &&
              export_function(env, exports, "ofdLock", ofd_lock) &&
              export_function(env, exports, "ofdTest", ofd_test) &&
              export_function(env, exports, "lockKind", get_lock_kind) &&
              export_function(env, exports, "setLockKind", set_lock_kind) &&
              export_function(env, exports, "preadNoWait", pread_nowait) &&
              export_function(env, exports, "pwriteNoWait", pwrite_nowait);
    if (!ok) {
        napi_throw_error(env, NULL, "blockgraph_native: failed to build exports");
        return NULL;
    }
    return exports;
}
