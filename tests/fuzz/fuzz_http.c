/*
 * Fuzz target: raw request bytes into the real server (issue 12's HTTP
 * hardening). Each input is written as is to a fresh loopback connection
 * of a whole `recurd serve` running in this process — libmicrohttpd's
 * parser, server/http.c (framing checks, CORS, request ids, lingering
 * close, cut-short bodies), the HTTP API (server/dispatch.c, h_*.c) and the
 * compute thread, with a tiny model written at start-up — then the client
 * half-closes and reads until the server closes.
 *
 * Properties: no crash or sanitizer report; after every input the server
 * still answers GET /health 200 on a new connection (no wedge: a request
 * must never stop the server accepting or answering); at exit a SIGTERM
 * drains it and cmd_serve returns 0.
 *
 * Bounded and deterministic in what it checks: inputs are cut at 64 KiB;
 * the connection timeout is 2 s, generation is capped at 8 tokens and the
 * session table at 64 entries; each exchange gives up after 5 s. What the
 * server answers may depend on earlier inputs only through the session
 * table (ids are random), which the properties do not look at.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#define MAX_INPUT (64 * 1024)
#define EXCHANGE_MS 5000

static int port;
static pthread_t server;
static int server_rc = -1;
static char model_dir[64];
static char port_arg[16];

/* ---- the tiny model (the shapes of tests/server/make_model.py, smaller) -- */

struct tensor {
    const char *name;
    int ndim;
    int shape[3];
    int kind; /* 0 random, 1 ones, 2 dt_bias, 3 A_log */
};

enum { DM = 16, DI = 32, DS = 8, HD = 8, NH = DI / HD, CONV = DI + 2 * DS, ROWS = 256 };

static const struct tensor TENSORS[] = {
    {"backbone.embedding.weight", 2, {ROWS, DM, 0}, 0},
    {"backbone.layers.0.norm.weight", 1, {DM, 0, 0}, 1},
    {"backbone.layers.0.mixer.in_proj.weight", 2, {2 * DI + 2 * DS + NH, DM, 0}, 0},
    {"backbone.layers.0.mixer.conv1d.weight", 3, {CONV, 1, 4}, 0},
    {"backbone.layers.0.mixer.conv1d.bias", 1, {CONV, 0, 0}, 0},
    {"backbone.layers.0.mixer.dt_bias", 1, {NH, 0, 0}, 2},
    {"backbone.layers.0.mixer.A_log", 1, {NH, 0, 0}, 3},
    {"backbone.layers.0.mixer.D", 1, {NH, 0, 0}, 1},
    {"backbone.layers.0.mixer.norm.weight", 1, {DI, 0, 0}, 1},
    {"backbone.layers.0.mixer.out_proj.weight", 2, {DM, DI, 0}, 0},
    {"backbone.norm_f.weight", 1, {DM, 0, 0}, 1},
};
#define N_TENSORS (sizeof TENSORS / sizeof TENSORS[0])

static size_t numel(const struct tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

static int write_model(const char *dir)
{
    char path[128], header[4096];
    size_t off = 0, hl = 0;
    hl += (size_t)snprintf(header + hl, sizeof header - hl, "{");
    for (size_t i = 0; i < N_TENSORS; i++) {
        const struct tensor *t = &TENSORS[i];
        size_t bytes = numel(t) * 4;
        hl += (size_t)snprintf(header + hl, sizeof header - hl,
                               "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[", i ? "," : "", t->name);
        for (int d = 0; d < t->ndim; d++)
            hl += (size_t)snprintf(header + hl, sizeof header - hl, "%s%d", d ? "," : "",
                                   t->shape[d]);
        hl += (size_t)snprintf(header + hl, sizeof header - hl,
                               "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    hl += (size_t)snprintf(header + hl, sizeof header - hl, "}");
    while (hl % 8)
        header[hl++] = ' ';
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint64_t n = hl;
    fwrite(&n, 8, 1, f);
    fwrite(header, 1, hl, f);
    uint32_t lcg = 12345;
    for (size_t i = 0; i < N_TENSORS; i++) {
        const struct tensor *t = &TENSORS[i];
        for (size_t k = 0; k < numel(t); k++) {
            float v;
            lcg = lcg * 1664525u + 1013904223u;
            switch (t->kind) {
            case 1: v = 1.0f; break;
            case 2: v = logf(expm1f(0.01f)); break;
            case 3: v = logf(4.0f); break;
            default: v = ((float)(lcg >> 8) / 16777216.0f - 0.5f) * 0.4f; break;
            }
            fwrite(&v, 4, 1, f);
        }
    }
    if (fclose(f) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "{\"d_model\": %d, \"d_intermediate\": 0, \"n_layer\": 1, \"vocab_size\": 256,"
               " \"ssm_cfg\": {\"layer\": \"Mamba2\", \"d_state\": %d, \"d_conv\": 4,"
               " \"expand\": 2, \"headdim\": %d, \"ngroups\": 1}, \"attn_layer_idx\": [],"
               " \"attn_cfg\": {}, \"rms_norm\": true, \"residual_in_fp32\": true,"
               " \"fused_add_norm\": true, \"pad_vocab_size_multiple\": 16,"
               " \"tie_embeddings\": true}\n", DM, DS, HD);
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- the server ----------------------------------------------------------- */

static void *serve(void *arg)
{
    (void)arg;
    char *argv[] = {"serve", "--model", model_dir, "--host", "127.0.0.1", "--port", port_arg,
                    "--quiet", "--connection-timeout", "2", "--max-gen-tokens", "8",
                    "--max-sessions", "64", "--drain-timeout", "1", "--threads", "1",
                    "--min-body-rate-grace", "1", "--cors-origin", "https://a.example",
                    NULL};
    server_rc = cmd_serve((int)(sizeof argv / sizeof argv[0]) - 1, argv);
    return NULL;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Send data, half-close, read until the server closes; bytes read into
 * out (truncated), or -1 when it could not connect or timed out. */
static ssize_t exchange(const uint8_t *data, size_t size, char *out, size_t outlen)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    uint64_t end = now_ms() + EXCHANGE_MS;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    size_t sent = 0, got = 0;
    int wr_open = 1;
    char sink[16384];
    for (;;) {
        uint64_t t = now_ms();
        if (t >= end) {
            close(fd);
            return -1;
        }
        if (wr_open && sent == size) {
            shutdown(fd, SHUT_WR);
            wr_open = 0;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN | (wr_open ? POLLOUT : 0)};
        if (poll(&p, 1, (int)(end - t)) < 0 && errno != EINTR)
            break;
        if (wr_open && (p.revents & POLLOUT)) {
            ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (n > 0)
                sent += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR)
                wr_open = 0; /* the server closed early: read its answer */
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(fd, sink, sizeof sink, 0);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                break;
            if (n > 0) {
                size_t k = (size_t)n < outlen - got ? (size_t)n : outlen - got;
                memcpy(out + got, sink, k);
                got += k;
            }
        }
    }
    close(fd);
    out[got < outlen ? got : outlen - 1] = 0;
    return (ssize_t)got;
}

static int health_ok(void)
{
    static const char req[] = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    char out[512];
    ssize_t n = exchange((const uint8_t *)req, sizeof req - 1, out, sizeof out);
    return n > 12 && !strncmp(out, "HTTP/1.1 200", 12);
}

static void stop_server(void)
{
    if (!port)
        return;
    /* the server's loop watches SIGTERM: a drain, then cmd_serve returns */
    kill(getpid(), SIGTERM);
    pthread_join(server, NULL);
    if (server_rc != 0) {
        fprintf(stderr, "fuzz_http: the server exited with %d after SIGTERM\n", server_rc);
        abort();
    }
}

static void start(void)
{
    snprintf(model_dir, sizeof model_dir, "/tmp/recur-fuzz-http-XXXXXX");
    if (!mkdtemp(model_dir) || write_model(model_dir) != 0) {
        fprintf(stderr, "fuzz_http: cannot write the model in %s\n", model_dir);
        abort();
    }
    /* a free port (the server is told it; nothing else binds in between) */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &al) != 0)
        abort();
    port = ntohs(a.sin_port);
    close(s);
    snprintf(port_arg, sizeof port_arg, "%d", port);
    if (pthread_create(&server, NULL, serve, NULL) != 0)
        abort();
    uint64_t end = now_ms() + 60000;
    while (!health_ok()) {
        if (now_ms() > end || server_rc != -1) {
            fprintf(stderr, "fuzz_http: the server did not become ready\n");
            abort();
        }
        usleep(20000);
    }
    atexit(stop_server);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int started;
    if (!started) {
        started = 1;
        start();
    }
    if (size > MAX_INPUT)
        size = MAX_INPUT;
    char out[256];
    (void)exchange(data, size, out, sizeof out);
    if (!health_ok()) {
        /* one retry: the exchange's own connection may still be closing */
        usleep(200000);
        if (!health_ok()) {
            fprintf(stderr, "fuzz_http: /health does not answer 200 after an input\n");
            abort();
        }
    }
    return 0;
}
