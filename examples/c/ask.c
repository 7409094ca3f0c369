/*
 * ask.c: embed a dgpo search agent in a C program.
 *
 *   cc ask.c $(pkg-config --cflags --libs dgpo) -o ask
 *   ./ask config.json "who wrote the iliad?"
 *
 * config.json holds the agent configuration (see dgpo_open in dgpo.h), e.g.
 *   {"model": "model.gguf", "corpus": "passages.jsonl", "max_turns": 4, "topk": 3}
 *
 * Output, one record per line (the JSON is on one line, so scripts can parse it):
 *   version <library version>
 *   hits <JSON array: dgpo_search for the question itself>
 *   step <JSON object: one per agent step, printed from the progress callback>
 *   trace <JSON object: the whole run>
 * On failure it prints "error <status name>: <message>" to stderr and exits with 1.
 */
#include <stdio.h>
#include <stdlib.h>

#include "dgpo.h"

/* Progress callback: print each step as it completes; return 0 to keep going. */
static int32_t on_step(const char *step_json, void *user_data) {
    int *steps = (int *)user_data;
    ++*steps;
    printf("step %s\n", step_json);
    fflush(stdout);
    return 0;
}

/* Read a whole file into a NUL-terminated buffer the caller frees. */
static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            char *bigger = realloc(buf, cap *= 2);
            if (!bigger) { free(buf); buf = NULL; }
            buf = bigger;
        }
    }
    fclose(f);
    if (buf) buf[len] = '\0';
    return buf;
}

static int fail(DgpoStatus st, char *err) {
    fprintf(stderr, "error %s: %s\n", dgpo_status_name(st), err ? err : "");
    dgpo_string_free(err);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CONFIG.json QUESTION\n", argv[0]);
        return 2;
    }
    char *config = read_file(argv[1]);
    if (!config) {
        fprintf(stderr, "error: cannot read %s\n", argv[1]);
        return 1;
    }
    printf("version %s\n", dgpo_version());

    DgpoAgent *agent = NULL;
    char *err = NULL;
    DgpoStatus st = dgpo_open(config, &agent, &err);
    free(config);
    if (st != DGPO_STATUS_OK) return fail(st, err);

    char *hits = NULL;
    st = dgpo_search(agent, argv[2], 2, &hits, &err);
    if (st != DGPO_STATUS_OK) {
        dgpo_close(agent);
        return fail(st, err);
    }
    printf("hits %s\n", hits);
    dgpo_string_free(hits);

    int steps = 0;
    char *trace = NULL;
    st = dgpo_ask(agent, argv[2], on_step, &steps, NULL, &trace, &err);
    dgpo_close(agent);
    agent = NULL; /* closing twice is undefined: drop the pointer */
    if (st != DGPO_STATUS_OK) return fail(st, err);
    printf("trace %s\n", trace);
    dgpo_string_free(trace);
    return 0;
}
