#!/usr/bin/env bash
# Cloud ingest against Mosquitto (tracker issue 11). Run from anywhere in
# the repository:
#
#   bash bench/run.sh            # the full run: 16 and 256 devices, 20 s a row
#   bash bench/run.sh -quick     # or QUICK=1: a short run for development
#
# It starts Mosquitto (persistence on) and a throwaway PostgreSQL cluster
# (durable settings: fsync and synchronous_commit on) in a temporary
# directory, builds bench/ingest, runs it for every combination, prints
# the results as a Markdown table with the ratio the target is about, and
# stops and removes everything it started. It installs nothing.
#
# Environment:
#   QUICK=1          the short run (as -quick)
#   DURATION=20s     how long each row runs
#   DEVICES="16 256" the numbers of devices
#   BATCHES="1 16 64" the batch sizes
#   STORES="sqlite postgres"
#                    (each PostgreSQL row runs twice: with the node's
#                    connection pool as shipped, and keeping 16 idle
#                    connections, -pg-idle 16)
#   POSTGRES_URL     use this PostgreSQL server (its user may create
#                    databases) instead of starting one; POSTGRES_PID is
#                    then its postmaster's pid, for its CPU, if known
#   OUT=FILE         also keep the results, one JSON line per row, in FILE
#   WORKDIR=DIR      where the temporary directory goes (default /var/tmp:
#                    SQLite and PostgreSQL must sync to a disk, not tmpfs)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=${QUICK:-0}
for arg in "$@"; do
	case "$arg" in
	-quick | --quick) quick=1 ;;
	-h | -help | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "bench/run.sh: unknown argument $arg (try -h)" >&2
		exit 2
		;;
	esac
done
if [ "$quick" = 1 ]; then
	duration=${DURATION:-2s}
	devices=${DEVICES:-4}
	batches=${BATCHES:-1 64}
else
	duration=${DURATION:-20s}
	devices=${DEVICES:-16 256}
	batches=${BATCHES:-1 16 64}
fi
stores=${STORES:-sqlite postgres}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
	echo "mosquitto is not installed. On Debian: apt-get install -y mosquitto" >&2
	echo "(the service need not run: this script starts its own broker)" >&2
	exit 1
fi
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)

work=$(mktemp -d "${WORKDIR:-/var/tmp}/bench-ingest.XXXXXX")
chmod 755 "$work"
mosquitto_pid=
pg_data=
pg_ctl=
as_postgres=()

cleanup() {
	set +e
	if [ -n "$mosquitto_pid" ]; then
		kill "$mosquitto_pid" 2>/dev/null
		wait "$mosquitto_pid" 2>/dev/null
	fi
	if [ -n "$pg_data" ]; then
		"${as_postgres[@]}" "$pg_ctl" stop -D "$pg_data" -m fast -w -s >/dev/null 2>&1
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port prints a TCP port on 127.0.0.1 that nothing listens on.
free_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	echo "no free port found" >&2
	return 1
}

echo "== machine"
echo "$(uname -sm), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem:/ {print $2}') GiB"
go version
"$mosquitto_bin" -h 2>/dev/null | head -1 || true
echo "load before: $(uptime)"

echo "== building bench/ingest"
go build -o "$work/ingest" ./bench/ingest

echo "== starting Mosquitto"
mkdir -p "$work/mosquitto"
mqtt_port=$(free_port)
cat >"$work/mosquitto/mosquitto.conf" <<EOF
# Persistence on: the in-memory state (retained messages, persistent
# sessions, their subscriptions and queued messages) is written whole
# to mosquitto.db every autosave_interval seconds and at shutdown.
persistence true
persistence_location $work/mosquitto/
autosave_interval 1
listener $mqtt_port 127.0.0.1
allow_anonymous true
max_connections -1
log_dest file $work/mosquitto/mosquitto.log
log_type error
log_type warning
log_type notice
EOF
if [ "$(id -u)" = 0 ]; then
	# Started as root, Mosquitto runs as the mosquitto user.
	chown -R mosquitto: "$work/mosquitto" 2>/dev/null || true
fi
"$mosquitto_bin" -c "$work/mosquitto/mosquitto.conf" &
mosquitto_pid=$!
for _ in $(seq 50); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null; then
		break
	fi
	sleep 0.1
done
if ! kill -0 "$mosquitto_pid" 2>/dev/null; then
	echo "Mosquitto did not start:" >&2
	cat "$work/mosquitto/mosquitto.log" >&2 || true
	exit 1
fi
echo "Mosquitto pid $mosquitto_pid on 127.0.0.1:$mqtt_port"

pg_url=${POSTGRES_URL:-}
pg_pid=${POSTGRES_PID:-0}
case " $stores " in *" postgres "*)
	if [ -z "$pg_url" ]; then
		bindir=
		if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
			bindir=$(dirname "$(command -v pg_ctl)")
		else
			bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V | tail -1)
		fi
		if [ -z "$bindir" ] || [ ! -x "$bindir/pg_ctl" ]; then
			echo "note: no PostgreSQL (initdb, pg_ctl) found; skipping the PostgreSQL rows. On Debian: apt-get install -y postgresql" >&2
			stores=${stores//postgres/}
		else
			echo "== starting PostgreSQL ($("$bindir/postgres" --version))"
			mkdir -p "$work/pg"
			if [ "$(id -u)" = 0 ]; then
				# PostgreSQL refuses to run as root.
				chown postgres: "$work/pg"
				as_postgres=(runuser -u postgres --)
			fi
			pg_ctl=$bindir/pg_ctl
			"${as_postgres[@]}" "$bindir/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 --locale=C >"$work/pg/initdb.log" 2>&1 ||
				{ cat "$work/pg/initdb.log" >&2; exit 1; }
			pg_data=$work/pg/data
			# Durable: fsync, synchronous_commit and full_page_writes keep
			# their defaults (on). Only a Unix socket, in the work directory.
			"${as_postgres[@]}" "$pg_ctl" start -D "$pg_data" -l "$work/pg/log" -w -t 60 -s \
				-o "-c listen_addresses='' -c unix_socket_directories='$work/pg' -c port=5432 -c max_connections=100" ||
				{ cat "$work/pg/log" >&2; exit 1; }
			pg_pid=$(head -1 "$pg_data/postmaster.pid")
			pg_url="postgres://postgres@/postgres?host=$work/pg&port=5432&sslmode=disable"
			echo "PostgreSQL pid $pg_pid, socket in $work/pg"
		fi
	fi
	;;
esac

results=$work/results.jsonl
run() {
	"$work/ingest" -duration "$duration" -out "$results" "$@"
}

echo "== running (each row $duration)"
for n in $devices; do
	run -system mosquitto -mqtt "127.0.0.1:$mqtt_port" -mqtt-pid "$mosquitto_pid" -devices "$n" -batch 1
	for b in $batches; do
		[ "$b" = 1 ] && continue
		run -system mosquitto -mqtt "127.0.0.1:$mqtt_port" -mqtt-pid "$mosquitto_pid" -devices "$n" -batch "$b" -mqtt-batch
	done
	for s in $stores; do
		for b in $batches; do
			if [ "$s" = postgres ]; then
				run -system sensible -store postgres -postgres "$pg_url" -postgres-pid "$pg_pid" -devices "$n" -batch "$b"
				# The same with the node's pool keeping its connections
				# open (database/sql keeps 2 idle by default, and
				# postgres.Open leaves it so): what fixing that would give.
				run -system sensible -store postgres -postgres "$pg_url" -postgres-pid "$pg_pid" -devices "$n" -batch "$b" -pg-idle 16
			else
				run -system sensible -store sqlite -dir "$work/sqlite-$n-$b" -devices "$n" -batch "$b"
				rm -rf "$work/sqlite-$n-$b"
			fi
		done
	done
done

echo "load after: $(uptime)"
echo
echo "== results"
"$work/ingest" -report "$results"
if [ -n "${OUT:-}" ]; then
	cp "$results" "$OUT"
	echo "results kept in $OUT"
fi
