#!/usr/bin/env bash
# Docker end-to-end test of deploy/: the image, the compose cluster, a dead
# consumer and its recovery, then a scale-out to four consumers and a
# scale-in back to three *under load*, by deploy/README.md's procedure
# (replace the live node list, SIGHUP; no node restarts), checking that
# every acked publish reached every subscriber exactly once and in order;
# then faults under load (tests/docker/faults.sh): a consumer killed,
# paused, cut off the network, and every node restarted in turn, judged by
# `shardq-demo soak`.
#
# Usage: tests/docker/e2e.sh
#
#   SHARDQ_IMAGE=TAG         image to build/use (default shardq:dev)
#   SHARDQ_REUSE_IMAGE=1     use an existing image instead of running deploy/build.sh
#   CARGO_TARGET_DIR         passed through to deploy/build.sh
#
# Without a reachable Docker daemon (or without compose) it prints a SKIPPED
# banner and exits 0. It never touches deploy/.env, deploy/cluster/ or a
# running `shardq` project: it runs under its own project name, with a fresh
# random psk and node key in a temporary env file, its own live node list in
# a temporary directory (SHARDQ_CLUSTER_DIR) and host ports chosen by
# Docker, and removes its containers, network and volumes on the way out,
# also when a step fails.
#
# The load during the node-list changes (subscribers, publishers) runs on
# this host: the image's own shardq-demo, copied out of it, against the
# ports published on 127.0.0.1. So the Docker engine must be this Linux host.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The fault phase (kill, pause, partition, rolling restart under load).
# shellcheck source=tests/docker/faults.sh
. "$repo/tests/docker/faults.sh"
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
# The live node list every node follows (SHARDQ_CLUSTER_DIR): the test's
# own, so deploy/cluster/ is never touched.
cluster_dir="$work/cluster"
files=(-f "$deploy/compose.yaml")
nodes=(consumer-0 consumer-1 consumer-2 producer-0 producer-1)
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
        docker ps -aq --filter "label=shardq-e2e=$project" | xargs -r docker rm -f >/dev/null 2>&1
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

# The host address (127.0.0.1:N) Docker published CONTAINER_PORT of SERVICE
# on. `compose port` is slow (docker-compose v1 starts Python each time), so
# cache_ports looks the nodes' ports up once per container start; host_port
# asks compose only for what is not cached.
declare -A port_cache=()
cache_ports() {
    local svc port ports
    for svc in "$@"; do
        if [[ $svc == producer-* ]]; then ports=(7000 9000); else ports=(7100 9100); fi
        for port in "${ports[@]}"; do
            port_cache[$svc:$port]="$(dc port "$svc" "$port" 2>/dev/null | tail -n 1)"
        done
    done
}
host_port() {
    if [[ -n "${port_cache[$1:$2]:-}" ]]; then
        printf '%s\n' "${port_cache[$1:$2]}"
    else
        dc port "$1" "$2" 2>/dev/null | tail -n 1
    fi
}

# GET PATH from the admin port PORT of SERVICE, as published on 127.0.0.1
# (pure bash: no curl needed). Prints the body.
admin_get() {
    local addr host port
    addr="$(host_port "$1" "$2")"
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

# The status line a WebSocket upgrade to PATH at the port PORT of SERVICE
# (as published on 127.0.0.1) is answered with, e.g. "HTTP/1.1 101 ...".
upgrade_status() {
    local addr host port
    addr="$(host_port "$1" "$2")"
    host="${addr%:*}" port="${addr##*:}"
    [[ -n "$port" ]] || return 1
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" "$2" "$0" "$1" >&3
        head -n 1 <&3 | tr -d "\r"' "$host" "$port" "$3"
}

# ------------------------------------------------------- node-list helpers

# Replaces the live node list with deploy/FILE the way deploy/README.md
# says: a new file, then a rename, so a node never reads half a file.
set_node_list() {
    install -m 644 "$deploy/$1" "$cluster_dir/shardq.toml.new"
    mv -f "$cluster_dir/shardq.toml.new" "$cluster_dir/shardq.toml"
}

# SERVICE's `GET /v1/status` (admin port 9100 on consumers, 9000 on producers).
view_of() {
    local port=9100
    [[ $1 == producer-* ]] && port=9000
    admin_get "$1" "$port" /v1/status
}
# Fields of a /v1/status body: the node list (ids, comma-separated), its
# hash, a counter (owned_topics, edge_topics), the ids of the node's links.
view_list() { sed -n 's/.*"node_list":\[\([^]]*\)\].*/\1/p' <<<"$1" | tr -d '"'; }
view_hash() { sed -n 's/.*"node_list_hash":"\([^"]*\)".*/\1/p' <<<"$1"; }
view_count() { sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" <<<"$1"; }
view_links() {
    sed -n 's/.*"links":\[\([^]]*\)\].*/\1/p' <<<"$1" | grep -o '"id":"[^"]*"' | cut -d'"' -f4 | tr '\n' ' ' || true
}

# Waits until every SERVICE answers /v1/status with the node list WANT
# (ids, comma-separated) and they all show the same node_list_hash.
wait_views() {
    local want=$1 deadline=$((SECONDS + 90)) svc body list hash first summary agreed
    shift
    while :; do
        agreed=1 first="" summary=""
        for svc in "$@"; do
            body="$(view_of "$svc" || true)"
            list="$(view_list "$body")" hash="$(view_hash "$body")"
            summary+="$svc=[$list] "
            [[ -z "$first" ]] && first=$hash
            if [[ "$list" != "$want" || -z "$hash" || "$hash" != "$first" ]]; then
                agreed=0
            fi
        done
        ((agreed)) && break
        ((SECONDS < deadline)) || fail "the nodes' views still disagree after 90 s: $summary"
        sleep 0.5
    done
    ok "all $# nodes route by [$want] (node_list_hash $first)"
    for svc in "$@"; do
        body="$(view_of "$svc" || true)"
        if [[ $svc == consumer-* ]]; then
            info "$svc: owned_topics $(view_count "$body" owned_topics), edge_topics $(view_count "$body" edge_topics), links: $(view_links "$body")"
        else
            info "$svc: links: $(view_links "$body")"
        fi
    done
}

# `shardq-demo cluster` (every node's view; exit 1 when they disagree) in a
# one-off demo container, as deploy/README.md runs it.
cluster_check() {
    demo cluster --config "$config" | tee "$work/cluster-$1.out" ||
        fail "shardq-demo cluster: the nodes' views disagree (or a node is unreachable)"
    ok "shardq-demo cluster: every node's view agrees"
}

# ----------------------------------------------------------- load helpers
# Subscribers and publishers run on this host (the image's shardq-demo,
# copied out), against the ports published on 127.0.0.1, so they can run
# for the whole change without a container per publish.
demo_bin="$work/shardq-demo"
subs=()

# Writes OUT: deploy/shardq.toml's [queues] and the entries of SERVICEs with
# their published host ports (ids unchanged: routing hashes ids).
host_file() {
    local out=$1 svc kind ws admin
    shift
    awk '/^\[\[/ { exit } { print }' "$deploy/shardq.toml" >"$out"
    for svc in "$@"; do
        if [[ $svc == producer-* ]]; then kind=producers ws=7000 admin=9000; else kind=consumers ws=7100 admin=9100; fi
        printf '\n[[%s]]\nid = "%s"\nurl = "ws://%s"\nadmin = "http://%s"\n' "$kind" "$svc" \
            "$(host_port "$svc" "$ws")" "$(host_port "$svc" "$admin")" >>"$out"
    done
}

# A `sub` to every event of QUEUE at CONSUMER only (its cluster file lists
# just that consumer), in the background, until killed; returns once the
# subscriptions are in place. RUST_LOG=warn makes a reconnect visible.
start_subscriber() {
    local consumer=$1 queue=$2 name="sub-$1-$2" deadline=$((SECONDS + 30))
    host_file "$work/$name.toml" "$consumer"
    RUST_LOG=warn "$demo_bin" sub --config "$work/$name.toml" --timeout-ms 3600000 "$queue" '*' \
        </dev/null >"$work/$name.jsonl" 2>"$work/$name.err" &
    sub_pids+=($!)
    subs+=("$name")
    until grep -q '^subscribed to' "$work/$name.err"; do
        kill -0 "${sub_pids[-1]}" 2>/dev/null || fail "sub at $consumer exited early: $(tail -n 3 "$work/$name.err")"
        ((SECONDS < deadline)) || fail "sub at $consumer not subscribed after 30 s"
        sleep 0.2
    done
    ok "subscribed to $queue/* at $consumer only (host sub, $name)"
}

# Publishes through PRODUCER until $work/stop-PHASE exists: round after
# round, 5 messages to each topic per `pub` run, each payload a unique id
# PRODUCER.PHASE.N. Every answer goes to $work/pub-PRODUCER-PHASE.log as
# "topic id status" (status: ok, an error code, or none when pub printed
# no answer for it).
publish_loop() {
    local producer=$1 phase=$2 n=0 topic k
    local batch="$work/batch-$producer" log="$work/pub-$producer-$phase.log"
    : >"$log"
    while [[ ! -e "$work/stop-$phase" ]]; do
        for topic in "${topics[@]}"; do
            : >"$batch.in"
            for ((k = 0; k < 5; k++)); do
                n=$((n + 1))
                printf '{"scale":"%s.%s.%d"}\n' "$producer" "$phase" "$n" >>"$batch.in"
            done
            "$demo_bin" pub --config "$work/pub.toml" --producer "$producer" "${topic%%/*}" "${topic#*/}" \
                <"$batch.in" >"$batch.out" 2>>"$work/pub-$producer.err" || true
            paste -d ' ' "$batch.in" "$batch.out" | awk -v topic="$topic" '{
                id = $1; sub(/.*"scale":"/, "", id); sub(/".*/, "", id)
                status = "none"
                if ($0 ~ /"ok":true/) status = "ok"
                else if (match($0, /"code":"[^"]*"/)) status = substr($0, RSTART + 8, RLENGTH - 9)
                print topic, id, status
            }' >>"$log"
        done
        sleep 0.2 # leave the shared machine some air: this is about loss, not speed
    done
}

start_load() {
    local phase=$1 producer deadline=$((SECONDS + 60))
    load_pids=()
    for producer in producer-0 producer-1; do
        publish_loop "$producer" "$phase" &
        load_pids+=($!)
    done
    # Flowing: a first round through every topic acked via both producers.
    for producer in producer-0 producer-1; do
        until (($(awk '$3 == "ok" && !($1 in t) { t[$1] = 1; n++ } END { print n + 0 }' "$work/pub-$producer-$phase.log" 2>/dev/null || echo 0) == ${#topics[@]})); do
            ((SECONDS < deadline)) || fail "load phase $phase: $producer not acking every topic after 60 s: $(tail -n 3 "$work/pub-$producer-$phase.log")"
            sleep 0.2
        done
    done
    ok "load phase $phase: publishing to all ${#topics[@]} topics through producer-0 and producer-1"
}

stop_load() {
    touch "$work/stop-$1"
    wait "${load_pids[@]}" || fail "a publisher loop of phase $1 failed: $(tail -n 3 "$work"/pub-*.err)"
    awk '{ n[$3]++ } END { for (s in n) printf "%s %d  ", s, n[s]; print "" }' "$work"/pub-*-"$1".log >"$work/load-$1.sum"
    ok "load phase $1 stopped; answers: $(cat "$work/load-$1.sum")"
}

# What subscriber NAME (of QUEUE) got, against every publish so far:
# "acked delivered missing duplicates out_of_order gaps misrouted [examples]".
delivery_stats() {
    awk -v queue="$2" -v published="$work/published.log" '
        FILENAME == published {
            if (index($1, queue "/") == 1) { topic_of[$2] = $1; if ($3 == "ok") ok[$2] = 1 }
            next
        }
        /"gap":true/ { gaps++; next }
        match($0, /"scale":"[^"]*"/) {
            id = substr($0, RSTART + 9, RLENGTH - 10)
            match($0, /"topic":"[^"]*"/)
            topic = substr($0, RSTART + 9, RLENGTH - 10)
            delivered++
            if (++seen[id] == 2) duplicates++
            split(id, part, ".")
            key = topic " " part[1] " " part[2]
            if ((key in last) && part[3] + 0 <= last[key]) disorder++
            last[key] = part[3] + 0
            if ((id in topic_of) && topic_of[id] != topic) misrouted++
        }
        END {
            for (id in ok) {
                acked++
                if (!(id in seen) && ++missing <= 3) examples = examples " " topic_of[id] "#" id
            }
            printf "%d %d %d %d %d %d %d%s\n", acked, delivered, missing, duplicates, disorder, gaps, misrouted, examples
        }' "$work/published.log" "$work/$1.jsonl"
}

# Waits (60 s at most) until every subscriber has every acked publish, then
# fails on anything missing, duplicated, out of order or reported as a gap.
check_deliveries() {
    local deadline=$((SECONDS + 60)) name complete acked delivered missing duplicates disorder gaps misrouted examples
    cat "$work"/pub-*.log >"$work/published.log"
    while :; do
        complete=1
        for name in "${subs[@]}"; do
            read -r _ _ missing _ <<<"$(delivery_stats "$name" "${name##*-}")"
            ((missing == 0)) || complete=0
        done
        ((complete)) && break
        ((SECONDS < deadline)) || break
        sleep 0.5
    done
    for name in "${subs[@]}"; do
        read -r acked delivered missing duplicates disorder gaps misrouted examples <<<"$(delivery_stats "$name" "${name##*-}")"
        if ((missing + duplicates + disorder + gaps + misrouted > 0)); then
            fail "$name: of $acked acked publishes, $missing missing (e.g.${examples:- none}), $duplicates duplicated, $disorder out of order, $gaps gap events, $misrouted on the wrong topic"
        fi
        ok "$name: all $acked acked publishes of ${name##*-}/* delivered once, in order ($delivered delivered; no gap)"
    done
}

# ------------------------------------------------------------------- build
step "image $image"
if [[ "${SHARDQ_REUSE_IMAGE:-0}" == 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
    info "SHARDQ_REUSE_IMAGE=1: using the existing $image"
else
    "$deploy/build.sh" "$image"
fi
for command in e2e pub sub owner health cluster soak; do
    docker run --rm --network none "$image" /shardq-demo "$command" --help >/dev/null 2>&1 ||
        fail "$image's shardq-demo has no \`$command\` subcommand: rebuild it (unset SHARDQ_REUSE_IMAGE)"
done
ok "$image has shardq-consumer, shardq-producer and shardq-demo (e2e pub sub owner health cluster soak)"

# --------------------------------------------------------------------- up
step "compose up: 3 consumers, 2 producers (project $project, ${compose_cmd[*]})"
psk="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
# The nodes' own key, which no client gets (the demo service and the load
# on this host run with the psk alone).
node_key="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
{
    echo "SHARDQ_PSK=$psk"
    echo "SHARDQ_NODE_KEY=$node_key"
    echo "SHARDQ_IMAGE=$image"
    echo "RUST_LOG=info"
    echo "SHARDQ_CLUSTER_DIR=$cluster_dir"
    # Empty host ports: Docker picks free ones, so a running cluster on the
    # default ports is left alone.
    for node in PRODUCER_0 PRODUCER_1 CONSUMER_0 CONSUMER_1 CONSUMER_2 CONSUMER_3; do
        echo "SHARDQ_${node}_PORT="
        echo "SHARDQ_${node}_ADMIN_PORT="
    done
} >"$env_file"
chmod 600 "$env_file"
# The live node list, as deploy/README.md sets it up: a directory holding a
# world-readable copy of shardq.toml (the containers run as uid 10001).
install -D -m 644 "$deploy/shardq.toml" "$cluster_dir/shardq.toml"
chmod 755 "$cluster_dir"
# Variables in the environment beat the env file: make them agree.
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
# Except the node key: compose reads it from the env file, and the clients
# this script runs on this host (sub, pub) must work without it.
unset SHARDQ_NODE_KEY node_key
dc up -d
wait_healthy consumer-0 consumer-1 consumer-2 producer-0 producer-1
cache_ports "${nodes[@]}"
wait_links_up producer-0 3
wait_links_up producer-1 3

# ------------------------------------------------- node key, legacy dialect
step "the nodes hold the node key; the legacy dialect is on (legacy = true)"
for svc in "${nodes[@]}"; do
    # Without SHARDQ_NODE_KEY a node falls back to the psk and says so.
    if docker logs "$(cid "$svc")" 2>&1 | grep -q 'no node key'; then
        fail "$svc runs without a node key: $(docker logs "$(cid "$svc")" 2>&1 | grep 'no node key' | head -n 1)"
    fi
done
ok "no node warns \"no node key\": every node got SHARDQ_NODE_KEY"
for svc in "${nodes[@]}"; do
    if [[ $svc == producer-* ]]; then paths=(/produce) ws=7000; else paths=(/producer /subscribe/database%2Fcreate) ws=7100; fi
    for path in "${paths[@]}"; do
        line="$(upgrade_status "$svc" "$ws" "$path" || true)"
        [[ "$line" == *" 101 "* ]] ||
            fail "$svc: the legacy endpoint $path answered ${line:-nothing}, not 101 (is legacy = true in the cluster file?)"
    done
    ok "$svc: the legacy endpoint(s) ${paths[*]} switch to WebSocket"
done

# ----------------------------------------------------------- file polling
step "the nodes follow the live node list without a signal (a file replaced by rename)"
# The same consumers in reverse order: a different file and a different
# list for the nodes (so they reload and /v1/status shows the new order),
# the same routing (rendezvous hashing ignores order; so does the hash).
awk 'BEGIN { RS = ""; ORS = "\n\n" }
    /^\[\[consumers\]\]/ { consumers[++n] = $0; next }
    /^\[\[producers\]\]/ && !done { for (i = n; i >= 1; i--) print consumers[i]; done = 1 }
    { print }
    END { if (!done) for (i = n; i >= 1; i--) print consumers[i] }' "$deploy/shardq.toml" >"$cluster_dir/shardq.toml.new"
chmod 644 "$cluster_dir/shardq.toml.new"
mv -f "$cluster_dir/shardq.toml.new" "$cluster_dir/shardq.toml"
wait_views consumer-2,consumer-1,consumer-0 "${nodes[@]}"
set_node_list shardq.toml
wait_views consumer-0,consumer-1,consumer-2 "${nodes[@]}"
ok "no SIGHUP needed: every node picked up both renamed files by polling"

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
cache_ports "$victim" # a restarted container gets new host ports
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

# ------------------------------------------------------ scale out, under load
step "scale out to 4 consumers under load: new node list + SIGHUP, no restarts"
files=(-f "$deploy/compose.yaml" -f "$deploy/compose.scale.yaml")
moved_topics=()
for topic in "${topics[@]}"; do
    new_owner="$(owner_of shardq.scale.toml "$topic")"
    if [[ "$new_owner" != "${owner[$topic]}" ]]; then
        moved_topics+=("$topic")
        info "$topic moves: ${owner[$topic]} -> $new_owner"
        [[ "$new_owner" == consumer-3 ]] || fail "$topic moved to $new_owner: only moves to consumer-3 are expected"
    fi
done
((${#moved_topics[@]} > 0)) || fail "no declared topic moves to consumer-3: declare more events"
info "${#moved_topics[@]} of ${#topics[@]} topics move to consumer-3; no topic moves between the old consumers"

# The image's shardq-demo, for the load on this host.
tools="$(docker create --label "shardq-e2e=$project" "$image")"
docker cp "$tools:/shardq-demo" "$demo_bin" >/dev/null
docker rm "$tools" >/dev/null
"$demo_bin" --version >/dev/null 2>&1 ||
    fail "cannot run the image's shardq-demo on this host: the load needs a local Linux Docker engine"
host_file "$work/pub.toml" consumer-0 consumer-1 consumer-2 producer-0 producer-1

nodes_before="$(for svc in "${nodes[@]}"; do echo "$svc $(started_at "$svc")"; done)"
sub_pids=()
queues=()
mapfile -t queues < <(printf '%s\n' "${topics[@]%%/*}" | sort -u)
# A subscriber on every topic at each old consumer: for every moved topic
# one sits at its old owner (which becomes an edge), the others at edges
# that re-point to the new owner.
for consumer in consumer-0 consumer-1 consumer-2; do
    for queue in "${queues[@]}"; do
        start_subscriber "$consumer" "$queue"
    done
done
start_load 1

info "the README's procedure: replace the live list, start consumer-3, SIGHUP every node"
change_started=$SECONDS
set_node_list shardq.scale.toml
dc up -d --no-deps consumer-3
dc kill -s HUP "${nodes[@]}" consumer-3
info "consumer-3 started and every node signalled $((SECONDS - change_started)) s after the list changed"
wait_healthy consumer-3
cache_ports consumer-3
wait_links_up producer-0 4
wait_links_up producer-1 4
wait_views consumer-0,consumer-1,consumer-2,consumer-3 "${nodes[@]}" consumer-3
deadline=$((SECONDS + 60))
while owned="$(view_count "$(view_of consumer-3 || true)" owned_topics)"; ((${owned:-0} == 0)); do
    ((SECONDS < deadline)) || fail "consumer-3 owns no topic 60 s after the change"
    sleep 0.5
done
ok "consumer-3 owns $owned topic(s) now; the change took $((SECONDS - change_started)) s"
cluster_check scaled-out
sleep 3 # more load on the 4-consumer layout
stop_load 1
check_deliveries

# ---------------------------------------------------------------- 4 consumers
step "shardq-demo e2e (the demo service) against the 4-consumer node list (load paused)"
dc run --rm -T --no-deps demo </dev/null 2>>"$work/oneoff.err" | tee "$work/e2e-2.out" ||
    fail "shardq-demo e2e failed against the scaled-out cluster"
grep -q 'consumer-3' "$work/e2e-2.out" || fail "the e2e run never mentions consumer-3"
ok "e2e passed with 4 consumers"

# ------------------------------------------------------- scale in, under load
step "scale in to 3 consumers under load: old node list + SIGHUP, then stop consumer-3"
start_load 2
change_started=$SECONDS
set_node_list shardq.toml
dc kill -s HUP "${nodes[@]}" consumer-3
wait_views consumer-0,consumer-1,consumer-2 "${nodes[@]}" consumer-3
# consumer-3 may stop once it owns nothing and no node links to it.
deadline=$((SECONDS + 90))
while :; do
    body="$(view_of consumer-3 || true)"
    owned="$(view_count "$body" owned_topics)"
    linked=""
    for svc in "${nodes[@]}"; do
        [[ " $(view_links "$(view_of "$svc" || true)") " == *" consumer-3 "* ]] && linked+="$svc "
    done
    [[ "$owned" == 0 && -z "$linked" ]] && break
    ((SECONDS < deadline)) || fail "consumer-3 not drained after 90 s: owned_topics ${owned:-?}, still linked from: ${linked:-none}"
    sleep 0.5
done
ok "consumer-3 owns no topic and no node links to it ($((SECONDS - change_started)) s after the change)"
dc stop consumer-3
dc rm -f consumer-3
ok "consumer-3 stopped and removed"
cluster_check scaled-in
sleep 3 # more load on the 3-consumer layout, without consumer-3
stop_load 2

# --------------------------------------------------------------- the verdict
step "every acked publish delivered exactly once; no node restarted; no subscriber reconnected"
check_deliveries
# Refusals: only `unavailable` on a moving topic (while its new owner is
# not reachable yet) and `timeout` (a slow machine) are acceptable.
refused="$(awk -v moved=" ${moved_topics[*]} " '
    $3 == "ok" || $3 == "timeout" { next }
    $3 == "unavailable" && index(moved, " " $1 " ") { next }
    { print }' "$work"/pub-*.log)"
[[ -z "$refused" ]] || fail "publishes refused other than \`unavailable\` on a moving topic: $(head -n 10 <<<"$refused")"
for topic in "${moved_topics[@]}"; do
    for phase in 1 2; do
        acked="$(awk -v t="$topic" '$1 == t && $3 == "ok"' "$work"/pub-*-"$phase".log | wc -l)"
        ((acked > 0)) || fail "$topic: nothing acked in load phase $phase"
    done
    info "$topic (moved): $(awk -v t="$topic" '$1 == t { n[$3]++ } END { for (s in n) printf "%s %d  ", s, n[s] }' "$work"/pub-*.log)"
done
nodes_after="$(for svc in "${nodes[@]}"; do echo "$svc $(started_at "$svc")"; done)"
[[ "$nodes_before" == "$nodes_after" ]] ||
    fail "a node restarted during the scale-out/in: before [$nodes_before] after [$nodes_after]"
ok "no consumer or producer restarted (start times and restart counts unchanged)"
for index in "${!sub_pids[@]}"; do
    kill -0 "${sub_pids[$index]}" 2>/dev/null || fail "${subs[$index]} exited: $(tail -n 3 "$work/${subs[$index]}.err")"
    kill "${sub_pids[$index]}" 2>/dev/null || true
    wait "${sub_pids[$index]}" 2>/dev/null || true
done
noise="$(for name in "${subs[@]}"; do grep -v '^subscribed to' "$work/$name.err" | sed "s/^/$name: /"; done || true)"
[[ -z "$noise" ]] || fail "a subscriber logged (reconnect, gap or error): $(head -n 5 <<<"$noise")"
ok "all ${#subs[@]} subscribers kept their one connection: no reconnect, no gap, no error logged"

# ------------------------------------------------------ faults, under load
fault_phase

failed=0
step "tear down (containers, network, volumes)"
