#!/usr/bin/env bash
# Run the control socket fuzz harness (standalone driver) over seeds: a
# negotiation and the generic commands, with and without ids, split and
# joined messages, malformed JSON.  VD_FUZZ_SEEDS=DIR keeps the seeds.
. "$top_srcdir/tests/functions.sh"

seeds=${VD_FUZZ_SEEDS:-$VD_TMP/seeds}
mkdir -p "$seeds"
neg='{"execute": "qmp_capabilities"}'
printf '%s\n' "$neg" '{"execute": "query-block", "id": 1}' >"$seeds/block"
printf '%s' "$neg" '{"execute":"query-version"}{"execute":"query-commands"}' >"$seeds/joined"
printf '%s\n' "$neg" '{"execute": "block-job-cancel", "arguments": {"device": "disk0", "force": true}}' \
  '{"execute": "block-job-set-speed", "arguments": {"device": "x", "speed": -1}}' >"$seeds/jobs"
printf '%s\n' '{"execute": "query-block"}' "$neg" '{"execute": [1, {"a": "\"}"}]}' \
  'garbage' '}' '{"execute": "query-jobs", "id": {"x": [null, true, 1.5e300]}}' >"$seeds/bad"
printf '%s\n' "$neg" '{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}' \
  '{"execute": "block-job-dismiss", "arguments": {"id": "\u0000"}}' >"$seeds/caps"
"$top_builddir/libtool" --mode=execute ${VD_VALGRIND:-} \
  "$top_builddir/tests/fuzz/fuzz-qmp" "$seeds"
