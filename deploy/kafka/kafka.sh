#!/usr/bin/env bash
# A real Apache Kafka broker (4.x, KRaft, single node in combined broker+controller mode) for
# development and tests, with its jars from Maven Central (deploy/kafka/pom.xml).
#
#   deploy/kafka/kafka.sh start    fetch the jars if missing, format the storage once, start the
#                                  broker in the background; returns once it answers
#   deploy/kafka/kafka.sh stop     SIGTERM the broker by its PID, SIGKILL after 30 s
#   deploy/kafka/kafka.sh status   exit 0 if running, 3 if not
#   deploy/kafka/kafka.sh check    exit 0 if the broker answers on KAFKA_PORT (a healthcheck)
#   deploy/kafka/kafka.sh run      the broker in the foreground, logging to stdout (the
#                                  entry point of the Kafka image, deploy/images/Containerfile)
#
# Environment:
#   KAFKA_PORT             client listener on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener on 127.0.0.1 (default KAFKA_PORT + 1)
#   KAFKA_DATA             data dir (default deploy/kafka/data): server.properties, cluster.id,
#                          kafka.pid, kafka.out, logs/server.log and the topic data in kafka-logs/.
#                          A restart on the same dir keeps the cluster id, topics and records.
#   KAFKA_HOST             address the listeners bind (default 127.0.0.1; 0.0.0.0 in a container)
#   KAFKA_ADVERTISED_HOST  the name clients and the controller reach it by (default KAFKA_HOST,
#                          or 127.0.0.1 when that is 0.0.0.0; `kafka` in the compose stack)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 60)
#   KAFKA_HEAP             JVM heap (default 512m)
#   JAVA_HOME              optional; otherwise `java` from PATH
#   KAFKA_EXTRA_PROPERTIES optional file of key=value lines merged into server.properties: a key
#                          given there replaces the script's line, others are added (extra
#                          listeners, SASL/TLS; see tests/integration/test_kafka_security.py).
#                          KAFKA_PORT must stay a PLAINTEXT listener: the start check uses it.
#   KAFKA_SCRAM_USERS      optional, one `--add-scram` argument per line, given to the storage
#                          format (KRaft keeps SCRAM users in its metadata from the start), e.g.
#                          SCRAM-SHA-512=[name=linepulse,password=...]; only a fresh data dir
#   KAFKA_OPTS             optional extra JVM arguments (e.g. -Djava.security.auth.login.config)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LIB="$HERE/lib"
POM="$HERE/pom.xml"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_DATA="${KAFKA_DATA:-$HERE/data}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
HOST="${KAFKA_HOST:-127.0.0.1}"
# Where this script itself connects to check the broker (0.0.0.0 is bound, not dialled).
CHECK_HOST="$HOST"
if [[ "$HOST" == "0.0.0.0" ]]; then
    CHECK_HOST=127.0.0.1
fi
ADVERTISED="${KAFKA_ADVERTISED_HOST:-$CHECK_HOST}"

die() {
    echo "kafka.sh: $*" >&2
    exit 1
}

java_bin() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        echo "$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        command -v java
    else
        die "java not found (install a JDK 17+, or set JAVA_HOME)"
    fi
}

data_dir() {
    mkdir -p "$KAFKA_DATA"
    KAFKA_DATA="$(cd "$KAFKA_DATA" && pwd)"
    PIDFILE="$KAFKA_DATA/kafka.pid"
    PROPS="$KAFKA_DATA/server.properties"
}

# Fetch the broker's runtime classpath into lib/ unless it is there for this very pom.xml. The
# stamp lib/.pom.sha256 is written last, so an interrupted fetch is redone on the next start;
# a lock keeps two starts on a fresh checkout from fetching over each other.
jars_fetched() {
    [[ -f "$LIB/.pom.sha256" && "$(cat "$LIB/.pom.sha256")" == "$(sha256sum "$POM" | cut -d' ' -f1)" ]] \
        && compgen -G "$LIB/kafka_2.13-*.jar" >/dev/null
}

fetch_jars() {
    if jars_fetched; then
        return 0  # without the lock: the image's lib/ is read-only
    fi
    mkdir -p "$LIB"
    (
        flock 9
        local stamp tmp
        if jars_fetched; then  # another start fetched them meanwhile
            exit 0
        fi
        stamp="$(sha256sum "$POM" | cut -d' ' -f1)"
        command -v mvn >/dev/null 2>&1 || die "mvn not found: Maven is needed to fetch the Kafka jars"
        echo "kafka.sh: fetching the Kafka jars from Maven Central into $LIB" >&2
        rm -rf "$LIB"/.fetch.*
        tmp="$(mktemp -d "$LIB/.fetch.XXXXXX")"
        if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
            -DoutputDirectory="$tmp" -DincludeScope=runtime >&2; then
            rm -rf "$tmp"
            die "mvn dependency:copy-dependencies failed (see above)"
        fi
        rm -f "$LIB"/*.jar "$LIB/.pom.sha256"
        mv "$tmp"/*.jar "$LIB"/
        rmdir "$tmp"
        echo "$stamp" >"$LIB/.pom.sha256"
    ) 9>"$LIB/.lock"
}

proc_gone() {
    # $1: pid. True when the process is gone or a zombie (its parent has not reaped it yet).
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 0
    [[ -z "$state" || "$state" == Z ]]
}

pid_alive() {
    # $1: pid. True when it is alive and is a Kafka broker on this data dir (not a reused pid).
    [[ -n "$1" && -r "/proc/$1/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$1/cmdline" | grep -F -- "kafka.Kafka $PROPS" >/dev/null  # not -q: under pipefail an early exit SIGPIPEs tr
}

running_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(cat "$PIDFILE")"
    pid_alive "$pid" || return 1
    echo "$pid"
}

port_busy() {
    (exec 3<>"/dev/tcp/$CHECK_HOST/$1") 2>/dev/null
}

write_properties() {
    cat >"$PROPS" <<PROPS
# Written by deploy/kafka/kafka.sh on every start: edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$ADVERTISED:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$ADVERTISED:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DATA/kafka-logs

# One node: every replication factor is 1, and small internal topics start fast.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# A restart after a crash (SIGKILL) waits for the dead incarnation's session to expire:
# 4 s rather than the default 9 s, still well above the heartbeat interval.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000

# No topic comes into being by being named: the services create theirs with the plant
# config's layout (partitions, compaction) and refuse one laid out otherwise. Compacted
# topics need the log cleaner.
auto.create.topics.enable=false
log.cleaner.enable=true
num.network.threads=2
num.io.threads=4
PROPS
    merge_extra_properties
}

# KAFKA_EXTRA_PROPERTIES: each key there replaces the script's line for it; the rest is added.
merge_extra_properties() {
    local extra="${KAFKA_EXTRA_PROPERTIES:-}"
    [[ -n "$extra" ]] || return 0
    [[ -r "$extra" ]] || die "KAFKA_EXTRA_PROPERTIES: cannot read $extra"
    awk 'function key(line) { sub(/^[ \t]+/, "", line); sub(/[ \t]*[=:].*$/, "", line); return line }
        /^[ \t]*(#|!|$)/ { if (FILENAME != ARGV[1]) print; next }
        FILENAME == ARGV[1] { given[key($0)] = 1; next }
        !(key($0) in given) { print }' "$extra" "$PROPS" >"$PROPS.tmp"
    {
        echo
        echo "# From KAFKA_EXTRA_PROPERTIES ($extra)"
        grep -Ev '^[[:space:]]*(#|!|$)' "$extra" || true
    } >>"$PROPS.tmp"
    mv -f "$PROPS.tmp" "$PROPS"
}

# Format the storage once; the cluster id is kept in cluster.id so a restart reuses it.
format_storage() {
    local java="$1" cluster_id meta="$KAFKA_DATA/kafka-logs/meta.properties"
    if [[ -f "$meta" ]]; then
        return 0
    fi
    if [[ -s "$KAFKA_DATA/cluster.id" ]]; then
        cluster_id="$(cat "$KAFKA_DATA/cluster.id")"
    else
        cluster_id="$("$java" -cp "$LIB/*" kafka.tools.StorageTool random-uuid)"
        echo "$cluster_id" >"$KAFKA_DATA/cluster.id"
    fi
    local scram=() user
    while IFS= read -r user; do
        if [[ -n "$user" ]]; then
            scram+=(--add-scram "$user")
        fi
    done <<<"${KAFKA_SCRAM_USERS:-}"
    "$java" -cp "$LIB/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS" --ignore-formatted \
        "${scram[@]}" >"$KAFKA_DATA/format.out" 2>&1 || {
        cat "$KAFKA_DATA/format.out" >&2
        die "formatting the storage in $KAFKA_DATA/kafka-logs failed"
    }
}

# One ApiVersions request (v0) over the Kafka protocol: true when the broker answers it.
broker_answers() {
    python3 - "$CHECK_HOST" "$KAFKA_PORT" <<'PY' 2>/dev/null
import socket, struct, sys
client = b"kafka.sh"
body = struct.pack(">hhih", 18, 0, 1, len(client)) + client
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(struct.pack(">i", len(body)) + body)
    head = b""
    while len(head) < 10:
        chunk = s.recv(10 - len(head))
        if not chunk:
            sys.exit(1)
        head += chunk
size, correlation, error = struct.unpack(">iih", head)
sys.exit(0 if correlation == 1 and error == 0 else 1)
PY
}

log_tail() {
    echo "---- tail of $KAFKA_DATA/logs/server.log" >&2
    tail -n 40 "$KAFKA_DATA/logs/server.log" >&2 2>/dev/null || true
    echo "---- tail of $KAFKA_DATA/kafka.out" >&2
    tail -n 20 "$KAFKA_DATA/kafka.out" >&2 2>/dev/null || true
}

start() {
    local java pid port log started deadline
    java="$(java_bin)"
    data_dir
    if pid="$(running_pid)"; then
        echo "kafka.sh: already running (pid $pid) on $HOST:$KAFKA_PORT"
        return 0
    fi
    rm -f "$PIDFILE"
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_busy "$port"; then
            die "port $HOST:$port is already in use"
        fi
    done
    fetch_jars
    write_properties
    format_storage "$java"

    # A fresh server.log per run, so the wait below reads only this run's lines.
    mkdir -p "$KAFKA_DATA/logs"
    for log in "$KAFKA_DATA/logs/server.log" "$KAFKA_DATA/kafka.out"; do
        if [[ -f "$log" ]]; then
            mv -f "$log" "$log.prev"
        fi
    done

    started=$SECONDS
    # setsid: the broker is a daemon in its own session, out of reach of the caller's Ctrl-C.
    # It does not fork here (the shell's background child is no group leader), so $! is java.
    local opts=()
    read -r -a opts <<<"${KAFKA_OPTS:-}"
    setsid "$java" "-Xmx$KAFKA_HEAP" "-Xms$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true "${opts[@]}" \
        -Dlog4j2.configurationFile="$HERE/log4j2.xml" -Dkafka.logs.dir="$KAFKA_DATA/logs" \
        -cp "$LIB/*" kafka.Kafka "$PROPS" </dev/null >"$KAFKA_DATA/kafka.out" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"

    deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if proc_gone "$pid"; then
            log_tail
            rm -f "$PIDFILE"
            die "the broker exited during startup (data in $KAFKA_DATA)"
        fi
        if grep -q "Kafka Server started" "$KAFKA_DATA/logs/server.log" 2>/dev/null \
            && port_busy "$KAFKA_PORT" && broker_answers; then
            echo "kafka.sh: broker up on $HOST:$KAFKA_PORT (pid $pid, $((SECONDS - started)) s, data $KAFKA_DATA)"
            return 0
        fi
        sleep 0.2
    done
    log_tail
    stop_pid "$pid"
    die "the broker did not answer on $HOST:$KAFKA_PORT within ${KAFKA_START_TIMEOUT} s; stopped it"
}

# In the foreground, as a container's main process: the JVM replaces the shell, so the
# engine's SIGTERM reaches the broker (a controlled shutdown), and the log goes to stdout.
run() {
    local java
    java="$(java_bin)"
    data_dir
    fetch_jars
    write_properties
    format_storage "$java"
    local opts=()
    read -r -a opts <<<"${KAFKA_OPTS:-}"
    echo "kafka.sh: starting the broker on $HOST:$KAFKA_PORT (advertised as $ADVERTISED:$KAFKA_PORT, data $KAFKA_DATA)"
    exec "$java" "-Xmx$KAFKA_HEAP" "-Xms$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true "${opts[@]}" \
        -Dlog4j2.configurationFile="$HERE/log4j2-console.xml" \
        -cp "$LIB/*" kafka.Kafka "$PROPS"
}

stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        if proc_gone "$pid"; then
            break
        fi
        sleep 0.1
    done
    if ! proc_gone "$pid"; then
        echo "kafka.sh: broker $pid still up after 30 s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        while ! proc_gone "$pid"; do sleep 0.1; done
    fi
    rm -f "$PIDFILE"
}

stop() {
    local pid
    data_dir
    if pid="$(running_pid)"; then
        stop_pid "$pid"
        echo "kafka.sh: stopped broker $pid"
    else
        rm -f "$PIDFILE"
        echo "kafka.sh: not running"
    fi
}

status() {
    local pid
    data_dir
    if pid="$(running_pid)"; then
        echo "kafka.sh: running (pid $pid), data $KAFKA_DATA"
    else
        echo "kafka.sh: not running, data $KAFKA_DATA"
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    run) run ;;
    check) broker_answers ;;
    stop) stop ;;
    status) status ;;
    fetch) fetch_jars ;;
    *)
        echo "usage: $0 start|stop|status|fetch|run|check" >&2
        exit 2
        ;;
esac
