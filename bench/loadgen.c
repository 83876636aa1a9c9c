/* loadgen: a small RESP load generator for bench/cache.py: GET (and --set-ratio SETs) of keys
 * key:<id>, id in [0, n), Zipf or uniform. libc only; bench/cache.py builds it with
 *     gcc -O2 -o loadgen bench/loadgen.c
 * Usage: loadgen [-h 127.0.0.1] [-p 6379] [-c 50] [-P 1] [-d 5] [-n 100000]
 *                [--dist zipf|uniform] [-s 1.0] [--set-ratio 0] [--value-size 100] [--seed 1]
 * -c connections each send batches of -P pipelined commands (the next once the batch is
 * answered) for -d seconds. zipf: rank r (1 hottest) weighs 1/r^s; the CDF over the n ranks is
 * precomputed and binary-searched per request; rank -> key id by a fixed random permutation
 * (depends on --seed only), so the hot keys spread over the shards. Nothing is sent on connect
 * (nutcracker closes connections that send CLIENT SETINFO). Replies (simple strings, errors,
 * integers, bulk strings and nil, arrays) are parsed from a per-connection buffer. One thread,
 * epoll(7) (a poll(2) over every connection per wake-up cost more CPU per request than some of
 * the targets measured). Prints one JSON line: requests (replies before the deadline), seconds,
 * requests_per_s, p50_us/p99_us/p999_us/max_us (write of a request's batch to its reply: per
 * request with -P 1), errors (error replies), nils, disconnects.
 * Exit status 0; 1 on a usage or connection error; 2 if a connection was lost mid-run. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HIST_US 1000000 /* 1-µs latency buckets up to 1 s; slower ones count in the last */

typedef struct {
    int fd;
    char *rbuf, *wbuf;
    size_t rlen, rcap, wlen, woff, wcap;
    int outstanding; /* replies still due for the current batch */
    int want_out;    /* EPOLLOUT armed: part of the batch is still unwritten */
    double sent;     /* when the current batch was written */
} conn_t;

static uint64_t rng_state = 88172645463325292ULL;
static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}
static double rnd01(void) { return (double)(rnd() >> 11) * (1.0 / 9007199254740992.0); }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* r^-s without libm: exp(-s ln r), ln by atanh series on the mantissa, exp by Taylor series. */
static double rank_weight(double r, double s) {
    if (s == 1.0) return 1.0 / r;
    int e = 0;
    while (r >= 2.0) { r /= 2.0; e++; }
    double z = (r - 1.0) / (r + 1.0), z2 = z * z, term = z, ln = 0;
    for (int k = 1; k < 60; k += 2, term *= z2) ln += term / k;
    double y = -s * (2.0 * ln + e * 0.69314718055994530942), scale = 1.0;
    while (y < -0.5) { y += 0.69314718055994530942; scale *= 0.5; }
    while (y > 0.5) { y -= 0.69314718055994530942; scale *= 2.0; }
    double ex = 1.0, t = 1.0;
    for (int k = 1; k < 30; k++) ex += (t *= y / k);
    return ex * scale;
}

static double *cdf;  /* cdf[i]: P(rank <= i + 1), zipf only */
static int32_t *perm; /* rank - 1 -> key id */
static long nkeys = 100000;
static int zipf = 1;
static double set_ratio = 0.0;
static char *value;
static int value_size = 100;

static long next_key(void) {
    if (!zipf) return (long)(rnd01() * (double)nkeys) % nkeys;
    double u = rnd01();
    long lo = 0, hi = nkeys - 1; /* first i with cdf[i] >= u */
    while (lo < hi) {
        long mid = lo + (hi - lo) / 2;
        if (cdf[mid] >= u) hi = mid; else lo = mid + 1;
    }
    return perm[lo];
}

static void append_command(conn_t *c) {
    char key[32];
    int klen = snprintf(key, sizeof key, "key:%ld", next_key());
    char *w = c->wbuf + c->wlen;
    if (set_ratio > 0 && rnd01() < set_ratio) {
        w += sprintf(w, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n", klen, key, value_size);
        memcpy(w, value, (size_t)value_size);
        memcpy(w += value_size, "\r\n", 2);
        w += 2;
    } else {
        w += sprintf(w, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", klen, key);
    }
    c->wlen = (size_t)(w - c->wbuf);
}

/* Length of the complete reply at p[0..n), 0 if incomplete, -1 if malformed. */
static long reply_len(const char *p, size_t n, int *kind) {
    const char *eol = memchr(p, '\n', n);
    if (!eol) return 0;
    if (eol == p || eol[-1] != '\r') return -1;
    long head = eol - p + 1;
    *kind = p[0];
    switch (p[0]) {
    case '+': case '-': case ':':
        return head;
    case '$': {
        long len = strtol(p + 1, NULL, 10);
        if (len < 0) { *kind = 'n'; return head; }
        if ((size_t)(head + len + 2) > n) return 0;
        return head + len + 2;
    }
    case '*': {
        long count = strtol(p + 1, NULL, 10), off = head;
        for (long i = 0; i < count; i++) {
            int sub;
            long l = reply_len(p + off, n - (size_t)off, &sub);
            if (l <= 0) return l;
            off += l;
        }
        return off;
    }
    default:
        return -1;
    }
}

static int flush_out(conn_t *c) {
    while (c->woff < c->wlen) {
        ssize_t k = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (k < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        c->woff += (size_t)k;
    }
    c->woff = c->wlen = 0;
    return 0;
}

static int send_batch(conn_t *c, int pipeline) {
    for (int i = 0; i < pipeline; i++) append_command(c);
    c->outstanding = pipeline;
    c->sent = now_s();
    return flush_out(c);
}

static int dial(const char *host, const char *port) {
    struct addrinfo hints = {0}, *res, *ai;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0) return -1;
    int fd = -1;
    for (ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) { close(fd); fd = -1; }
    }
    freeaddrinfo(res);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static double percentile(const uint32_t *hist, uint64_t total, double q) {
    if (!total) return 0;
    uint64_t want = (uint64_t)(q * (double)total), seen = 0;
    if ((double)want < q * (double)total || want < 1) want++;
    for (long i = 0; i < HIST_US; i++)
        if ((seen += hist[i]) >= want) return (double)i;
    return HIST_US;
}

static void lost(conn_t *c, int i, long *alive, long *disconnects) {
    fprintf(stderr, "loadgen: connection %d lost\n", i);
    close(c->fd);
    c->fd = -1, --*alive, ++*disconnects;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen [-h host] [-p port] [-c conns] [-P pipeline] [-d seconds] "
                    "[-n keys] [--dist zipf|uniform] [-s exponent] [--set-ratio r] "
                    "[--value-size bytes] [--seed n]\n");
    exit(1);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *port = "6379";
    int nconns = 50, pipeline = 1;
    double duration = 5.0, s = 1.0;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "-h")) host = v;
        else if (!strcmp(a, "-p")) port = v;
        else if (!strcmp(a, "-c")) nconns = atoi(v);
        else if (!strcmp(a, "-P")) pipeline = atoi(v);
        else if (!strcmp(a, "-d")) duration = atof(v);
        else if (!strcmp(a, "-n")) nkeys = atol(v);
        else if (!strcmp(a, "-s")) s = atof(v);
        else if (!strcmp(a, "--dist") && (!strcmp(v, "zipf") || !strcmp(v, "uniform")))
            zipf = !strcmp(v, "zipf");
        else if (!strcmp(a, "--set-ratio")) set_ratio = atof(v);
        else if (!strcmp(a, "--value-size")) value_size = atoi(v);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else usage();
        i++;
    }
    if (nconns < 1 || pipeline < 1 || nkeys < 1 || duration <= 0 || value_size < 0) usage();

    /* The permutation depends on --seed only; the request stream on the seed and the pid. */
    rng_state ^= seed * 0x9E3779B97F4A7C15ULL;
    perm = malloc(sizeof *perm * (size_t)nkeys);
    for (long i = 0; i < nkeys; i++) perm[i] = (int32_t)i;
    for (long i = nkeys - 1; i > 0; i--) {
        long j = (long)(rnd() % (uint64_t)(i + 1));
        int32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t;
    }
    double sum = 0;
    if (zipf) {
        cdf = malloc(sizeof *cdf * (size_t)nkeys);
        for (long r = 0; r < nkeys; r++) cdf[r] = (sum += rank_weight((double)(r + 1), s));
        for (long r = 0; r < nkeys; r++) cdf[r] /= sum;
        cdf[nkeys - 1] = 1.0;
    }
    rng_state ^= (uint64_t)getpid() * 0xD1B54A32D192ED03ULL + (uint64_t)time(NULL);
    value = malloc((size_t)value_size + 1);
    memset(value, 'x', (size_t)value_size);

    conn_t *conns = calloc((size_t)nconns, sizeof *conns);
    int ep = epoll_create1(0);
    struct epoll_event evs[256];
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if ((c->fd = dial(host, port)) < 0) {
            fprintf(stderr, "loadgen: cannot connect to %s:%s: %s\n", host, port, strerror(errno));
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
            fprintf(stderr, "loadgen: epoll_ctl: %s\n", strerror(errno));
            return 1;
        }
        c->rbuf = malloc(c->rcap = 65536);
        c->wbuf = malloc(c->wcap = (size_t)pipeline * (96 + (size_t)value_size));
    }
    uint32_t *hist = calloc(HIST_US + 1, sizeof *hist);
    uint64_t requests = 0, errors = 0, nils = 0;
    long disconnects = 0, alive = nconns, max_us = 0;
    double start = now_s(), deadline = start + duration, t;
    for (int i = 0; i < nconns; i++)
        if (send_batch(&conns[i], pipeline) < 0) lost(&conns[i], i, &alive, &disconnects);

    while (alive > 0 && (t = now_s()) < deadline) {
        for (int i = 0; i < nconns; i++) { /* EPOLLOUT only while a write is pending */
            conn_t *c = &conns[i];
            int want = c->fd >= 0 && c->wlen > c->woff;
            if (c->fd >= 0 && want != c->want_out) {
                struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0),
                                         .data.u32 = (uint32_t)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->want_out = want;
            }
        }
        int timeout = (int)((deadline - t) * 1000) + 1;
        int ready = epoll_wait(ep, evs, 256, timeout > 100 ? 100 : timeout);
        if (ready < 0 && errno != EINTR) break;
        for (int e = 0; e < ready; e++) {
            int i = (int)evs[e].data.u32;
            conn_t *c = &conns[i];
            uint32_t revents = evs[e].events;
            if (c->fd < 0) continue;
            int dead = (revents & EPOLLOUT) && flush_out(c) < 0;
            if (!dead && (revents & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                if (c->rlen == c->rcap) c->rbuf = realloc(c->rbuf, c->rcap *= 2);
                ssize_t k = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
                if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) dead = 1;
                else if (k > 0) c->rlen += (size_t)k;
            }
            size_t off = 0;
            double got = now_s();
            while (!dead && off < c->rlen) {
                int kind = 0;
                long l = reply_len(c->rbuf + off, c->rlen - off, &kind);
                if (l < 0 || (l > 0 && c->outstanding <= 0)) {
                    fprintf(stderr, "loadgen: %s reply\n", l < 0 ? "malformed" : "unexpected");
                    dead = 1;
                }
                if (dead || l <= 0) break;
                off += (size_t)l;
                if (got < deadline) {
                    long us = (long)((got - c->sent) * 1e6);
                    if (us > max_us) max_us = us;
                    hist[us < HIST_US ? us : HIST_US]++, requests++;
                    errors += kind == '-', nils += kind == 'n';
                }
                if (--c->outstanding == 0 && got < deadline && send_batch(c, pipeline) < 0) dead = 1;
            }
            memmove(c->rbuf, c->rbuf + off, c->rlen - off);
            c->rlen -= off;
            if (dead) lost(c, i, &alive, &disconnects);
        }
    }
    double seconds = now_s() - start;
    if (seconds > duration) seconds = duration;
    printf("{\"requests\": %llu, \"seconds\": %.6f, \"requests_per_s\": %.1f, \"p50_us\": %.0f, "
           "\"p99_us\": %.0f, \"p999_us\": %.0f, \"max_us\": %ld, \"errors\": %llu, \"nils\": %llu, "
           "\"disconnects\": %ld, \"connections\": %d, \"pipeline\": %d, \"keys\": %ld, "
           "\"dist\": \"%s\", \"s\": %g, \"set_ratio\": %g}\n",
           (unsigned long long)requests, seconds, (double)requests / seconds,
           percentile(hist, requests, 0.50), percentile(hist, requests, 0.99),
           percentile(hist, requests, 0.999), max_us, (unsigned long long)errors,
           (unsigned long long)nils, disconnects, nconns, pipeline, nkeys, zipf ? "zipf" : "uniform",
           s, set_ratio);
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return disconnects ? 2 : 0;
}
