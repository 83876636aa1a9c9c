/* hiredis (Debian libhiredis-dev) through the proxy, for the client matrix
 * (tests/clients/matrix.py). The test compiles it into a temporary directory:
 *   gcc -o matrix matrix.c -lhiredis
 * Usage: matrix PORT K1 K2 K3 MISSING TAG_A TAG_B SCRIPT_KEY LIST_KEY CHANNEL
 * Prints one JSON line of results; exits 1 if it cannot connect. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define EVAL_SCRIPT "return redis.call('INCRBY', KEYS[1], ARGV[1])"
static const char *VALUES[3] = {"v1", "v2", "v3"};

static int first = 1;

static void json_string(const char *s, size_t len) {
    putchar('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

/* A reply as JSON: status and bulk strings as strings, nil as null, errors as {"error": ...} */
static void json_reply(const redisReply *r) {
    if (r == NULL) { printf("{\"error\": \"no reply\"}"); return; }
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS: json_string(r->str, r->len); break;
    case REDIS_REPLY_INTEGER: printf("%lld", r->integer); break;
    case REDIS_REPLY_NIL: printf("null"); break;
    case REDIS_REPLY_ERROR: printf("{\"error\": "); json_string(r->str, r->len); putchar('}'); break;
    case REDIS_REPLY_ARRAY:
        putchar('[');
        for (size_t i = 0; i < r->elements; i++) {
            if (i) printf(", ");
            json_reply(r->element[i]);
        }
        putchar(']');
        break;
    default: printf("{\"error\": \"reply type %d\"}", r->type);
    }
}

static void field(const char *name) {
    printf(first ? "{" : ", ");
    first = 0;
    json_string(name, strlen(name));
    printf(": ");
}

/* Print the reply to a command as the field `name`, and free it */
static void record(const char *name, redisReply *r) {
    field(name);
    json_reply(r);
    if (r) freeReplyObject(r);
}

static redisContext *connect_to(int port) {
    struct timeval timeout = {10, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, timeout);
    if (c == NULL || c->err) {
        fprintf(stderr, "connect: %s\n", c ? c->errstr : "out of memory");
        exit(1);
    }
    redisSetTimeout(c, timeout);
    return c;
}

static redisReply *next_reply(redisContext *c) {
    void *reply = NULL;
    if (redisGetReply(c, &reply) != REDIS_OK) return NULL;
    return reply;
}

int main(int argc, char **argv) {
    if (argc != 11) {
        fprintf(stderr, "usage: %s PORT K1 K2 K3 MISSING TAG_A TAG_B SCRIPT_KEY LIST_KEY CHANNEL\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    const char *keys[3] = {argv[2], argv[3], argv[4]};
    const char *missing = argv[5], *tag_a = argv[6], *tag_b = argv[7];
    const char *script_key = argv[8], *list_key = argv[9], *channel = argv[10];
    redisContext *c = connect_to(port);

    field("library"); printf("\"hiredis\"");
    field("version"); printf("\"%d.%d.%d\"", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
    record("set", redisCommand(c, "SET %s %s", keys[0], "hello"));
    record("get", redisCommand(c, "GET %s", keys[0]));

    /* the pipeline: every command appended, one write, then the replies in order */
    for (int i = 0; i < 3; i++) redisAppendCommand(c, "SET %s %s", keys[i], VALUES[i]);
    for (int i = 0; i < 3; i++) redisAppendCommand(c, "GET %s", keys[i]);
    field("pipeline");
    putchar('[');
    for (int i = 0; i < 6; i++) {
        redisReply *r = next_reply(c);
        if (i) printf(", ");
        json_reply(r);
        if (r) freeReplyObject(r);
    }
    putchar(']');

    record("mget", redisCommand(c, "MGET %s %s %s %s", keys[0], keys[1], keys[2], missing));

    /* MULTI/EXEC as hiredis users write it: each command, then EXEC's array */
    redisAppendCommand(c, "MULTI");
    redisAppendCommand(c, "SET %s 1", tag_a);
    redisAppendCommand(c, "INCR %s", tag_a);
    redisAppendCommand(c, "SET %s x", tag_b);
    redisAppendCommand(c, "GET %s", tag_b);
    redisAppendCommand(c, "EXEC");
    for (int i = 0; i < 5; i++) {  /* +OK, then +QUEUED for each */
        redisReply *r = next_reply(c);
        if (r) freeReplyObject(r);
    }
    record("multi_exec", next_reply(c));

    record("eval", redisCommand(c, "EVAL %s 1 %s 5", EVAL_SCRIPT, script_key));

    /* pub/sub on this connection; the publisher is a second connection */
    redisContext *pub = connect_to(port);
    redisReply *sub = redisCommand(c, "SUBSCRIBE %s", channel);
    int subscribed = sub != NULL && sub->type == REDIS_REPLY_ARRAY;
    redisReply *published = redisCommand(pub, "PUBLISH %s %s", channel, "hello");
    if (subscribed) {
        freeReplyObject(sub);
        redisReply *message = next_reply(c);  /* ["message", channel, payload] */
        field("subscribe");
        if (message && message->type == REDIS_REPLY_ARRAY && message->elements == 3)
            json_reply(message->element[2]);
        else
            json_reply(message);
        if (message) freeReplyObject(message);
        redisReply *unsub = redisCommand(c, "UNSUBSCRIBE %s", channel);
        if (unsub) freeReplyObject(unsub);
    } else {
        record("subscribe", sub);
    }
    record("publish", published);
    record("subscribe_then", redisCommand(c, "GET %s", keys[0]));
    redisFree(pub);

    redisReply *pushed = redisCommand(c, "RPUSH %s %s", list_key, "x");
    if (pushed) freeReplyObject(pushed);
    record("blpop", redisCommand(c, "BLPOP %s 1", list_key));
    record("blpop_then", redisCommand(c, "GET %s", keys[0]));
    printf("}\n");
    redisFree(c);
    return 0;
}
