#!/usr/bin/env bash
# Each step's outcome after `docker-compose -f compose/compose.yaml up`, which returns 0 when the last
# step fails. Prints "service state exit-code" in run order and exits 1 unless every step exited 0 in
# the latest run. A container left from an earlier run (its step did not start this time because one
# before it failed) shows as "stale".
#
#   compose/check.sh [-p PROJECT] [-f compose/gpu.yaml]     (the options given to `up`, after its -f)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
compose=(${DOCKER_COMPOSE:-docker-compose} -f "$here/compose.yaml" "$@")
DOCKER=${DOCKER:-docker}

epoch() { date -d "$1" +%s.%N 2>/dev/null || echo 0; }

status=0 last_finish=0
# `config --services` lists the services in dependency order (the steps form one chain)
for service in $("${compose[@]}" config --services); do
    id=$("${compose[@]}" ps -q "$service" 2>/dev/null | head -n1)
    if [ -z "$id" ]; then
        printf '%-12s %-8s %s\n' "$service" "not-run" "-"
        status=1
        continue
    fi
    read -r state code started finished < <("$DOCKER" inspect \
        -f '{{.State.Status}} {{.State.ExitCode}} {{.State.StartedAt}} {{.State.FinishedAt}}' "$id")
    if awk -v s="$(epoch "$started")" -v f="$last_finish" 'BEGIN { exit !(s < f) }'; then
        state=stale
    else
        last_finish=$(epoch "$finished")
    fi
    printf '%-12s %-8s %s\n' "$service" "$state" "$code"
    if [ "$state" != exited ] || [ "$code" != 0 ]; then status=1; fi
done
exit $status
