/*
 * A stand-in for llama-server that streams as fast as it can: the engine of the relay-capacity
 * bench (bench/relay.py). It is not the bottleneck of what it measures, so the figure is the
 * proxy's.
 *
 * It takes llama-server's argv (only --host PATH.sock or --host ADDR --port N matter; every other
 * flag is ignored; --version prints a version line) and speaks HTTP/1.1 with keep-alive (closing
 * after the answer when the request says "Connection: close", as llama-server does) on a Unix
 * socket (--host ending in .sock) or TCP:
 *
 *   GET  /health                 200 {"status":"ok"}
 *   GET  anything else           200 {}
 *   POST /v1/chat/completions    200 text/event-stream, chunked: max_tokens events (default
 *        (and any other POST)    SYNTH_TOKENS, 128) of llama-server's chunk shape, one HTTP chunk
 *                                each, then data: [DONE]; written back to back, no pacing
 *
 * One thread, epoll, non-blocking sockets; a whole answer is queued at once and drained as the
 * socket takes it. Build: cc -O2 -o llama-server synthetic_engine.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <arpa/inet.h>

#define MAX_EVENTS 256
#define HEAD_LIMIT 65536

struct conn {
    int fd;
    char *in;        /* request bytes not yet answered */
    size_t in_len, in_cap;
    char *out;       /* answer bytes not yet written */
    size_t out_len, out_off, out_cap;
    int close_after; /* the request asked "Connection: close": close once the answer is out */
};

static int default_tokens = 128;
static const char EVENT[] =
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" tok\"}}],"
    "\"created\":1700000000,\"id\":\"chatcmpl-synthetic\",\"model\":\"synthetic\","
    "\"system_fingerprint\":\"b1-synthetic\",\"object\":\"chat.completion.chunk\"}\n\n";
static const char DONE_EVENT[] = "data: [DONE]\n\n";

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t cap2 = *cap ? *cap : 4096;
    while (cap2 < need) cap2 *= 2;
    char *p = realloc(*buf, cap2);
    if (!p) die("realloc");
    *buf = p;
    *cap = cap2;
}

static void put(struct conn *c, const char *data, size_t len) {
    grow(&c->out, &c->out_cap, c->out_len + len);
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static void put_chunk(struct conn *c, const char *data, size_t len) {
    char size[32];
    int n = snprintf(size, sizeof size, "%zx\r\n", len);
    put(c, size, (size_t)n);
    put(c, data, len);
    put(c, "\r\n", 2);
}

static void answer_json(struct conn *c, const char *body) {
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n", strlen(body));
    put(c, head, (size_t)n);
    put(c, body, strlen(body));
}

static void answer_stream(struct conn *c, int tokens) {
    static const char head[] =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    put(c, head, sizeof head - 1);
    for (int i = 0; i < tokens; i++) put_chunk(c, EVENT, sizeof EVENT - 1);
    put_chunk(c, DONE_EVENT, sizeof DONE_EVENT - 1);
    put(c, "0\r\n\r\n", 5);
}

/* The value of "max_tokens" in a JSON body, or the default. */
static int tokens_of(const char *body, size_t len) {
    const char key[] = "\"max_tokens\"";
    const char *p = memmem(body, len, key, sizeof key - 1);
    if (!p) return default_tokens;
    p += sizeof key - 1;
    while (p < body + len && (*p == ' ' || *p == ':')) p++;
    int n = atoi(p);
    return n > 0 ? n : default_tokens;
}

/* Answer every complete request in c->in; return 0, or -1 on a request we cannot read. */
static int handle_requests(struct conn *c) {
    for (;;) {
        char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!end) return c->in_len > HEAD_LIMIT ? -1 : 0;
        size_t head_len = (size_t)(end - c->in) + 4;
        size_t body_len = 0;
        for (char *line = c->in; line < end; ) {
            char *eol = memmem(line, (size_t)(end - line) + 2, "\r\n", 2);
            if (!eol) break;
            if (strncasecmp(line, "Content-Length:", 15) == 0) body_len = strtoul(line + 15, NULL, 10);
            /* llama-server (cpp-httplib) honours it, and the daemon's /health probe reads
               until the engine closes. */
            if (strncasecmp(line, "Connection: close", 17) == 0) c->close_after = 1;
            line = eol + 2;
        }
        if (c->in_len < head_len + body_len) return 0;
        if (strncmp(c->in, "POST ", 5) == 0) {
            answer_stream(c, tokens_of(c->in + head_len, body_len));
        } else if (strncmp(c->in, "GET /health ", 12) == 0) {
            answer_json(c, "{\"status\":\"ok\"}");
        } else {
            answer_json(c, "{}");
        }
        size_t used = head_len + body_len;
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
        if (c->close_after) return 0;
    }
}

static void close_conn(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

/* Write what is queued; return -1 when the peer is gone. */
static int flush_out(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
    return 0;
}

static int listen_on(const char *host, int port) {
    int fd;
    if (strlen(host) > 5 && strcmp(host + strlen(host) - 5, ".sock") == 0) {
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        if (strlen(host) >= sizeof addr.sun_path) die("socket path too long");
        strcpy(addr.sun_path, host);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind unix");
    } else {
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
        if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) die("--host");
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind tcp");
    }
    if (listen(fd, 1024) < 0) die("listen");
    return fd;
}

static volatile sig_atomic_t stopping = 0;
static void on_term(int sig) { (void)sig; stopping = 1; }

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 8080;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("version: 1 (synthetic)\nbuilt with cc for bench/relay.py\n");
            return 0;
        }
        if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) port = atoi(argv[++i]);
    }
    if (getenv("SYNTH_TOKENS")) default_tokens = atoi(getenv("SYNTH_TOKENS"));
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = listen_on(host, port);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[MAX_EVENTS];
    while (!stopping) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 500);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) die("calloc");
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            int failed = 0;
            if (events[i].events & EPOLLIN) {
                for (;;) {
                    grow(&c->in, &c->in_cap, c->in_len + 65536);
                    ssize_t got = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
                    if (got > 0) { c->in_len += (size_t)got; continue; }
                    if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) failed = 1;
                    break;
                }
                if (!failed && handle_requests(c) < 0) failed = 1;
            }
            if (!failed && flush_out(c) < 0) failed = 1;
            int done = c->close_after && c->out_len == 0;
            if (failed || done || (events[i].events & (EPOLLHUP | EPOLLERR) && c->out_len == 0)) close_conn(ep, c);
        }
    }
    if (strlen(host) > 5 && strcmp(host + strlen(host) - 5, ".sock") == 0) unlink(host);
    return 0;
}
