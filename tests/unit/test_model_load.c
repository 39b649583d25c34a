/*
 * Model directories that must be refused, each with one clear message
 * naming the file/tensor/field and the reason (docs/reliability.md B8), and
 * config forms that must be accepted. Broken directories are written into
 * a temp dir from the m2_small_ss fixture (state-spaces naming, fp32).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "errors.h"
#include "model.h"
#include "safetensors.h"

static char err[2048], tmpdir[256];
static struct st_file *src;

#define BASE_CONFIG \
    "{\"d_model\": 64, \"d_intermediate\": 0, \"n_layer\": 2, \"vocab_size\": 90," \
    " \"ssm_cfg\": {\"layer\": \"Mamba2\", \"d_state\": 16, \"d_conv\": 4, \"expand\": 2," \
    " \"headdim\": 16, \"ngroups\": 1, \"bias\": false, \"conv_bias\": true%s}," \
    " \"attn_layer_idx\": [], \"attn_cfg\": {}, \"rms_norm\": true, \"residual_in_fp32\": true," \
    " \"fused_add_norm\": true, \"pad_vocab_size_multiple\": 16, \"tie_embeddings\": false%s}"

static void write_file(const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void write_config(const char *ssm_extra, const char *top_extra)
{
    char buf[4096];
    snprintf(buf, sizeof buf, BASE_CONFIG, ssm_extra, top_extra);
    write_file("config.json", buf, strlen(buf));
}

/* Write BASE_CONFIG with the first `from` replaced by `to`. */
static void config_with(const char *from, const char *to)
{
    char base[4096], out[4096];
    snprintf(base, sizeof base, BASE_CONFIG, "", "");
    char *p = strstr(base, from);
    assert_non_null(p);
    snprintf(out, sizeof out, "%.*s%s%s", (int)(p - base), base, to, p + strlen(from));
    write_file("config.json", out, strlen(out));
}

enum mod { M_NONE, M_DROP, M_EXTRA, M_NAN, M_DTYPE_I32, M_TRUNCATE };

/* Copy the fixture's tensors into DIR/model.safetensors, modified. */
static void write_weights(enum mod mod, const char *target)
{
    size_t cap = 1 << 20, hl = 0, dl = 0;
    char *hdr = malloc(cap);
    uint8_t *data = malloc(4 << 20);
    hl += (size_t)sprintf(hdr + hl, "{");
    int first = 1;
    for (int i = 0; i < st_count(src); i++) {
        const struct st_tensor *t = st_at(src, i);
        int hit = target && !strcmp(t->name, target);
        if (hit && mod == M_DROP)
            continue;
        const char *dt = hit && mod == M_DTYPE_I32 ? "I32" : st_dtype_name(t->dtype);
        hl += (size_t)sprintf(hdr + hl, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", first ? "" : ",",
                              t->name, dt);
        for (int d = 0; d < t->ndim; d++)
            hl += (size_t)sprintf(hdr + hl, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        hl += (size_t)sprintf(hdr + hl, "],\"data_offsets\":[%zu,%zu]}", dl, dl + t->nbytes);
        memcpy(data + dl, t->data, t->nbytes);
        if (hit && mod == M_NAN) {
            float nan = NAN;
            memcpy(data + dl + 4, &nan, 4);
        }
        dl += t->nbytes;
        first = 0;
    }
    if (mod == M_EXTRA) {
        hl += (size_t)sprintf(hdr + hl, ",\"backbone.layers.0.mlp.fc1.weight\":{\"dtype\":\"F32\","
                                        "\"shape\":[2],\"data_offsets\":[%zu,%zu]}",
                              dl, dl + 8);
        memset(data + dl, 0, 8);
        dl += 8;
    }
    hl += (size_t)sprintf(hdr + hl, "}");
    while (hl % 8)
        hdr[hl++] = ' ';
    size_t total = 8 + hl + dl;
    uint8_t *img = malloc(total);
    for (int i = 0; i < 8; i++)
        img[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(img + 8, hdr, hl);
    memcpy(img + 8 + hl, data, dl);
    write_file("model.safetensors", img, mod == M_TRUNCATE ? total - 100 : total);
    free(img);
    free(hdr);
    free(data);
}

static int load_tmp(void)
{
    struct model *m = NULL;
    err[0] = 0;
    int rc = model_load(tmpdir, &m, err, sizeof err);
    model_free(m);
    return rc;
}

#define EXPECT(code, needle)                                                                     \
    do {                                                                                         \
        int rc_ = load_tmp();                                                                    \
        if (rc_ != (code))                                                                       \
            fail_msg("expected %s, got %s: %s", rc_strerror(code), rc_strerror(rc_), err);       \
        if (!strstr(err, needle))                                                                \
            fail_msg("message '%s' lacks '%s'", err, needle);                                    \
    } while (0)

static int setup(void **u)
{
    char path[512];
    snprintf(path, sizeof path, "%s/engine/m2_small_ss/model.safetensors", RECUR_FIXTURES);
    if (st_open(path, &src, err, sizeof err))
        return -1;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/recur-test-load-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **u)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    st_close(src);
    return system(cmd) == 0 ? 0 : -1;
}

static void reset(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmpdir);
    unlink(path);
    write_config("", "");
    write_weights(M_NONE, NULL);
}

static void baseline_loads(void **u)
{
    reset();
    assert_int_equal(load_tmp(), 0);
}

static void missing_config(void **u)
{
    reset();
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    unlink(path);
    EXPECT(RC_EIO, "config.json");
}

static void bad_config_json(void **u)
{
    reset();
    write_file("config.json", "{\"d_model\": 64,", 15);
    EXPECT(RC_EFORMAT, "invalid JSON");
    write_file("config.json", "{\"foo\": 1}", 10);
    EXPECT(RC_EFORMAT, "neither");
}

static void unsupported_configs(void **u)
{
    reset();
    config_with("\"d_intermediate\": 0", "\"d_intermediate\": 256");
    EXPECT(RC_EUNSUPPORTED, "d_intermediate");
    config_with("\"attn_layer_idx\": []", "\"attn_layer_idx\": [1]");
    EXPECT(RC_EUNSUPPORTED, "attn_layer_idx");
    config_with("\"rms_norm\": true", "\"rms_norm\": false");
    EXPECT(RC_EUNSUPPORTED, "rms_norm");
    config_with("\"rms_norm\": true", "\"rms_norm\": 0");
    EXPECT(RC_EFORMAT, "rms_norm must be true or false");
    write_config(", \"activation\": \"gelu\"", "");
    EXPECT(RC_EUNSUPPORTED, "activation");
    config_with("\"Mamba2\"", "\"Mamba9\"");
    EXPECT(RC_EUNSUPPORTED, "Mamba9");
    write_config(", \"d_ssm\": 64", "");
    EXPECT(RC_EUNSUPPORTED, "d_ssm");
    config_with("\"d_intermediate\": 0", "\"d_intermediate\": 0, \"d_intermediate\": 1");
    EXPECT(RC_EFORMAT, "invalid JSON"); /* duplicate keys */
}

static void inconsistent_dims(void **u)
{
    reset();
    config_with("\"headdim\": 16", "\"headdim\": 15");
    EXPECT(RC_EINVAL, "headdim 15 does not divide");
    config_with("\"ngroups\": 1", "\"ngroups\": 3");
    EXPECT(RC_EINVAL, "ngroups 3");
    config_with("\"d_model\": 64", "\"d_model\": -1");
    EXPECT(RC_EFORMAT, "d_model must be an integer");
    config_with("\"d_model\": 64", "\"d_model\": 99999999999");
    EXPECT(RC_EFORMAT, "d_model must be an integer");
    write_config("", ", \"norm_epsilon\": 0");
    EXPECT(RC_EFORMAT, "norm_epsilon");
}

static void shapes_contradict_config(void **u)
{
    reset();
    config_with("\"d_state\": 16", "\"d_state\": 32");
    EXPECT(RC_EFORMAT, "has shape [");
    assert_non_null(strstr(err, "in_proj.weight"));
    assert_non_null(strstr(err, "config needs"));
    config_with("\"n_layer\": 2", "\"n_layer\": 3");
    EXPECT(RC_EFORMAT, "missing tensor 'backbone.layers.2.norm.weight'");
    config_with("\"vocab_size\": 90", "\"vocab_size\": 99");
    EXPECT(RC_EFORMAT, "backbone.embedding.weight");
    config_with("\"tie_embeddings\": false", "\"tie_embeddings\": true");
    assert_int_equal(load_tmp(), 0); /* a stored lm_head of a tied model is tolerated */
}

static void missing_and_extra_tensors(void **u)
{
    reset();
    write_weights(M_DROP, "backbone.layers.1.mixer.dt_bias");
    EXPECT(RC_EFORMAT, "missing tensor 'backbone.layers.1.mixer.dt_bias'");
    write_weights(M_DROP, "lm_head.weight");
    EXPECT(RC_EFORMAT, "missing tensor 'lm_head.weight'");
    write_weights(M_EXTRA, NULL);
    EXPECT(RC_EFORMAT, "unexpected tensor 'backbone.layers.0.mlp.fc1.weight'");
}

static void bad_values_and_dtypes(void **u)
{
    reset();
    write_weights(M_NAN, "backbone.layers.0.mixer.out_proj.weight");
    EXPECT(RC_EFORMAT, "'backbone.layers.0.mixer.out_proj.weight' holds NaN");
    write_weights(M_DTYPE_I32, "backbone.norm_f.weight");
    EXPECT(RC_EUNSUPPORTED, "dtype I32");
    write_weights(M_TRUNCATE, NULL);
    EXPECT(RC_EFORMAT, "model.safetensors");
}

static void bad_index(void **u)
{
    reset();
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir);
    unlink(path);
    EXPECT(RC_EIO, "no model.safetensors");
    const char *idx = "{\"weight_map\": {\"backbone.norm_f.weight\": \"../evil.safetensors\"}}";
    write_file("model.safetensors.index.json", idx, strlen(idx));
    EXPECT(RC_EFORMAT, "not a .safetensors file name");
    idx = "{\"weight_map\": {\"backbone.norm_f.weight\": \"model-00001-of-00002.safetensors\"}}";
    write_file("model.safetensors.index.json", idx, strlen(idx));
    EXPECT(RC_EIO, "model-00001-of-00002.safetensors");
    idx = "{\"weight_map\": []}";
    write_file("model.safetensors.index.json", idx, strlen(idx));
    EXPECT(RC_EFORMAT, "weight_map");
}

static void nonfinite_config_forms(void **u)
{
    /* Python's bare Infinity and HF's {"__float__": "Infinity"} both load. */
    reset();
    write_config(", \"dt_limit\": [0.0, Infinity]", "");
    assert_int_equal(load_tmp(), 0);
    write_config(", \"dt_limit\": [0.001, {\"__float__\": \"Infinity\"}]", "");
    assert_int_equal(load_tmp(), 0);
    write_config(", \"dt_limit\": [0.5, 0.1]", "");
    EXPECT(RC_EFORMAT, "dt_limit");
    write_config(", \"dt_limit\": [0.0, NaN]", "");
    EXPECT(RC_EFORMAT, "dt_limit");
    write_config(", \"note\": \"Infinity in a string stays a string\"", "");
    assert_int_equal(load_tmp(), 0);
}

static void random_and_named(void **u)
{
    struct model_config c;
    assert_int_equal(model_config_named("mamba2-130m", &c), 0);
    assert_int_equal(c.n_vocab, 50288);
    assert_int_equal(c.nheads, 24);
    assert_int_equal(c.d_in_proj, 3352);
    assert_int_not_equal(model_config_named("gpt-4", &c), 0);
    assert_int_equal(model_config_named("mamba-130m", &c), 0);
    assert_int_equal(c.dt_rank, 48);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(baseline_loads),        cmocka_unit_test(missing_config),
        cmocka_unit_test(bad_config_json),       cmocka_unit_test(unsupported_configs),
        cmocka_unit_test(inconsistent_dims),     cmocka_unit_test(shapes_contradict_config),
        cmocka_unit_test(missing_and_extra_tensors), cmocka_unit_test(bad_values_and_dtypes),
        cmocka_unit_test(bad_index),             cmocka_unit_test(nonfinite_config_forms),
        cmocka_unit_test(random_and_named),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
