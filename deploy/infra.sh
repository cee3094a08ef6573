#!/usr/bin/env bash
# deploy/infra.sh: the local infrastructure Tally's tests need, on 127.0.0.1 only.
#
#   Apache Kafka 4.4.0 (org.apache.kafka:kafka_2.13 from Maven Central, resolved with mvn into a
#     classpath folder), KRaft mode, one combined broker+controller, PLAINTEXT 127.0.0.1:9092,
#     SSL 127.0.0.1:9094, CONTROLLER 127.0.0.1:9093, new transaction protocol (feature
#     transaction.version=2).
#   MariaDB from Debian's mariadb-server package (10.11 on Debian 12), started without systemd
#     on 127.0.0.1:3306, accepting TLS there, with database `tally` and the TEST-ONLY account
#     tally/tally, which may do anything on `tally` and on every `tally%` database (tests create
#     one per test).
#   A TEST-ONLY private CA and a server certificate for 127.0.0.1 and localhost, made with the
#     openssl command at first start (in tls/ of the data folder), which both servers present.
#     Servers started by a version of this script without TLS keep running without it; `up`
#     then says so, and `down` followed by `up` enables it.
#
# Usage: deploy/infra.sh up | down | status | env | verify | kafka-tool CLASS [ARGS...]
#   up          install what is missing, start what is not running, wait until both answer
#   down        stop both cleanly (SIGTERM, then SIGKILL after a timeout)
#   status      print what runs; exit 0 only when both are up
#   env         print `export ...` lines for eval: eval "$(deploy/infra.sh env)"
#   verify      prove both work: Kafka transactions (abort, commit, read_committed, exactly-once
#               read-process-write; deploy/infra/TxnCheck.java), the tally user over TCP, and
#               TLS to both, verified against the private CA
#   kafka-tool  run a Kafka CLI class on the broker's classpath, for example
#               deploy/infra.sh kafka-tool org.apache.kafka.tools.TopicCommand \
#                 --bootstrap-server 127.0.0.1:9092 --list
#
# Everything it keeps (jars, Maven repository, data, logs, PID files) lives under
# ${TALLY_INFRA_DIR:-$HOME/.cache/tally-infra}. Needs Java 17+ and Maven (installed from Debian
# when missing and run as root); installing MariaDB needs root.
#
# The ports can be moved, to run a second copy beside the first with its own TALLY_INFRA_DIR:
# TALLY_KAFKA_PORT (9092), TALLY_KAFKA_CONTROLLER_PORT (9093), TALLY_KAFKA_TLS_PORT (9094) and
# TALLY_MYSQL_PORT (3306). Every subcommand of that copy needs the same variables.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
export PATH="$PATH:/usr/sbin:/sbin"    # mariadbd lives in /usr/sbin, absent from some PATHs

# ---- versions, addresses, timeouts ------------------------------------------------------------
KAFKA_VERSION="${TALLY_KAFKA_VERSION:-4.4.0}"
LOG4J_VERSION="2.25.5"                 # matches the log4j-core Kafka 4.4.0 depends on
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
HOST="127.0.0.1"
KAFKA_PORT="${TALLY_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${TALLY_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_TLS_PORT="${TALLY_KAFKA_TLS_PORT:-9094}"
KAFKA_HEAP_OPTS="-Xms256m -Xmx512m"
KAFKA_NUM_PARTITIONS=8
KAFKA_TRANSACTION_VERSION=2
MYSQL_PORT="${TALLY_MYSQL_PORT:-3306}"
MYSQL_DB="tally"
MYSQL_USER="tally"
MYSQL_PASSWORD="tally"                 # test-only credentials
MAVEN_TIMEOUT=900                      # seconds for resolving the Kafka jars
APT_TIMEOUT=600                        # seconds for apt-get update + install
KAFKA_READY_TIMEOUT=120                # seconds from start until the broker answers metadata
KAFKA_TOOL_TIMEOUT=30                  # seconds for one Kafka CLI call
MYSQL_READY_TIMEOUT=60                 # seconds from start until mariadb-admin ping answers
STOP_TIMEOUT=60                        # seconds for a clean stop before SIGKILL
TLS_CA_DAYS=3650                       # validity of the private CA
TLS_SERVER_DAYS=825                    # validity of the server certificate
LOCK_TIMEOUT=600                       # seconds to wait for another infra.sh holding the lock

# ---- layout -----------------------------------------------------------------------------------
INFRA_DIR="${TALLY_INFRA_DIR:-${HOME:?set HOME or TALLY_INFRA_DIR}/.cache/tally-infra}"
mkdir -p "$INFRA_DIR"
INFRA_DIR="$(cd "$INFRA_DIR" && pwd -P)"
LOG_DIR="$INFRA_DIR/logs"
RUN_DIR="$INFRA_DIR/run"
M2_REPO="$INFRA_DIR/m2"
KAFKA_DIST="$INFRA_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_DIST/libs"
KAFKA_CONF="$INFRA_DIR/kafka-config"
KAFKA_DATA="$INFRA_DIR/kafka-data"
KAFKA_LOG="$LOG_DIR/kafka.log"
KAFKA_PID="$RUN_DIR/kafka.pid"
MYSQL_DIR="$INFRA_DIR/mariadb"
MYSQL_DATA="$MYSQL_DIR/data"
MYSQL_SOCKET="$MYSQL_DIR/mysqld.sock"
MYSQL_LOG="$LOG_DIR/mariadb.log"
MYSQL_PID="$RUN_DIR/mariadb.pid"
MYSQL_TLS="$MYSQL_DIR/tls"             # copies of the server's files mariadbd may read
TLS_DIR="$INFRA_DIR/tls"
TLS_CA="$TLS_DIR/ca.pem"
TLS_CA_KEY="$TLS_DIR/ca-key.pem"
TLS_CERT="$TLS_DIR/server.pem"
TLS_KEY="$TLS_DIR/server-key.pem"
TLS_KEYSTORE="$TLS_DIR/server-keystore.pem" # key then certificate chain, as Kafka's PEM keystore
LOG_ROTATE_BYTES=$((64 * 1024 * 1024)) # a server log past this size moves to *.old on start

log() { printf '[infra] %s\n' "$*" >&2; }
die() { printf '[infra] ERROR: %s\n' "$*" >&2; exit 1; }

for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_TLS_PORT" "$MYSQL_PORT"; do
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] \
        || die "port '$port' is not a number from 1 to 65535"
done

# ---- small helpers ----------------------------------------------------------------------------

# The PID in a PID file when that process is alive and its command line contains $2.
running_pid() {
    local pidfile="$1" pattern="$2" pid
    [ -f "$pidfile" ] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" || return 1
    echo "$pid"
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# Fails clearly when a port we need is taken by a process that this script did not start.
require_free_port() {
    local port="$1" what="$2"
    if port_open "$HOST" "$port"; then
        log "port $HOST:$port is already in use by another process:"
        ss -ltnp "sport = :$port" >&2 2>/dev/null || true
        die "$what cannot start on port $port; stop that process first"
    fi
}

rotate_log() {
    if [ -f "$1" ] && [ "$(stat -c %s "$1")" -gt "$LOG_ROTATE_BYTES" ]; then mv -f "$1" "$1.old"; fi
}

show_log_tail() {
    log "last 50 lines of $1:"
    tail -n 50 "$1" >&2 2>/dev/null || true
}

# Stops the process in a PID file: SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL.
stop_process() {
    local name="$1" pidfile="$2" pattern="$3" pid waited=0
    if ! pid="$(running_pid "$pidfile" "$pattern")"; then
        rm -f "$pidfile"
        log "$name is not running"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge "$STOP_TIMEOUT" ]; then
            log "$name did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$pidfile"
    log "$name stopped"
}

apt_updated=0
apt_install() {
    [ "$(id -u)" -eq 0 ] || die "need Debian package(s) $*: run as root or install them first"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update (log: $LOG_DIR/apt.log)"
        if ! timeout "$APT_TIMEOUT" apt-get update >>"$LOG_DIR/apt.log" 2>&1; then
            show_log_tail "$LOG_DIR/apt.log"
            die "apt-get update failed or timed out after ${APT_TIMEOUT}s"
        fi
        apt_updated=1
    fi
    log "apt-get install $* (log: $LOG_DIR/apt.log)"
    if ! timeout "$APT_TIMEOUT" apt-get install -y --no-install-recommends "$@" \
        >>"$LOG_DIR/apt.log" 2>&1; then
        show_log_tail "$LOG_DIR/apt.log"
        die "apt-get install $* failed or timed out after ${APT_TIMEOUT}s"
    fi
}

# ---- TLS --------------------------------------------------------------------------------------

# Makes the private CA and the server certificate once (RSA 2048, SHA-256). The certificate
# names 127.0.0.1 (IP) and localhost (DNS), so clients can verify the host they dial. Written
# to temporary names first, so an interrupted run leaves no half-made set behind.
tls_ensure() {
    [ -s "$TLS_CA" ] && [ -s "$TLS_CERT" ] && [ -s "$TLS_KEY" ] && [ -s "$TLS_KEYSTORE" ] \
        && return 0
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    log "making a TEST-ONLY private CA and a certificate for $HOST and localhost in $TLS_DIR"
    local tmp="$TLS_DIR/.new"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    chmod 700 "$tmp"
    cat >"$tmp/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = Tally test CA (deploy/infra.sh, not for production)
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    cat >"$tmp/server.cnf" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:$HOST, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    if ! {
        openssl req -x509 -new -newkey rsa:2048 -sha256 -nodes -days "$TLS_CA_DAYS" \
            -config "$tmp/ca.cnf" -keyout "$tmp/ca-key.pem" -out "$tmp/ca.pem" \
            && openssl req -new -newkey rsa:2048 -sha256 -nodes -subj "/CN=$HOST" \
                -keyout "$tmp/server-key.pem" -out "$tmp/server.csr" \
            && openssl x509 -req -sha256 -days "$TLS_SERVER_DAYS" -in "$tmp/server.csr" \
                -CA "$tmp/ca.pem" -CAkey "$tmp/ca-key.pem" -set_serial "0x$(openssl rand -hex 16)" \
                -extfile "$tmp/server.cnf" -out "$tmp/server.pem" \
            && openssl verify -CAfile "$tmp/ca.pem" "$tmp/server.pem"
    } >>"$LOG_DIR/tls.log" 2>&1; then
        show_log_tail "$LOG_DIR/tls.log"
        die "could not make the TLS certificates with openssl"
    fi
    cat "$tmp/server-key.pem" "$tmp/server.pem" "$tmp/ca.pem" >"$tmp/server-keystore.pem"
    chmod 600 "$tmp/ca-key.pem" "$tmp/server-key.pem" "$tmp/server-keystore.pem"
    chmod 644 "$tmp/ca.pem" "$tmp/server.pem"
    rm -f "$tmp/ca.cnf" "$tmp/server.cnf" "$tmp/server.csr"
    mv -f "$tmp/ca-key.pem" "$TLS_CA_KEY"
    mv -f "$tmp/ca.pem" "$TLS_CA"
    mv -f "$tmp/server-key.pem" "$TLS_KEY"
    mv -f "$tmp/server.pem" "$TLS_CERT"
    mv -f "$tmp/server-keystore.pem" "$TLS_KEYSTORE"
    rmdir "$tmp"
}

# The advice for a server that an older version of this script started without TLS.
tls_restart_hint() {
    log "$1 was started without TLS (by an older deploy/infra.sh); TLS tests will fail until"
    log "it restarts: deploy/infra.sh down, then deploy/infra.sh up"
}

# ---- Kafka ------------------------------------------------------------------------------------

kafka_classpath() { echo "$KAFKA_LIBS/*"; }

ensure_java_and_maven() {
    local major=0
    if command -v java >/dev/null 2>&1; then
        major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)"
    fi
    if [ "${major:-0}" -lt 17 ]; then apt_install openjdk-17-jdk-headless; fi
    command -v mvn >/dev/null 2>&1 || apt_install maven
}

# Resolves kafka_2.13 (broker, StorageTool), kafka-tools (TopicCommand, ProducerPerformance,
# ConsoleConsumer, FeatureCommand) and a log4j2 backend for slf4j 1.7 into one folder.
kafka_install() {
    [ -f "$KAFKA_LIBS/.complete" ] && return 0
    ensure_java_and_maven
    log "resolving Apache Kafka $KAFKA_VERSION and its runtime dependencies from Maven Central"
    mkdir -p "$KAFKA_DIST" "$M2_REPO"
    cat >"$KAFKA_DIST/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tally.infra</groupId>
  <artifactId>kafka-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
    rm -rf "$KAFKA_LIBS.tmp"
    if ! timeout "$MAVEN_TIMEOUT" mvn -B -q -f "$KAFKA_DIST/pom.xml" -Dmaven.repo.local="$M2_REPO" \
        "$DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime \
        -DoutputDirectory="$KAFKA_LIBS.tmp" >"$LOG_DIR/maven.log" 2>&1; then
        show_log_tail "$LOG_DIR/maven.log"
        die "could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION with Maven"
    fi
    rm -rf "$KAFKA_LIBS"
    mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
    touch "$KAFKA_LIBS/.complete"
    log "Kafka classpath ready: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $KAFKA_LIBS"
}

# The storage tool moved between versions: kafka.tools.StorageTool (Scala, in kafka_2.13) or
# org.apache.kafka.tools.StorageTool. A jar's central directory names its classes in plain text.
kafka_storage_tool_class() {
    if grep -qaF 'org/apache/kafka/tools/StorageTool.class' "$KAFKA_LIBS"/*.jar; then
        echo org.apache.kafka.tools.StorageTool
    else
        echo kafka.tools.StorageTool
    fi
}

# Runs a Kafka CLI class with quiet logging (warnings to stderr) and a time limit.
kafka_tool() {
    timeout "$KAFKA_TOOL_TIMEOUT" java -Xmx256m -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_CONF/tools-log4j2.properties" \
        -cp "$(kafka_classpath)" "$@"
}

kafka_configure() {
    mkdir -p "$KAFKA_CONF" "$KAFKA_DATA"
    local listeners="PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT"
    listeners="$listeners,SSL://$HOST:$KAFKA_TLS_PORT"
    cat >"$KAFKA_CONF/server.properties" <<EOF
# Written by deploy/infra.sh: one combined KRaft broker+controller for Tally's tests.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
listeners=$listeners
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SSL://$HOST:$KAFKA_TLS_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL
# The SSL listener presents the certificate of tls/ (no client certificates asked for).
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_KEYSTORE
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_CA
ssl.client.auth=none
log.dirs=$KAFKA_DATA
auto.create.topics.enable=false
num.partitions=$KAFKA_NUM_PARTITIONS
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
    cat >"$KAFKA_CONF/log4j2.properties" <<'EOF'
# Broker logging: everything to stdout, which infra.sh appends to logs/kafka.log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
    cat >"$KAFKA_CONF/tools-log4j2.properties" <<'EOF'
# CLI tools: warnings and errors only, to stderr.
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# Formats the storage folder once, with a cluster id kept beside the configuration and the
# transaction feature at level 2 (KIP-890's server-side transaction protocol).
kafka_format() {
    [ -f "$KAFKA_DATA/meta.properties" ] && return 0
    local cluster_id tool
    tool="$(kafka_storage_tool_class)"
    if [ ! -s "$KAFKA_CONF/cluster.id" ]; then
        cluster_id="$(kafka_tool "$tool" random-uuid 2>>"$KAFKA_LOG" | tail -n 1)" \
            || die "could not generate a Kafka cluster id (see $KAFKA_LOG)"
        echo "$cluster_id" >"$KAFKA_CONF/cluster.id"
    fi
    cluster_id="$(cat "$KAFKA_CONF/cluster.id")"
    [ -n "$cluster_id" ] || die "could not generate a Kafka cluster id (see $KAFKA_LOG)"
    log "formatting $KAFKA_DATA (cluster id $cluster_id, $tool)"
    if ! kafka_tool "$tool" format --config "$KAFKA_CONF/server.properties" \
        --cluster-id "$cluster_id" --standalone \
        --feature "transaction.version=$KAFKA_TRANSACTION_VERSION" >>"$KAFKA_LOG" 2>&1; then
        show_log_tail "$KAFKA_LOG"
        die "formatting the Kafka storage folder failed"
    fi
}

kafka_answers_metadata() {
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$KAFKA_PORT" --list \
        >/dev/null 2>&1
}

# The finalized level of transaction.version in FeatureCommand's `describe` output.
kafka_transaction_version_of() {
    sed -n 's/^Feature: transaction\.version[[:space:]].*FinalizedVersionLevel: \([0-9]*\).*/\1/p' \
        <<<"$1"
}

# Raises transaction.version to the wanted level on a cluster formatted with a lower one.
kafka_ensure_transaction_version() {
    local features level
    features="$(kafka_tool org.apache.kafka.tools.FeatureCommand \
        --bootstrap-server "$HOST:$KAFKA_PORT" describe 2>>"$KAFKA_LOG")" \
        || die "could not describe Kafka's features (see $KAFKA_LOG)"
    level="$(kafka_transaction_version_of "$features")"
    if [ "${level:-0}" -lt "$KAFKA_TRANSACTION_VERSION" ]; then
        log "upgrading Kafka feature transaction.version ${level:-0} -> $KAFKA_TRANSACTION_VERSION"
        kafka_tool org.apache.kafka.tools.FeatureCommand --bootstrap-server "$HOST:$KAFKA_PORT" \
            upgrade --feature "transaction.version=$KAFKA_TRANSACTION_VERSION" >>"$KAFKA_LOG" 2>&1 \
            || die "could not set transaction.version=$KAFKA_TRANSACTION_VERSION (see $KAFKA_LOG)"
    fi
}

kafka_start() {
    local pid deadline
    if pid="$(running_pid "$KAFKA_PID" kafka.Kafka)"; then
        if port_open "$HOST" "$KAFKA_PORT"; then
            log "Kafka already running (pid $pid)"
            kafka_has_tls "$pid" || tls_restart_hint "Kafka (pid $pid)"
            return 0
        fi
        log "Kafka process $pid runs but does not listen yet; waiting for it"
    else
        rm -f "$KAFKA_PID"
        require_free_port "$KAFKA_PORT" Kafka
        require_free_port "$KAFKA_CONTROLLER_PORT" "Kafka's controller"
        require_free_port "$KAFKA_TLS_PORT" "Kafka's TLS listener"
        kafka_install
        kafka_configure
        kafka_format
        rotate_log "$KAFKA_LOG"
        log "starting Kafka $KAFKA_VERSION on $HOST:$KAFKA_PORT (log: $KAFKA_LOG)"
        # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS holds several options
        setsid nohup java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
            -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$KAFKA_CONF/log4j2.properties" \
            -cp "$(kafka_classpath)" kafka.Kafka "$KAFKA_CONF/server.properties" \
            >>"$KAFKA_LOG" 2>&1 </dev/null 9>&- &
        pid=$!
        echo "$pid" >"$KAFKA_PID"
    fi
    deadline=$((SECONDS + KAFKA_READY_TIMEOUT))
    until port_open "$HOST" "$KAFKA_PORT" && kafka_answers_metadata; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$KAFKA_PID"
            show_log_tail "$KAFKA_LOG"
            die "Kafka exited during startup"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log_tail "$KAFKA_LOG"
            die "Kafka did not answer on $HOST:$KAFKA_PORT within ${KAFKA_READY_TIMEOUT}s (still running as pid $pid; 'down' stops it)"
        fi
        sleep 1
    done
    kafka_ensure_transaction_version
    kafka_has_tls "$pid" || tls_restart_hint "Kafka (pid $pid)"
    log "Kafka is up (pid $pid, transaction.version=$KAFKA_TRANSACTION_VERSION)"
}

# Whether the running broker has the SSL listener: its configuration names the TLS port and
# the port answers. A broker started by an older version of this script has neither.
kafka_has_tls() {
    grep -qF "SSL://$HOST:$KAFKA_TLS_PORT" "$KAFKA_CONF/server.properties" 2>/dev/null \
        && port_open "$HOST" "$KAFKA_TLS_PORT"
}

# ---- MariaDB ----------------------------------------------------------------------------------

mysql_install() {
    command -v mariadbd >/dev/null 2>&1 && command -v mariadb-install-db >/dev/null 2>&1 \
        && command -v mariadb-admin >/dev/null 2>&1 && return 0
    apt_install mariadb-server
}

# mariadbd drops to the `mysql` account when started as root, which needs to reach the data
# folder. Under a private home (/root is mode 700) it cannot, so it then runs as root instead;
# it only listens on 127.0.0.1 and holds test data. Not root: it runs as the caller.
mysql_run_user() {
    if [ "$(id -u)" -ne 0 ]; then
        id -un
    elif id mysql >/dev/null 2>&1 && runuser -u mysql -- test -x "$INFRA_DIR" 2>/dev/null; then
        echo mysql
    else
        echo root
    fi
}

# mariadb-install-db gives the account that runs mariadbd (root, or the caller when not root) a
# unix_socket login with every privilege: the caller administers through the socket, no password.
mysql_admin() { mariadb-admin --no-defaults --socket="$MYSQL_SOCKET" --user="$(id -un)" "$@"; }
mysql_root() { mariadb --no-defaults --socket="$MYSQL_SOCKET" --user="$(id -un)" "$@"; }

mysql_provision() {
    log "ensuring database $MYSQL_DB and TEST-ONLY user $MYSQL_USER/$MYSQL_PASSWORD (all on \`${MYSQL_DB}%\`)"
    mysql_root <<EOF
CREATE DATABASE IF NOT EXISTS \`$MYSQL_DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'127.0.0.1' IDENTIFIED BY '$MYSQL_PASSWORD';
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'localhost' IDENTIFIED BY '$MYSQL_PASSWORD';
ALTER USER '$MYSQL_USER'@'127.0.0.1' IDENTIFIED BY '$MYSQL_PASSWORD';
ALTER USER '$MYSQL_USER'@'localhost' IDENTIFIED BY '$MYSQL_PASSWORD';
GRANT ALL PRIVILEGES ON \`${MYSQL_DB}%\`.* TO '$MYSQL_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`${MYSQL_DB}%\`.* TO '$MYSQL_USER'@'localhost';
EOF
}

mysql_start() {
    local pid deadline user
    if pid="$(running_pid "$MYSQL_PID" mariadbd)"; then
        if mysql_admin ping >/dev/null 2>&1; then
            log "MariaDB already running (pid $pid)"
            mysql_has_tls || tls_restart_hint "MariaDB (pid $pid)"
            return 0
        fi
        log "MariaDB process $pid runs but does not answer yet; waiting for it"
    else
        rm -f "$MYSQL_PID"
        require_free_port "$MYSQL_PORT" MariaDB
        mysql_install
        [ "${#MYSQL_SOCKET}" -lt 100 ] \
            || die "socket path $MYSQL_SOCKET is too long; choose a shorter TALLY_INFRA_DIR"
        user="$(mysql_run_user)"
        mkdir -p "$MYSQL_DATA" "$MYSQL_TLS"
        # mariadbd may run as another account than the one owning tls/, so it gets copies.
        cp -f "$TLS_CA" "$TLS_CERT" "$TLS_KEY" "$MYSQL_TLS/"
        chmod 600 "$MYSQL_TLS/server-key.pem"
        if [ "$(id -u)" -eq 0 ]; then
            chown -R "$user:" "$MYSQL_DIR"
            if [ "$user" = root ]; then
                log "the mysql account cannot reach $INFRA_DIR, so mariadbd runs as root"
            fi
        fi
        if [ ! -d "$MYSQL_DATA/mysql" ]; then
            log "initializing $MYSQL_DATA with mariadb-install-db"
            if ! timeout 120 mariadb-install-db --no-defaults --user="$user" \
                --datadir="$MYSQL_DATA" --auth-root-authentication-method=socket \
                --skip-test-db >>"$MYSQL_LOG" 2>&1; then
                show_log_tail "$MYSQL_LOG"
                die "mariadb-install-db failed"
            fi
        fi
        rotate_log "$MYSQL_LOG"
        log "starting MariaDB on $HOST:$MYSQL_PORT as $user (log: $MYSQL_LOG)"
        setsid nohup mariadbd --no-defaults --user="$user" --datadir="$MYSQL_DATA" \
            --bind-address="$HOST" --port="$MYSQL_PORT" --socket="$MYSQL_SOCKET" \
            --pid-file="$MYSQL_DIR/mariadbd.pid" --skip-name-resolve \
            --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
            --max-connections=500 \
            --ssl-ca="$MYSQL_TLS/ca.pem" --ssl-cert="$MYSQL_TLS/server.pem" \
            --ssl-key="$MYSQL_TLS/server-key.pem" \
            >>"$MYSQL_LOG" 2>&1 </dev/null 9>&- &
        pid=$!
        echo "$pid" >"$MYSQL_PID"
    fi
    deadline=$((SECONDS + MYSQL_READY_TIMEOUT))
    until mysql_admin ping >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$MYSQL_PID"
            show_log_tail "$MYSQL_LOG"
            die "MariaDB exited during startup"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log_tail "$MYSQL_LOG"
            die "MariaDB did not answer within ${MYSQL_READY_TIMEOUT}s (still running as pid $pid; 'down' stops it)"
        fi
        sleep 0.5
    done
    mysql_provision || { show_log_tail "$MYSQL_LOG"; die "could not create the tally database and user"; }
    mysql_has_tls || tls_restart_hint "MariaDB (pid $pid)"
    log "MariaDB is up (pid $pid)"
}

# Whether the running server accepts TLS (have_ssl is YES only with a usable certificate).
mysql_has_tls() {
    [ "$(mysql_root --batch --skip-column-names <<<'SELECT @@have_ssl' 2>/dev/null)" = YES ]
}

# ---- subcommands ------------------------------------------------------------------------------

with_lock() {
    exec 9>"$INFRA_DIR/.lock"
    flock -w "$LOCK_TIMEOUT" 9 || die "another deploy/infra.sh holds $INFRA_DIR/.lock for ${LOCK_TIMEOUT}s"
}

cmd_up() {
    local started=$SECONDS
    with_lock
    tls_ensure
    mysql_start
    kafka_start
    log "infrastructure up in $((SECONDS - started))s; MariaDB user $MYSQL_USER/$MYSQL_PASSWORD is for tests only"
}

cmd_down() {
    with_lock
    stop_process Kafka "$KAFKA_PID" kafka.Kafka
    stop_process MariaDB "$MYSQL_PID" mariadbd
}

cmd_status() {
    local pid tls ok=0
    if pid="$(running_pid "$KAFKA_PID" kafka.Kafka)" && port_open "$HOST" "$KAFKA_PORT"; then
        tls="TLS $HOST:$KAFKA_TLS_PORT"
        kafka_has_tls "$pid" || tls="no TLS: restart for it"
        echo "kafka:   up   pid $pid, $HOST:$KAFKA_PORT, $tls, Kafka $KAFKA_VERSION," \
            "data $KAFKA_DATA"
    else
        echo "kafka:   down (log: $KAFKA_LOG)"
        ok=1
    fi
    if pid="$(running_pid "$MYSQL_PID" mariadbd)" && mysql_admin ping >/dev/null 2>&1; then
        tls="TLS"
        mysql_has_tls || tls="no TLS: restart for it"
        echo "mariadb: up   pid $pid, $HOST:$MYSQL_PORT, $tls, data $MYSQL_DATA"
    else
        echo "mariadb: down (log: $MYSQL_LOG)"
        ok=1
    fi
    return "$ok"
}

cmd_env() {
    echo "export TALLY_KAFKA_BROKERS=$HOST:$KAFKA_PORT"
    echo "export TALLY_TEST_MYSQL_URL=mysql://$MYSQL_USER:$MYSQL_PASSWORD@$HOST:$MYSQL_PORT/$MYSQL_DB"
    echo "export TALLY_KAFKA_TLS_BROKERS=$HOST:$KAFKA_TLS_PORT"
    echo "export TALLY_TEST_TLS_CA=$TLS_CA"
}

cmd_verify() {
    cmd_status >/dev/null || die "not everything is up; run deploy/infra.sh up first"
    command -v javac >/dev/null 2>&1 \
        || die "verify runs a Java source file and needs a JDK (apt-get install openjdk-17-jdk-headless)"
    log "checking Kafka transactions"
    timeout 180 java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_CONF/tools-log4j2.properties" \
        -cp "$(kafka_classpath)" "$SCRIPT_DIR/infra/TxnCheck.java" "$HOST:$KAFKA_PORT" \
        || die "the Kafka transaction check failed"
    log "checking MariaDB as $MYSQL_USER over TCP"
    local db="${MYSQL_DB}_infra_check_$$" answer
    answer="$(MYSQL_PWD="$MYSQL_PASSWORD" timeout 30 mariadb --no-defaults --protocol=TCP \
        --host="$HOST" --port="$MYSQL_PORT" --user="$MYSQL_USER" --batch --skip-column-names <<EOF
CREATE DATABASE \`$db\`;
CREATE TABLE \`$db\`.probe (id INT PRIMARY KEY, amount DECIMAL(28,4) NOT NULL);
INSERT INTO \`$db\`.probe VALUES (1, 12345678901234567890.1234);
SELECT amount FROM \`$db\`.probe WHERE id = 1;
DROP DATABASE \`$db\`;
EOF
)" || die "the MariaDB check as $MYSQL_USER failed"
    [ "$answer" = "12345678901234567890.1234" ] || die "MariaDB returned '$answer'"
    echo "MariaDB OK: $MYSQL_USER created, wrote, read and dropped database $db over TCP"

    log "checking TLS against the private CA $TLS_CA"
    [ -s "$TLS_CA" ] || die "$TLS_CA is missing; run deploy/infra.sh up"
    local restart="started without TLS? deploy/infra.sh down, then up"
    if ! timeout 30 openssl s_client -connect "$HOST:$KAFKA_TLS_PORT" -CAfile "$TLS_CA" \
        -verify_ip "$HOST" -verify_return_error </dev/null >"$LOG_DIR/tls-check.log" 2>&1; then
        show_log_tail "$LOG_DIR/tls-check.log"
        die "no verified TLS on Kafka $HOST:$KAFKA_TLS_PORT ($restart)"
    fi
    echo "Kafka TLS OK: $HOST:$KAFKA_TLS_PORT presents a certificate the private CA signed"
    answer="$(MYSQL_PWD="$MYSQL_PASSWORD" timeout 30 mariadb --no-defaults --protocol=TCP \
        --host="$HOST" --port="$MYSQL_PORT" --user="$MYSQL_USER" --batch --skip-column-names \
        --ssl-ca="$TLS_CA" --ssl-verify-server-cert \
        --execute="SHOW SESSION STATUS LIKE 'Ssl_version'" 2>"$LOG_DIR/tls-check.log")" || {
        show_log_tail "$LOG_DIR/tls-check.log"
        die "no verified TLS on MariaDB $HOST:$MYSQL_PORT ($restart)"
    }
    [[ "$answer" == Ssl_version*TLS* ]] || die "MariaDB's session is not encrypted: '$answer'"
    echo "MariaDB TLS OK: $MYSQL_USER connected with ${answer##*[[:space:]]}, certificate verified"
}

cmd_kafka_tool() {
    [ $# -ge 1 ] || die "usage: deploy/infra.sh kafka-tool CLASS [ARGS...]"
    [ -f "$KAFKA_LIBS/.complete" ] || die "Kafka is not installed yet; run deploy/infra.sh up"
    kafka_configure_tools_only
    exec java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_CONF/tools-log4j2.properties" \
        -cp "$(kafka_classpath)" "$@"
}

kafka_configure_tools_only() {
    if [ ! -f "$KAFKA_CONF/tools-log4j2.properties" ]; then kafka_configure; fi
}

main() {
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    local cmd="${1:-}"
    if [ $# -gt 0 ]; then shift; fi
    case "$cmd" in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        env) cmd_env ;;
        verify) cmd_verify ;;
        kafka-tool) cmd_kafka_tool "$@" ;;
        *)
            echo "usage: deploy/infra.sh up|down|status|env|verify|kafka-tool CLASS [ARGS...]" >&2
            exit 2
            ;;
    esac
}

main "$@"
