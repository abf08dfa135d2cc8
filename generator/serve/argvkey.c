/* Puts tritongen's admin key into tritonserver's arguments in memory, never on its command line.

Triton 2.51 reads its admin-API restriction (--http-restricted-api, --grpc-restricted-protocol) only from
argv, and every local user can read a process's command line (/proc/PID/cmdline, ps). tritongen writes a
placeholder there instead, puts what stands for it in the environment (TRITONGEN_ARGV_KEY, readable only by
the same user and root) and loads this library into the server with LD_PRELOAD. Before tritonserver's
main(), in tritonserver only (not in the launch script's shell or mpirun on the way), this points every
argument holding the placeholder at a heap copy with the value in its place: the command line keeps the
placeholder. It then blanks the value in the environment's memory and takes it and LD_PRELOAD out of the
environment, so the Python backend stubs inherit neither. A placeholder with no value to put there stops
the server. Built and loaded by generator/serve/argvkey.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLACEHOLDER "@TRITONGEN_ADMIN_KEY@"
#define VALUE_VAR "TRITONGEN_ARGV_KEY"

static int is_tritonserver(void) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return 0;
    exe[n] = '\0';
    const char *base = strrchr(exe, '/');
    return strcmp(base ? base + 1 : exe, "tritonserver") == 0;
}

/* arg with every placeholder replaced by value, on the heap (NULL when out of memory). */
static char *filled(const char *arg, const char *value) {
    size_t plen = strlen(PLACEHOLDER), vlen = strlen(value), count = 0;
    for (const char *p = strstr(arg, PLACEHOLDER); p; p = strstr(p + plen, PLACEHOLDER))
        count++;
    char *out = malloc(strlen(arg) + count * vlen + 1), *o = out;
    if (!out)
        return NULL;
    for (const char *p; (p = strstr(arg, PLACEHOLDER)); arg = p + plen) {
        memcpy(o, arg, (size_t)(p - arg));
        o += p - arg;
        memcpy(o, value, vlen);
        o += vlen;
    }
    strcpy(o, arg);
    return out;
}

static void refuse(const char *why) {
    fprintf(stderr, "tritongen argvkey: %s: tritonserver not started\n", why);
    _exit(2);
}

__attribute__((constructor)) static void fill_placeholders(int argc, char **argv) {
    if (!is_tritonserver())
        return;
    char *value = getenv(VALUE_VAR);
    for (int i = 1; i < argc; i++) {
        if (!strstr(argv[i], PLACEHOLDER))
            continue;
        if (!value || !*value)
            refuse(VALUE_VAR " is not set");
        if (!(argv[i] = filled(argv[i], value)))
            refuse("out of memory");
    }
    if (value)
        memset(value, 0, strlen(value));
    unsetenv(VALUE_VAR);
    unsetenv("LD_PRELOAD");
}
