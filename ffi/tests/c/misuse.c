/*
 * Misuse of the C API: every wrong call must come back as a status and a message, never a
 * crash. Run by ffi/tests/c_api.rs as: misuse MODEL_DIR CORPUS_JSONL MISSING_PATH
 * Prints "ok <check>" or "FAIL <check>: <why>" per check and exits non-zero on any failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dgpo.h"

static int failures = 0;

static void check(int cond, const char *name, const char *why) {
    if (cond) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: %s\n", name, why ? why : "");
        failures++;
    }
}

/* Check a failed call: the status, a non-empty message containing `needle`, the output NULL. */
static void expect(const char *name, DgpoStatus got, DgpoStatus want, char *err, const void *out,
                   const char *needle) {
    char why[1024];
    snprintf(why, sizeof why, "status %d (%s) want %d, message \"%s\", output %p", (int)got,
             dgpo_status_name(got), (int)want, err ? err : "(null)", out);
    check(got == want && err != NULL && err[0] != '\0' && out == NULL &&
              (needle == NULL || (err && strstr(err, needle) != NULL)),
          name, why);
    dgpo_string_free(err);
}

static int calls = 0;
static int32_t stop_after_first(const char *step_json, void *user_data) {
    (void)user_data;
    calls++;
    (void)step_json;
    return 1;
}
static int32_t count_steps(const char *step_json, void *user_data) {
    (void)step_json;
    ++*(int *)user_data;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: misuse MODEL_DIR CORPUS_JSONL MISSING_PATH\n");
        return 2;
    }
    const char *model = argv[1], *corpus = argv[2], *missing = argv[3];
    char cfg[4096];
    DgpoAgent *agent = NULL;
    char *err = NULL, *json = NULL;
    DgpoStatus st;

    /* dgpo_open */
    st = dgpo_open(NULL, &agent, &err);
    expect("open_null_config", st, DGPO_STATUS_NULL_ARGUMENT, err, agent, "config_json");
    st = dgpo_open("{}", NULL, &err);
    expect("open_null_out_agent", st, DGPO_STATUS_NULL_ARGUMENT, err, NULL, "out_agent");
    st = dgpo_open("{\"model\": \"\xff\xfe\", \"corpus\": \"c\"}", &agent, &err);
    expect("open_invalid_utf8", st, DGPO_STATUS_INVALID_UTF8, err, agent, "UTF-8");
    st = dgpo_open("{\"model\": ", &agent, &err);
    expect("open_bad_json", st, DGPO_STATUS_INVALID_CONFIG, err, agent, "line 1");
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\", \"corpus\": \"%s\", \"max_turnz\": 2}", model,
             corpus);
    st = dgpo_open(cfg, &agent, &err);
    expect("open_unknown_key", st, DGPO_STATUS_INVALID_CONFIG, err, agent, "max_turnz");
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\"}", model);
    st = dgpo_open(cfg, &agent, &err);
    expect("open_no_retriever", st, DGPO_STATUS_INVALID_CONFIG, err, agent, "corpus");
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\", \"corpus\": \"%s\"}", missing, corpus);
    st = dgpo_open(cfg, &agent, &err);
    expect("open_missing_model", st, DGPO_STATUS_IO, err, agent, missing);
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\", \"corpus\": \"%s\"}", model, missing);
    st = dgpo_open(cfg, &agent, &err);
    expect("open_missing_corpus", st, DGPO_STATUS_IO, err, agent, missing);
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\", \"index\": \"%s\"}", model, missing);
    st = dgpo_open(cfg, &agent, &err);
    check(st != DGPO_STATUS_OK && err != NULL && strstr(err, missing) != NULL && agent == NULL,
          "open_missing_index", err);
    dgpo_string_free(err);

    /* out_error may be NULL: the message is then in dgpo_last_error (per thread). */
    st = dgpo_open(NULL, &agent, NULL);
    char *last = dgpo_last_error();
    check(st == DGPO_STATUS_NULL_ARGUMENT && last != NULL && strstr(last, "config_json"),
          "last_error_after_failure", last);
    dgpo_string_free(last);

    snprintf(cfg, sizeof cfg,
             "{\"model\": \"%s\", \"corpus\": \"%s\", \"max_turns\": 2, \"topk\": 2, "
             "\"max_turn_tokens\": 8, \"threads\": 1}",
             model, corpus);
    st = dgpo_open(cfg, &agent, &err);
    check(st == DGPO_STATUS_OK && agent != NULL && err == NULL, "open_ok", err);
    dgpo_string_free(err);
    if (agent == NULL) return 1;
    check(dgpo_last_error() == NULL, "last_error_cleared_by_success", NULL);

    /* dgpo_ask */
    st = dgpo_ask(NULL, "q", NULL, NULL, NULL, &json, &err);
    expect("ask_null_handle", st, DGPO_STATUS_NULL_ARGUMENT, err, json, "agent");
    st = dgpo_ask(agent, NULL, NULL, NULL, NULL, &json, &err);
    expect("ask_null_question", st, DGPO_STATUS_NULL_ARGUMENT, err, json, "question");
    st = dgpo_ask(agent, "caf\xc3(", NULL, NULL, NULL, &json, &err);
    expect("ask_invalid_utf8", st, DGPO_STATUS_INVALID_UTF8, err, json, "byte 3");
    st = dgpo_ask(agent, "q", NULL, NULL, NULL, NULL, &err);
    expect("ask_null_out_json", st, DGPO_STATUS_NULL_ARGUMENT, err, NULL, "out_json");

    /* Cancellation: a flag set before the run, and a callback that asks to stop. */
    int32_t flag = 1;
    int steps = 0;
    st = dgpo_ask(agent, "q", count_steps, &steps, &flag, &json, &err);
    expect("ask_cancel_flag", st, DGPO_STATUS_CANCELLED, err, json, "cancelled");
    check(steps == 0, "ask_cancel_flag_no_steps", NULL);
    st = dgpo_ask(agent, "q", stop_after_first, NULL, NULL, &json, &err);
    expect("ask_cancel_callback", st, DGPO_STATUS_CANCELLED, err, json, "cancelled");
    check(calls == 1, "ask_cancel_callback_called_once", NULL);

    /* A good call after all that still works. */
    flag = 0;
    steps = 0;
    st = dgpo_ask(agent, "who wrote the iliad?", count_steps, &steps, &flag, &json, &err);
    check(st == DGPO_STATUS_OK && json != NULL && json[0] == '{' && steps >= 1 && err == NULL,
          "ask_ok", err);
    dgpo_string_free(json);
    dgpo_string_free(err);
    json = NULL;
    err = NULL;

    /* dgpo_search */
    st = dgpo_search(NULL, "q", 2, &json, &err);
    expect("search_null_handle", st, DGPO_STATUS_NULL_ARGUMENT, err, json, "agent");
    st = dgpo_search(agent, NULL, 2, &json, &err);
    expect("search_null_query", st, DGPO_STATUS_NULL_ARGUMENT, err, json, "query");
    st = dgpo_search(agent, "\x80", 2, &json, &err);
    expect("search_invalid_utf8", st, DGPO_STATUS_INVALID_UTF8, err, json, "UTF-8");
    st = dgpo_search(agent, "iliad", 2, &json, &err);
    check(st == DGPO_STATUS_OK && json != NULL && json[0] == '[', "search_ok", err);
    dgpo_string_free(json);
    dgpo_string_free(err);

    /* NULL is accepted (and ignored) by the release functions. Closing twice is undefined
     * behaviour by contract (documented on dgpo_close), so it is not exercised here. */
    dgpo_string_free(NULL);
    dgpo_close(agent);
    agent = NULL;
    dgpo_close(agent);
    check(1, "close_null_is_noop", NULL);

    printf("%d failures\n", failures);
    return failures == 0 ? 0 : 1;
}
