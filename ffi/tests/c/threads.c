/*
 * Threads: two handles asked from two threads at once; one handle shared by four threads
 * (documented as safe); a run cancelled from another thread through the cancel flag.
 * Run by ffi/tests/c_api.rs as: threads CONFIG_JSON QUESTION
 * Prints "<label> <trace JSON>" per run (the test compares them with a single-threaded
 * reference) and "cancel <status name> <steps>"; exits non-zero when a call fails.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "dgpo.h"

struct job {
    const DgpoAgent *agent;
    const char *question;
    DgpoStatus status;
    char *json;
    char *err;
};

static void *ask_thread(void *arg) {
    struct job *j = arg;
    j->status = dgpo_ask(j->agent, j->question, NULL, NULL, NULL, &j->json, &j->err);
    return NULL;
}

static int run_jobs(const char *label, struct job *jobs, int n) {
    pthread_t t[8];
    int bad = 0;
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, ask_thread, &jobs[i]);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < n; i++) {
        if (jobs[i].status != DGPO_STATUS_OK) {
            fprintf(stderr, "%s[%d]: %s: %s\n", label, i, dgpo_status_name(jobs[i].status),
                    jobs[i].err);
            bad = 1;
        } else {
            printf("%s %s\n", label, jobs[i].json);
        }
        dgpo_string_free(jobs[i].json);
        dgpo_string_free(jobs[i].err);
    }
    return bad;
}

/* Cross-thread cancellation, made deterministic: the first step's callback hands control to
 * a canceller thread and waits until it has set the flag; the run must then stop at the next
 * token check. */
struct cancel_ctx {
    int32_t flag;
    int steps;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int requested;
};

static void *canceller(void *arg) {
    struct cancel_ctx *c = arg;
    pthread_mutex_lock(&c->mu);
    while (!c->requested) pthread_cond_wait(&c->cv, &c->mu);
    __atomic_store_n(&c->flag, 1, __ATOMIC_SEQ_CST);
    c->requested = 2;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static int32_t on_step(const char *step_json, void *user) {
    (void)step_json;
    struct cancel_ctx *c = user;
    c->steps++;
    pthread_mutex_lock(&c->mu);
    c->requested = 1;
    pthread_cond_broadcast(&c->cv);
    while (c->requested != 2) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    return 0; /* keep going: only the flag stops the run */
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    const char *config = read_file(argv[1]);
    const char *q = argv[2];
    DgpoAgent *a = NULL, *b = NULL;
    char *err = NULL;
    if (!config || dgpo_open(config, &a, &err) != DGPO_STATUS_OK ||
        dgpo_open(config, &b, &err) != DGPO_STATUS_OK) {
        fprintf(stderr, "open: %s\n", err ? err : "(no config)");
        return 1;
    }
    int bad = 0;
    struct job one[1] = {{a, q, DGPO_STATUS_OK, NULL, NULL}};
    bad |= run_jobs("single", one, 1);
    struct job two[2] = {{a, q, DGPO_STATUS_OK, NULL, NULL}, {b, q, DGPO_STATUS_OK, NULL, NULL}};
    bad |= run_jobs("two-handles", two, 2);
    struct job shared[4];
    for (int i = 0; i < 4; i++) shared[i] = (struct job){a, q, DGPO_STATUS_OK, NULL, NULL};
    bad |= run_jobs("shared", shared, 4);

    struct cancel_ctx c = {0, 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    pthread_t t;
    pthread_create(&t, NULL, canceller, &c);
    char *json = NULL;
    DgpoStatus st = dgpo_ask(b, q, on_step, &c, &c.flag, &json, &err);
    pthread_join(t, NULL);
    printf("cancel %s %d\n", dgpo_status_name(st), c.steps);
    dgpo_string_free(json);
    dgpo_string_free(err);

    dgpo_close(a);
    dgpo_close(b);
    return bad;
}
