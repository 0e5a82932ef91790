/* Make a process's files durable the way dimsekit's archive makes its own:
 * every regular file it wrote is fsynced as it is closed, then the directory
 * holding it.  LD_PRELOAD it into DCMTK's storescp (bench_store.py's receiver
 * "dcmtk-fsync") to see what a C receiver does at the same durability: the
 * file's data and its name on the device before the C-STORE-RSP goes out
 * (storescp writes a file, closes it, then answers).
 *
 * Build: cc -shared -fPIC -O2 -o fsync_preload.so fsync_preload.c -ldl
 * A benchmark aid only; not part of dimsekit.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void make_durable(int fd)
{
    struct stat st;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || (flags & O_ACCMODE) == O_RDONLY)
        return;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return;
    fsync(fd);
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return;
    path[n] = '\0';
    int dir = open(dirname(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
        fsync(dir);
        /* the real close: this one is ours */
        static int (*real_close)(int);
        if (!real_close)
            real_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
        real_close(dir);
    }
}

int close(int fd)
{
    static int (*real_close)(int);
    if (!real_close)
        real_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
    make_durable(fd);
    return real_close(fd);
}

int fclose(FILE *stream)
{
    static int (*real_fclose)(FILE *);
    if (!real_fclose)
        real_fclose = (int (*)(FILE *))dlsym(RTLD_NEXT, "fclose");
    if (stream) {
        fflush(stream);
        make_durable(fileno(stream));
    }
    return real_fclose(stream);
}
