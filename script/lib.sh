# Shared by script/test and script/demo: find Go, and make sure a local
# PostgreSQL accepts connections. Source it; it defines functions only.

section() { printf '\n==> %s\n' "$*"; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# The local server these scripts may start or install: Debian's cluster "main".
pg_port=5432
local_pg_url="postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable"

# as_root runs a command as root, through sudo when we are not root.
as_root() {
	if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# as_postgres runs a command as the postgres OS user, which Debian's
# pg_hba.conf lets in over the local socket (peer auth).
as_postgres() {
	if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

can_connect() {
	command -v psql >/dev/null && psql "$pg_url" -Atqc 'select 1' >/dev/null 2>&1
}

# wait_for runs "$@" once a second until it succeeds, for at most $1 seconds.
wait_for() {
	local seconds=$1
	shift
	for ((i = 0; i < seconds; i++)); do
		"$@" && return 0
		sleep 1
	done
	"$@"
}

# local_cluster prints the newest PostgreSQL version with a cluster
# configured in /etc/postgresql, or nothing.
local_cluster() {
	ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true
}

# ensure_postgres URL [given]: makes sure URL accepts connections. A URL the
# user gave (second argument "given") is only waited for; otherwise URL is the
# local server, which is started, or installed with apt-get, as needed.
ensure_postgres() {
	pg_url=$1
	if can_connect; then
		return
	fi
	if [[ ${2:-} == given ]]; then
		wait_for 30 can_connect || die "cannot connect to $pg_url"
		return
	fi

	local version
	version=$(local_cluster)
	if [[ -z $version ]]; then
		echo "PostgreSQL is not installed; installing it with apt-get"
		as_root apt-get update -q
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
		version=$(local_cluster)
		[[ -n $version ]] || die "installed postgresql but found no cluster in /etc/postgresql"
	fi

	if ! pg_isready -q -h 127.0.0.1 -p "$pg_port"; then
		echo "starting PostgreSQL $version cluster main"
		# Fails harmlessly when the package install already started it.
		as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
	fi
	wait_for 30 pg_isready -q -h 127.0.0.1 -p "$pg_port" ||
		die "PostgreSQL $version did not accept connections on 127.0.0.1:$pg_port within 30s"

	if can_connect; then
		return
	fi
	# Debian's pg_hba.conf asks TCP clients for a password (scram-sha-256).
	# This is a throwaway test server, so trust loopback connections.
	local hba
	hba=$(as_postgres psql -p "$pg_port" -Atqc 'show hba_file')
	echo "trusting loopback connections in $hba"
	as_root sed -E -i 's@^(host[a-z]*[[:space:]]+[^[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+)[^[:space:]]+@\1trust@' "$hba"
	as_postgres psql -p "$pg_port" -Atqc 'select pg_reload_conf()' >/dev/null
	wait_for 10 can_connect ||
		die "cannot connect to $pg_url as postgres without a password"
}

# ensure_go puts the Go toolchain on PATH.
ensure_go() {
	if [[ -x /usr/local/go/bin/go ]] && [[ :$PATH: != *:/usr/local/go/bin:* ]]; then
		export PATH=/usr/local/go/bin:$PATH
	fi
	command -v go >/dev/null || die "go not found on PATH or in /usr/local/go/bin"
}

# rabbitmq_up reports whether something accepts connections on the AMQP port.
rabbitmq_up() {
	(exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

# ensure_rabbitmq makes sure the local RabbitMQ (127.0.0.1:5672, guest/guest)
# that the RabbitMQ sink's tests use accepts connections: started, or
# installed with apt-get, as needed.
ensure_rabbitmq() {
	if rabbitmq_up; then
		return
	fi
	if ! command -v rabbitmq-server >/dev/null; then
		echo "RabbitMQ is not installed; installing it with apt-get"
		as_root apt-get update -q
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
	fi
	if ! rabbitmq_up; then
		echo "starting RabbitMQ"
		# Fails harmlessly when the package install already started it.
		as_root rabbitmq-server -detached || true
	fi
	wait_for 60 rabbitmq_up ||
		die "RabbitMQ did not accept connections on 127.0.0.1:5672 within 60s"
}

# ensure_chromium installs Debian's chromium, in which the status page and
# the live stream page are tested (their tests skip without it).
ensure_chromium() {
	if [[ -x /usr/bin/chromium ]]; then
		return
	fi
	echo "Chromium is not installed; installing it with apt-get"
	as_root apt-get update -q
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
}
