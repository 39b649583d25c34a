/*
 * engine_fixture.h — the small checkpoints under tests/fixtures/engine/ and
 * their reference inputs, for the engine's unit tests.
 */
#ifndef RECUR_ENGINE_FIXTURE_H
#define RECUR_ENGINE_FIXTURE_H

#include <stdint.h>

struct model;

/* Load tests/fixtures/engine/NAME; fails the running test if it does not. */
struct model *load_fixture(const char *name);

/* The reference input ids of NAME (*ids, *T; malloc'ed) and, when logits is
 * not NULL, its reference logits (*logits, T x *V; malloc'ed). */
void fixture_ids(const char *name, int32_t **ids, int *T, float **logits, int *V);

#endif
