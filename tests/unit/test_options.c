/* server/options: defaults < environment < command line; every bad value is
 * refused naming its option; sizes and keys parse as documented. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "options.h"
#include "errors.h"

static int load(struct options *c, char **env, int argc, char **argv, char *err)
{
    FILE *null = fopen("/dev/null", "w");
    int rc = options_load(c, argc, argv, env, null, err, 256);
    fclose(null);
    return rc;
}

static void test_precedence(void **u)
{
    struct options c;
    char err[256];
    char *env0[] = {NULL};
    char *argv0[] = {"serve", "--model", "m"};
    assert_int_equal(load(&c, env0, 3, argv0, err), 0);
    assert_string_equal(c.host, "127.0.0.1"); /* defaults */
    assert_int_equal(c.port, 8080);
    assert_int_equal(c.max_body_bytes, 64u << 20);
    assert_int_equal(c.n_api_keys, 0);
    assert_null(c.state_dir);
    options_free(&c);

    char *env[] = {"RECURD_PORT=9000", "RECURD_MODEL=/env/model", "RECURD_API_KEY=a,b",
                   "RECURD_STATE_MEMORY=2G", "RECURD_SESSION_TTL=1.5", "OTHER=x", NULL};
    char *argv1[] = {"serve"};
    assert_int_equal(load(&c, env, 1, argv1, err), 0);
    assert_int_equal(c.port, 9000);
    assert_string_equal(c.model_dir, "/env/model");
    assert_int_equal(c.n_api_keys, 2);
    assert_string_equal(c.api_keys[1], "b");
    assert_int_equal(c.state_memory, (size_t)2 << 30);
    assert_true(c.session_ttl == 1.5);
    options_free(&c);

    char *argv2[] = {"serve", "--port=9100", "--api-key", "k1", "--api-key", "k2,k3",
                     "--model", "/argv", "--quiet", "--max-body-bytes", "1536K"};
    assert_int_equal(load(&c, env, 11, argv2, err), 0);
    assert_int_equal(c.port, 9100);               /* argv beats env */
    assert_string_equal(c.model_dir, "/argv");
    assert_int_equal(c.n_api_keys, 3);            /* env keys replaced, flags add up */
    assert_string_equal(c.api_keys[0], "k1");
    assert_int_equal(c.quiet, 1);
    assert_int_equal(c.max_body_bytes, 1536u << 10);
    options_free(&c);
}

/* An empty value of an optional path (an image sets RECURD_STATE_DIR, a
 * deployment clears it) is unset; the store's options parse. */
static void test_empty_is_unset_and_store_options(void **u)
{
    (void)u;
    struct options c;
    char err[256];
    char *env[] = {"RECURD_MODEL=/m", "RECURD_STATE_DIR=", "RECURD_STORE=redis://r:6379/2",
                   "RECURD_LEASE_MS=1500", NULL};
    char *argv[] = {"serve", "--replica-id", "r-1", "--store-audit"};
    assert_int_equal(load(&c, env, 4, argv, err), 0);
    assert_null(c.state_dir);
    assert_string_equal(c.store, "redis://r:6379/2");
    assert_string_equal(c.replica_id, "r-1");
    assert_int_equal(c.lease_ms, 1500);
    assert_int_equal(c.store_snapshot_tokens, 8192);
    assert_int_equal(c.store_audit, 1);
    options_free(&c);
    char *env2[] = {"RECURD_MODEL=/m", "RECURD_LEASE_MS=10", NULL};
    char *argv2[] = {"serve"};
    assert_true(load(&c, env2, 1, argv2, err) < 0);
    assert_non_null(strstr(err, "--lease-ms"));
}

static void test_bad_values_named(void **u)
{
    struct options c;
    char err[256];
    char *env0[] = {NULL};
    struct {
        char *argv[4];
        int argc;
        const char *needle;
    } bad[] = {
        {{"serve"}, 1, "--model"},
        {{"serve", "--model", "m", "--port"}, 4, "--port needs a value"},
        {{"serve", "--model", "m", "--port=70000"}, 4, "--port"},
        {{"serve", "--model", "m", "--port=80x"}, 4, "--port"},
        {{"serve", "--model", "m", "--max-body-bytes=12Q"}, 4, "--max-body-bytes"},
        {{"serve", "--model", "m", "--max-body-bytes=-5"}, 4, "--max-body-bytes"},
        {{"serve", "--model", "m", "--session-ttl=0"}, 4, "--session-ttl"},
        {{"serve", "--model", "m", "--quiet=maybe"}, 4, "--quiet"},
        {{"serve", "--model", "m", "--api-key=has space"}, 4, "--api-key"},
        {{"serve", "--model", "m", "--bogus"}, 4, "unknown option '--bogus'"},
        {{"serve", "--model", "m", "--cors-origin=https://a.example/path"}, 4, "--cors-origin"},
        {{"serve", "--model", "m", "--cors-origin=a.example"}, 4, "--cors-origin"},
        {{"serve", "--model", "m", "--cors-origin=https://"}, 4, "--cors-origin"},
        {{"serve", "--model", "m", "--cors-origin=**"}, 4, "--cors-origin"},
        {{"serve", "--model", "m", "--min-body-rate=-1"}, 4, "--min-body-rate"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        int rc = load(&c, env0, bad[i].argc, bad[i].argv, err);
        if (rc >= 0)
            fail_msg("case %zu accepted", i);
        if (!strstr(err, bad[i].needle))
            fail_msg("case %zu: '%s' lacks '%s'", i, err, bad[i].needle);
    }
    char *env_bad[] = {"RECURD_MAX_SESSIONS=lots", NULL};
    char *argv[] = {"serve", "--model", "m"};
    assert_true(load(&c, env_bad, 3, argv, err) < 0);
    assert_non_null(strstr(err, "--max-sessions"));
}

/* --cors-origin: repeated flags add up, commas split, the command line
 * replaces the environment; --reuse-port and the body rate parse. */
static void test_cors_origins(void **u)
{
    struct options c;
    char err[256];
    char *env[] = {"RECURD_CORS_ORIGIN=https://env.example", NULL};
    char *argv0[] = {"serve", "--model", "m"};
    assert_int_equal(load(&c, env, 3, argv0, err), 0);
    assert_int_equal(c.n_cors_origins, 1);
    assert_string_equal(c.cors_origins[0], "https://env.example");
    assert_int_equal(c.reuse_port, 0);
    assert_int_equal(c.min_body_rate, 1024);
    options_free(&c);
    char *argv[] = {"serve", "--model", "m", "--cors-origin", "https://a.example, http://b:3000",
                    "--cors-origin=*", "--reuse-port", "--min-body-rate=0"};
    assert_int_equal(load(&c, env, 8, argv, err), 0);
    assert_int_equal(c.n_cors_origins, 3);
    assert_string_equal(c.cors_origins[0], "https://a.example");
    assert_string_equal(c.cors_origins[1], "http://b:3000");
    assert_string_equal(c.cors_origins[2], "*");
    assert_int_equal(c.reuse_port, 1);
    assert_int_equal(c.min_body_rate, 0);
    options_free(&c);
    assert_int_equal(c.n_cors_origins, 0);
}

static void test_help(void **u)
{
    struct options c;
    char err[256];
    char *env0[] = {NULL};
    char *argv[] = {"serve", "--help-markdown"};
    assert_int_equal(load(&c, env0, 2, argv, err), 1);
    char *argv2[] = {"serve", "-h"};
    assert_int_equal(load(&c, env0, 2, argv2, err), 1);
}

static void test_sizes(void **u)
{
    size_t v;
    assert_int_equal(options_parse_size("4096", &v), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(options_parse_size("16M", &v), 0);
    assert_int_equal(v, 16u << 20);
    assert_int_equal(options_parse_size("1.5K", &v), 0);
    assert_int_equal(v, 1536);
    assert_int_equal(options_parse_size("2GiB", &v), 0);
    assert_int_equal(v, (size_t)2 << 30);
    assert_int_not_equal(options_parse_size("1.3", &v), 0); /* not whole bytes */
    assert_int_not_equal(options_parse_size("", &v), 0);
    assert_int_not_equal(options_parse_size("5T", &v), 0);
    assert_int_not_equal(options_parse_size("1e300", &v), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_bad_values_named),
        cmocka_unit_test(test_empty_is_unset_and_store_options),
        cmocka_unit_test(test_cors_origins),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
