#!/usr/bin/env bash
# A walkthrough of recurd serve with curl: create a session, stream a
# document into it in chunks, read its scores, generate, snapshot it,
# restore the snapshot into a new session and show both continue
# identically, fork, delete.
#
#   recurd serve --model models/recur-sp &      # in another terminal
#   clients/demo.sh [DOCUMENT]
#
# RECURD_URL (default http://127.0.0.1:8080) and RECURD_API_KEY (if the
# server has --api-key) are read from the environment. The document
# defaults to the GPL-3 text every Debian system ships, else this repo's
# README. Needs only bash, curl, sed and cmp.
set -euo pipefail

URL=${RECURD_URL:-http://127.0.0.1:8080}
DOC=${1:-/usr/share/common-licenses/GPL-3}
[[ -r $DOC ]] || DOC="$(dirname "$0")/../README.md"
AUTH=()
[[ -n ${RECURD_API_KEY:-} ]] && AUTH=(-H "Authorization: Bearer $RECURD_API_KEY")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
call() { # METHOD PATH [curl args...]: prints the body, fails on HTTP >= 400
    local m=$1 p=$2
    shift 2
    curl -sS --fail-with-body -X "$m" "${AUTH[@]}" "$URL$p" "$@"
}
json() { call "$1" "$2" -H 'Content-Type: application/json' -d "$3"; }
field() { sed -n "s/.*\"$1\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" | head -1; }

say "the server"
call GET /health; echo
call GET /v1/models | sed 's/,"/,\n  "/g' | head -20; echo

say "a session"
SID=$(json POST /v1/sessions '{}' | field id)
echo "session $SID"

say "stream $(basename "$DOC") ($(wc -c <"$DOC") bytes) into it, in 3 chunked uploads"
split -n 3 -d "$DOC" "$TMP/part."
for part in "$TMP"/part.*; do
    # text/plain with chunked transfer: tokenised and read as it arrives,
    # scored token by token; only the totals are printed here
    call POST "/v1/sessions/$SID/append" -H 'Content-Type: text/plain' \
        -H 'Transfer-Encoding: chunked' --data-binary "@$part" >"$TMP/score.json"
    printf 'read %s tokens, now at position %s, perplexity of this part %s\n' \
        "$(field n_tokens <"$TMP/score.json")" "$(field position <"$TMP/score.json")" \
        "$(field ppl <"$TMP/score.json")"
done
echo "perplexity by position bucket (last part):"
sed 's/.*"buckets":\[\(.*\)\].*/\1/; s/},{/}\n{/g' "$TMP/score.json" | sed 's/^/  /'

say "score a sentence statelessly, with per-token log-probs"
json POST /v1/score '{"text": "This program is free software.", "logprobs": true}' |
    sed 's/.*"tokens":\[//; s/},{/}\n{/g' | sed 's/^/  /' | head -8

say "generate 24 tokens (commit:false leaves the session where it was)"
json POST "/v1/sessions/$SID/generate" '{"max_tokens": 24, "temperature": 0.8, "seed": 42, "commit": false}' | field text

say "stream a generation as server-sent events"
json POST "/v1/sessions/$SID/generate" '{"max_tokens": 6, "temperature": 0, "stream": true, "commit": false}'

say "snapshot the session and restore it into a new one"
call GET "/v1/sessions/$SID/state" -o "$TMP/session.snap"
echo "snapshot: $(wc -c <"$TMP/session.snap") bytes"
COPY=$(call POST /v1/sessions -H 'Content-Type: application/octet-stream' \
    --data-binary "@$TMP/session.snap" | field id)
echo "restored into $COPY at position $(call GET "/v1/sessions/$COPY" | field position)"

say "both continue identically"
json POST "/v1/sessions/$SID/append" '{"text": " END OF TERMS AND CONDITIONS"}' | field nll >"$TMP/a"
json POST "/v1/sessions/$COPY/append" '{"text": " END OF TERMS AND CONDITIONS"}' | field nll >"$TMP/b"
json POST "/v1/sessions/$SID/generate" '{"max_tokens": 16, "temperature": 0.9, "seed": 7}' | field text >>"$TMP/a"
json POST "/v1/sessions/$COPY/generate" '{"max_tokens": 16, "temperature": 0.9, "seed": 7}' | field text >>"$TMP/b"
paste -d'|' "$TMP/a" "$TMP/b" | sed 's/^/  original | restored: /'
if cmp -s "$TMP/a" "$TMP/b" && cmp -s <(call GET "/v1/sessions/$SID/state") <(call GET "/v1/sessions/$COPY/state"); then
    echo "identical: same scores, same tokens, same state bytes"
else
    echo "DIFFERENT: the restored session diverged" >&2
    exit 1
fi

say "fork: a copy that goes its own way"
FORK=$(json POST /v1/sessions "{\"fork_of\": \"$SID\"}" | field id)
json POST "/v1/sessions/$FORK/append" '{"text": " And now for something completely different."}' >/dev/null
echo "original at $(call GET "/v1/sessions/$SID" | field position), fork at $(call GET "/v1/sessions/$FORK" | field position)"

say "clean up"
for s in "$SID" "$COPY" "$FORK"; do call DELETE "/v1/sessions/$s"; echo; done
