#!/usr/bin/env bash
# Docker end-to-end test of deploy/: the image, the compose cluster, a dead
# consumer, its recovery, and a scale-out — against real containers.
#
# Usage: tests/docker/e2e.sh
#
#   SHARDQ_IMAGE=TAG         image to build/use (default shardq:dev)
#   SHARDQ_REUSE_IMAGE=1     use an existing image instead of running deploy/build.sh
#   CARGO_TARGET_DIR         passed through to deploy/build.sh
#
# Without a reachable Docker daemon (or without compose) it prints a SKIPPED
# banner and exits 0. It never touches deploy/.env or a running `shardq`
# project: it runs under its own project name, with a fresh random psk in a
# temporary env file and host ports chosen by Docker, and removes its
# containers, network and volumes on the way out, also when a step fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
deploy="$repo/deploy"
image="${SHARDQ_IMAGE:-shardq:dev}"
config=/etc/shardq/shardq.toml
project="shardq-e2e-$(date +%s)-$$"
start_time=$SECONDS

step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n\033[1m===== [%3ds] step %d: %s\033[0m\n' "$((SECONDS - start_time))" "$step_no" "$*"
}
info() { printf '  %s\n' "$*"; }
ok() { printf '  \033[32mok\033[0m   %s\n' "$*"; }
fail() {
    printf '\n\033[31mFAIL\033[0m (step %d, %ds): %s\n' "$step_no" "$((SECONDS - start_time))" "$*" >&2
    exit 1
}
skip() {
    printf '\n%s\n' '#######################################################################'
    printf '##  SKIPPED: tests/docker/e2e.sh did NOT run.\n'
    printf '##  Reason: %s\n' "$1"
    printf '##  The deploy/ image, compose cluster and scale-out are UNTESTED here.\n'
    printf '%s\n\n' '#######################################################################'
    exit 0
}

# ---------------------------------------------------------------- preflight
if ! docker info >/dev/null 2>&1; then
    skip "no Docker daemon reachable (\`docker info\` failed)"
fi
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
else
    skip "Docker is here but neither \`docker compose\` nor \`docker-compose\` is"
fi
for file in shardq.toml shardq.scale.toml; do
    # The containers run as uid 10001 and read the bind-mounted file.
    [[ -n "$(find "$deploy/$file" -perm -004)" ]] ||
        fail "deploy/$file must be world-readable (chmod a+r): the image runs as uid 10001"
done

work="$(mktemp -d "${TMPDIR:-/tmp}/shardq-e2e.XXXXXX")"
env_file="$work/e2e.env"
files=(-f "$deploy/compose.yaml")
failed=1

dc() { "${compose_cmd[@]}" --project-name "$project" --env-file "$env_file" "${files[@]}" "$@"; }

# The id of a service's container (not one-off `run` containers).
cid() {
    docker ps -aq \
        --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" \
        --filter "label=com.docker.compose.oneoff=False" | head -n 1
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    jobs -p | xargs -r kill 2>/dev/null
    if [[ $failed == 1 && -s "$env_file" ]]; then
        printf '\n===== the cluster at the failure\n'
        files=(-f "$deploy/compose.yaml" -f "$deploy/compose.scale.yaml")
        dc ps
        local id svc state
        for id in $(docker ps -aq --filter "label=com.docker.compose.project=$project"); do
            svc="$(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$id")"
            state="$(docker inspect -f '{{.State.Status}}{{if .State.Health}}/{{.State.Health.Status}}{{end}}' "$id")"
            if [[ "$state" == running/healthy ]]; then
                printf '\n----- %s (%s): last 30 log lines\n' "$svc" "$state"
                docker logs --tail 30 "$id" 2>&1
            else
                printf '\n----- %s (%s): last 200 log lines\n' "$svc" "$state"
                docker logs --tail 200 "$id" 2>&1
                docker inspect -f '{{range .State.Health.Log}}health: exit {{.ExitCode}} {{.Output}}{{end}}' "$id" 2>/dev/null | tail -n 3
            fi
        done
        for log in "$work"/*.err; do
            [[ -s "$log" ]] && printf '\n----- %s\n' "$(basename "$log")" && tail -n 40 "$log"
        done
    fi
    if [[ -s "$env_file" ]]; then
        printf '\n===== [%3ds] teardown: %s\n' "$((SECONDS - start_time))" "$project"
        files=(-f "$deploy/compose.yaml" -f "$deploy/compose.scale.yaml")
        dc down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1
        # Whatever `down` left (one-off containers killed mid-run, say).
        docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null 2>&1
        docker network ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker network rm >/dev/null 2>&1
        docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null 2>&1
        if [[ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$project")" ]]; then
            printf 'warning: containers of %s are still there\n' "$project" >&2
        fi
    fi
    rm -rf "$work"
    if [[ $failed == 0 ]]; then
        printf '\n\033[32mPASS\033[0m tests/docker/e2e.sh in %ds\n' "$((SECONDS - start_time))"
    else
        printf '\n\033[31mFAILED\033[0m tests/docker/e2e.sh after %ds\n' "$((SECONDS - start_time))" >&2
        [[ $status == 0 ]] && status=1
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The declared topics (queue/event) of a cluster file's [queues].
topics_of() {
    awk '
        /^[[:space:]]*\[/ { in_queues = ($0 ~ /^[[:space:]]*\[queues\][[:space:]]*(#.*)?$/); next }
        in_queues && /=/ {
            queue = $0; sub(/[[:space:]]*=.*/, "", queue); gsub(/[[:space:]"]/, "", queue)
            events = $0; sub(/^[^=]*=/, "", events); sub(/#.*/, "", events); gsub(/[][[:space:]"]/, "", events)
            n = split(events, list, ",")
            for (i = 1; i <= n; i++) if (list[i] != "") print queue "/" list[i]
        }' "$1"
}

# The consumer that owns TOPIC under deploy/FILE (no network needed).
owner_of() {
    docker run --rm --network none -v "$deploy/$1:$config:ro" "$image" \
        /shardq-demo owner --config "$config" "$2"
}

# A shardq-demo command in a one-off container on the cluster network.
demo() {
    timeout 120 "${compose_cmd[@]}" --project-name "$project" --env-file "$env_file" "${files[@]}" \
        run --rm -T --no-deps demo /shardq-demo "$@" </dev/null 2>>"$work/oneoff.err"
}

# `pub` through PRODUCER to TOPIC with PAYLOAD: prints pub's JSON line,
# returns pub's status.
publish() {
    demo pub --config "$config" --producer "$1" "${2%%/*}" "${2#*/}" "$3"
}

# `sub` to TOPIC in the background, N messages or T ms, into $work/NAME.jsonl;
# returns once the subscription is in place.
subscribe_bg() {
    local name=$1 topic=$2 count=$3 timeout_ms=$4
    : >"$work/$name.err"
    timeout 120 "${compose_cmd[@]}" --project-name "$project" --env-file "$env_file" "${files[@]}" \
        run --rm -T --no-deps demo /shardq-demo sub --config "$config" \
        --count "$count" --timeout-ms "$timeout_ms" "${topic%%/*}" "${topic#*/}" \
        </dev/null >"$work/$name.jsonl" 2>"$work/$name.err" &
    sub_pid=$!
    local deadline=$((SECONDS + 30))
    until grep -q '^subscribed to' "$work/$name.err"; do
        kill -0 "$sub_pid" 2>/dev/null || fail "sub $topic exited early: $(tail -n 3 "$work/$name.err")"
        ((SECONDS < deadline)) || fail "sub $topic not subscribed after 30 s"
        sleep 0.5
    done
    ok "subscribed to $topic (background sub, $name)"
}

# Waits for a background sub to finish; fails on a non-zero exit.
wait_sub() {
    local name=$1
    if ! wait "$sub_pid"; then
        fail "sub $name failed: $(tail -n 3 "$work/$name.err"); got: $(cat "$work/$name.jsonl")"
    fi
}

# Waits until every SERVICE's container is running and healthy.
wait_healthy() {
    local deadline=$((SECONDS + 120)) svc id state restarts
    for svc in "$@"; do
        while :; do
            id="$(cid "$svc")"
            state=missing restarts=0
            if [[ -n "$id" ]]; then
                state="$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")"
                restarts="$(docker inspect -f '{{.RestartCount}}' "$id")"
            fi
            [[ "$state" == running/healthy ]] && break
            ((restarts < 3)) || fail "$svc is crash-looping ($restarts restarts)"
            ((SECONDS < deadline)) || fail "$svc not healthy after 120 s (state $state)"
            sleep 1
        done
        ok "$svc healthy"
    done
}

# GET PATH from the admin port PORT of SERVICE, as published on 127.0.0.1
# (pure bash: no curl needed). Prints the body.
admin_get() {
    local addr host port
    addr="$(dc port "$1" "$2" 2>/dev/null | tail -n 1)"
    host="${addr%:*}" port="${addr##*:}"
    [[ -n "$port" ]] || return 1
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n" "$2" "$0" "$1" >&3
        sed "1,/^\r\{0,1\}$/d" <&3' "$host" "$port" "$3"
}

# Waits until PRODUCER's /readyz shows all N consumer links up.
wait_links_up() {
    local producer=$1 want=$2 deadline=$((SECONDS + 60)) body=""
    while :; do
        body="$(admin_get "$producer" 9000 /readyz || true)"
        (($(grep -o '"state":"up"' <<<"$body" | wc -l) == want)) && break
        ((SECONDS < deadline)) || fail "$producer: not all $want links up after 60 s: $body"
        sleep 1
    done
    ok "$producer: all $want consumer links up ($(grep -o '"id":"[^"]*","in_flight":[0-9]*,\("last_error":"[^"]*",\)\{0,1\}"reconnects":[0-9]*,"state":"[a-z]*"' <<<"$body" | sed 's/"id":"\([^"]*\)".*"reconnects":\([0-9]*\),"state":"\([a-z]*\)"/\1=\3(reconnects \2)/' | tr '\n' ' '))"
}

started_at() { docker inspect -f '{{.State.StartedAt}} restarts={{.RestartCount}}' "$(cid "$1")"; }

# ------------------------------------------------------------------- build
step "image $image"
if [[ "${SHARDQ_REUSE_IMAGE:-0}" == 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
    info "SHARDQ_REUSE_IMAGE=1: using the existing $image"
else
    "$deploy/build.sh" "$image"
fi
for command in e2e pub sub owner health; do
    docker run --rm --network none "$image" /shardq-demo "$command" --help >/dev/null 2>&1 ||
        fail "$image's shardq-demo has no \`$command\` subcommand: rebuild it (unset SHARDQ_REUSE_IMAGE)"
done
ok "$image has shardq-consumer, shardq-producer and shardq-demo (e2e pub sub owner health)"

# --------------------------------------------------------------------- up
step "compose up: 3 consumers, 2 producers (project $project, ${compose_cmd[*]})"
psk="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
{
    echo "SHARDQ_PSK=$psk"
    echo "SHARDQ_IMAGE=$image"
    echo "RUST_LOG=info"
    # Empty host ports: Docker picks free ones, so a running cluster on the
    # default ports is left alone.
    for node in PRODUCER_0 PRODUCER_1 CONSUMER_0 CONSUMER_1 CONSUMER_2 CONSUMER_3; do
        echo "SHARDQ_${node}_PORT="
        echo "SHARDQ_${node}_ADMIN_PORT="
    done
} >"$env_file"
chmod 600 "$env_file"
# Variables in the environment beat the env file: make them agree.
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
dc up -d
wait_healthy consumer-0 consumer-1 consumer-2 producer-0 producer-1
wait_links_up producer-0 3
wait_links_up producer-1 3

# -------------------------------------------------------------- e2e check
step "shardq-demo e2e (the demo service) against the 3-consumer cluster"
dc run --rm -T demo </dev/null 2>>"$work/oneoff.err" | tee "$work/e2e-1.out" ||
    fail "shardq-demo e2e failed"
grep -q '^PASS' "$work/e2e-1.out" || fail "shardq-demo e2e printed no PASS line"
ok "e2e passed"

# ------------------------------------------------------------ kill one consumer
step "kill one consumer: its topics answer unavailable, the others flow"
declare -A owner
mapfile -t topics < <(topics_of "$deploy/shardq.toml")
((${#topics[@]} > 0)) || fail "no topics in deploy/shardq.toml [queues]"
for topic in "${topics[@]}"; do
    owner[$topic]="$(owner_of shardq.toml "$topic")"
    info "$topic -> ${owner[$topic]}"
done
# The victim: a consumer that owns a topic, other than the file's first
# consumer (shardq's Subscriber, and so `sub`, opens its first connection to
# the first consumer listed, so with that one dead no `sub` can start).
first_consumer="$(awk '/^\[\[consumers\]\]/ { c = 1; next } c && /^[[:space:]]*id[[:space:]]*=/ { gsub(/.*=[[:space:]]*"|".*/, ""); print; exit }' "$deploy/shardq.toml")"
victim="" down_topic="" up_topic=""
for topic in "${topics[@]}"; do
    if [[ -z "$victim" && "${owner[$topic]}" != "$first_consumer" ]]; then
        victim="${owner[$topic]}" down_topic=$topic
    fi
done
[[ -n "$victim" ]] || fail "every topic is owned by $first_consumer: declare more events"
for topic in "${topics[@]}"; do
    if [[ "${owner[$topic]}" != "$victim" ]]; then
        up_topic=$topic
        break
    fi
done
[[ -n "$up_topic" ]] || fail "every topic is owned by $victim: cannot show the others flowing"
info "killing $victim (owns $down_topic); $up_topic stays with ${owner[$up_topic]}"
producers_before="$(started_at producer-0) $(started_at producer-1)"
dc kill "$victim" 2>/dev/null
[[ "$(docker inspect -f '{{.State.Status}}' "$(cid "$victim")")" == exited ]] || fail "$victim did not stop"
ok "$victim killed (SIGKILL)"

subscribe_bg sub-up "$up_topic" 2 30000
for producer in producer-0 producer-1; do
    # Unavailable at once, or after the producer notices the broken link.
    deadline=$((SECONDS + 20))
    while :; do
        out="$(publish "$producer" "$down_topic" "{\"e2e\":\"dead-owner\",\"via\":\"$producer\"}")" && rc=0 || rc=$?
        if ((rc != 0)) && grep -q '"ok":false' <<<"$out" && grep -q '"code":"unavailable"' <<<"$out"; then
            ok "$down_topic via $producer: $out"
            break
        fi
        ((SECONDS < deadline)) || fail "$down_topic via $producer: expected unavailable, got (exit $rc): $out"
        info "$down_topic via $producer: not unavailable yet (exit $rc): $out"
        sleep 1
    done
    out="$(publish "$producer" "$up_topic" "{\"e2e\":\"live-owner\",\"via\":\"$producer\"}")" ||
        fail "$up_topic via $producer was not acked: $out"
    grep -q '"ok":true' <<<"$out" || fail "$up_topic via $producer: $out"
    ok "$up_topic via $producer acked: $out"
done
wait_sub sub-up
for producer in producer-0 producer-1; do
    grep -q "\"via\":\"$producer\"" "$work/sub-up.jsonl" ||
        fail "$up_topic: the message via $producer was acked but not delivered: $(cat "$work/sub-up.jsonl")"
done
ok "both messages on $up_topic delivered to its subscriber:"
sed 's/^/       /' "$work/sub-up.jsonl"

# ---------------------------------------------------------------- recovery
step "start $victim again: its topics flow again, no producer restart"
dc start "$victim" 2>/dev/null
wait_healthy "$victim"
subscribe_bg sub-back "$down_topic" 2 45000
for producer in producer-0 producer-1; do
    deadline=$((SECONDS + 30))
    attempt=0
    while :; do
        attempt=$((attempt + 1))
        out="$(publish "$producer" "$down_topic" "{\"e2e\":\"owner-back\",\"via\":\"$producer\",\"attempt\":$attempt}")" && break
        ((SECONDS < deadline)) || fail "$down_topic via $producer still not acked after 30 s: $out"
        info "$down_topic via $producer, attempt $attempt: $out (the producer is reconnecting; retrying)"
        sleep 2
    done
    ok "$down_topic via $producer acked on attempt $attempt: $out"
done
wait_sub sub-back
for producer in producer-0 producer-1; do
    grep -q "\"via\":\"$producer\"" "$work/sub-back.jsonl" ||
        fail "$down_topic: the message via $producer was acked but not delivered: $(cat "$work/sub-back.jsonl")"
done
ok "both messages on $down_topic delivered at $victim:"
sed 's/^/       /' "$work/sub-back.jsonl"
producers_after="$(started_at producer-0) $(started_at producer-1)"
[[ "$producers_before" == "$producers_after" ]] ||
    fail "a producer restarted: before [$producers_before] after [$producers_after]"
ok "producers never restarted (started/restarts unchanged: $producers_after)"
wait_links_up producer-0 3

# ---------------------------------------------------------------- scale out
step "scale out to 4 consumers (compose.scale.yaml, shardq.scale.toml)"
files=(-f "$deploy/compose.yaml" -f "$deploy/compose.scale.yaml")
moved=0
for topic in "${topics[@]}"; do
    new_owner="$(owner_of shardq.scale.toml "$topic")"
    if [[ "$new_owner" != "${owner[$topic]}" ]]; then
        moved=$((moved + 1))
        info "$topic moves: ${owner[$topic]} -> $new_owner"
        [[ "$new_owner" == consumer-3 ]] || fail "$topic moved to $new_owner: only moves to consumer-3 are expected"
    fi
done
info "$moved of ${#topics[@]} topics move to consumer-3; no topic moves between the old consumers"
info "the README's procedure: new consumer first, then one producer at a time"
dc up -d --no-deps consumer-3
wait_healthy consumer-3
for producer in producer-0 producer-1; do
    dc up -d --no-deps "$producer"
    wait_healthy "$producer"
    wait_links_up "$producer" 4
done
step "shardq-demo e2e (the demo service) against the 4-consumer node list"
dc run --rm -T --no-deps demo </dev/null 2>>"$work/oneoff.err" | tee "$work/e2e-2.out" ||
    fail "shardq-demo e2e failed against the scaled-out cluster"
grep -q 'consumer-3' "$work/e2e-2.out" || fail "the e2e run never mentions consumer-3"
ok "e2e passed with 4 consumers"

failed=0
step "tear down (containers, network, volumes)"
