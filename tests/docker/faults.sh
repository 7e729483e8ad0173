# Fault injection under load, sourced by tests/docker/e2e.sh once the
# cluster is back to three consumers (it uses that script's dc, cid, step,
# ok, info, fail, wait_healthy and $work, $deploy, $cluster_dir, $project).
#
# `shardq-demo soak` runs in a one-off container on the cluster network: a
# subscriber at every consumer on 200 topics, raw publishers through both
# producers and the client library's keyed publisher, 2,000 publishes/s.
# Meanwhile this script kills a consumer (SIGKILL, then starts it again),
# pauses one for 15 s, disconnects one from the network for 15 s, and
# restarts every node in turn by SIGTERM, writing each fault's start and
# end to the fault log. Then soak judges the run (crates/demo/src/soak/
# verdict.rs): every publish answered; every acked publish delivered once,
# at its position, to every subscriber, except what a subscriber was told
# it lost after the kill; nothing answered "not sequenced" delivered;
# refusals only for the faulty node's topics and over within 1 s of the
# fault's end (the node thawed, connected, or answering again); no connection closed at a node without a fault; no gap
# except after the kill.

soak_dir=""
fault_log=""

# Milliseconds since the epoch (the soak container shares this clock).
now_ms() { date +%s%3N; }

# Runs the container's own health check in it until it passes (a restarted
# container gets new host ports; this needs none), 60 s at most; sets
# answered_ms to when the passing check began.
wait_answering() {
    local svc=$1 url=http://127.0.0.1:9100/healthz deadline=$((SECONDS + 60)) began
    [[ $svc == producer-* ]] && url=http://127.0.0.1:9000/readyz
    while :; do
        began="$(now_ms)"
        docker exec "$(cid "$svc")" /shardq-demo health "$url" >/dev/null 2>&1 && break
        ((SECONDS < deadline)) || fail "$svc does not answer $url 60 s after it came back"
        sleep 0.05
    done
    answered_ms=$began
}

# fault KIND SERVICE: does it and logs its `start` and `end`. The end is
# when the node is back: thawed (pause), connected again (partition), or
# for a kill or a restart, answering its health check again (its own start
# is part of the outage; what follows is the cluster's recovery).
fault() {
    local kind=$1 svc=$2 id network end_ms
    id="$(cid "$svc")"
    echo "$(now_ms) start $kind $svc" >>"$fault_log"
    case $kind in
    kill)
        docker kill -s KILL "$id" >/dev/null
        sleep 5
        docker start "$id" >/dev/null
        ;;
    pause)
        docker pause "$id" >/dev/null
        sleep 15
        docker unpause "$id" >/dev/null
        ;;
    partition)
        network="$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$id")"
        docker network disconnect "$network" "$id"
        sleep 15
        docker network connect --alias "$svc" "$network" "$id"
        ;;
    restart)
        docker restart -t 15 "$id" >/dev/null
        ;;
    esac
    end_ms="$(now_ms)"
    wait_answering "$svc"
    [[ $kind == kill || $kind == restart ]] && end_ms=$answered_ms
    echo "$end_ms end $kind $svc" >>"$fault_log"
    ok "$kind $svc: back and answering"
}

fault_phase() {
    step "faults under load: kill, pause, partition, rolling restart (shardq-demo soak)"
    soak_dir="$work/soak"
    fault_log="$soak_dir/faults.log"
    mkdir -p "$soak_dir"
    chmod 777 "$soak_dir" # the container runs as uid 10001
    : >"$fault_log"
    chmod 666 "$fault_log"
    # The same nodes with open topics (soak/t000...): a new file and a
    # rename, as for any node-list change; nodes pick it up within 1 s.
    sed 's/^open_topics *= *false/open_topics = true/' "$deploy/shardq.toml" >"$cluster_dir/shardq.toml.new"
    grep -q '^open_topics = true' "$cluster_dir/shardq.toml.new" || fail "deploy/shardq.toml has no open_topics line to flip"
    chmod 644 "$cluster_dir/shardq.toml.new"
    mv -f "$cluster_dir/shardq.toml.new" "$cluster_dir/shardq.toml"

    "${compose_cmd[@]}" --project-name "$project" --env-file "$env_file" "${files[@]}" \
        run --rm -T --no-deps -v "$soak_dir:/soak" demo \
        /shardq-demo soak --config /etc/shardq/shardq.toml --run-dir /soak --rate 2000 --topics 200 \
        </dev/null >"$work/soak.out" 2>"$work/soak.err" &
    local soak_pid=$! deadline=$((SECONDS + 120))
    until grep -q '^soak: ready' "$work/soak.out"; do
        kill -0 "$soak_pid" 2>/dev/null || fail "soak exited early: $(tail -n 5 "$work/soak.err")"
        ((SECONDS < deadline)) || fail "soak not ready after 120 s: $(tail -n 5 "$work/soak.err")"
        sleep 0.5
    done
    ok "$(cat "$work/soak.out")"
    sleep 5 # load with no fault: the baseline latency
    fault kill consumer-1
    sleep 8
    fault pause consumer-2
    sleep 8
    fault partition consumer-0
    sleep 8
    local svc
    for svc in consumer-0 consumer-1 consumer-2 producer-0 producer-1; do
        fault restart "$svc"
        sleep 3
    done
    touch "$soak_dir/stop"
    info "faults done; soak waits for every answer and delivery, then judges"
    local status=0
    wait "$soak_pid" || status=$?
    sed 's/^/    /' "$work/soak.out"
    ((status == 0)) || fail "soak found broken promises (exit $status): $(tail -n 3 "$work/soak.err")"
    ok "every promise held under the faults"
}
