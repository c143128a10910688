package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pg2kafka/pg2kafka/script/internal/devenv"
)

// applicationName names chaos's own sessions, so that they are neither
// sampled nor terminated as pg2kafka's.
const applicationName = "pg2kafka-chaos"

// createDatabase (re)creates the chaos database and returns its URL, and a
// function that drops it, refusing any server but the local one.
func createDatabase(ctx context.Context, adminURL, name string) (string, func() error, error) {
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", nil, errors.New("-admin-url must be a postgres:// URL")
	}
	if h := u.Hostname(); h != "127.0.0.1" && h != "localhost" && h != "::1" {
		return "", nil, fmt.Errorf("-admin-url: chaos restarts and terminates sessions of the server it uses, so it only runs against 127.0.0.1, not %q", h)
	}
	return devenv.CreateDatabase(ctx, adminURL, applicationName, name)
}

// openPool opens chaos's own pool on the chaos database.
func openPool(ctx context.Context, dbURL string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 8
	cfg.ConnConfig.RuntimeParams["application_name"] = applicationName
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to the chaos database: %w", err)
	}
	return pool, nil
}

// table is a scenario's counters table: keys rows, each an external ID
// whose events carry its version, 0 for the INSERT and one more for every
// UPDATE.
type table struct {
	name  string
	ident string
	keys  int
	pool  *pgxpool.Pool
}

func createTable(ctx context.Context, pool *pgxpool.Pool, name string, keys int) (*table, error) {
	t := &table{name: name, ident: pgx.Identifier{name}.Sanitize(), keys: keys, pool: pool}
	if _, err := pool.Exec(ctx, `CREATE TABLE `+t.ident+` (id text PRIMARY KEY, version int NOT NULL, pad text NOT NULL)`); err != nil {
		return nil, fmt.Errorf("create table %s: %w", name, err)
	}
	if _, err := pool.Exec(ctx, `SELECT pg2kafka.setup($1, 'id')`, name); err != nil {
		return nil, fmt.Errorf("pg2kafka.setup(%s): %w", name, err)
	}
	return t, nil
}

// key is the external ID of row i.
func key(i int) string { return fmt.Sprintf("k%07d", i) }

// fill inserts every row, one event each, then updates them all, keys
// events a round, until at least n events were written; it returns how many.
// Through the trigger this is slow (minutes for a million events on a busy
// machine), so it logs its progress.
func (t *table) fill(ctx context.Context, n, pad int, log *slog.Logger) (int64, error) {
	tag, err := t.pool.Exec(ctx, `INSERT INTO `+t.ident+` SELECT 'k' || lpad(i::text, 7, '0'), 0, repeat('x', $2) FROM generate_series(0, $1 - 1) AS i`, t.keys, pad)
	if err != nil {
		return 0, fmt.Errorf("insert into %s: %w", t.name, err)
	}
	events := tag.RowsAffected()
	nextLog := time.Now().Add(15 * time.Second)
	for events < int64(n) {
		written, err := t.updateAll(ctx)
		if err != nil {
			return events, err
		}
		events += written
		if time.Now().After(nextLog) {
			log.Info("filling the queue", "table", t.name, "events", events, "of", n)
			nextLog = time.Now().Add(15 * time.Second)
		}
	}
	return events, nil
}

func (t *table) updateAll(ctx context.Context) (int64, error) {
	tag, err := t.pool.Exec(ctx, `UPDATE `+t.ident+` SET version = version + 1`)
	if err != nil {
		return 0, fmt.Errorf("update %s: %w", t.name, err)
	}
	return tag.RowsAffected(), nil
}

func (t *table) updateSome(ctx context.Context, ids []string) (int64, error) {
	tag, err := t.pool.Exec(ctx, `UPDATE `+t.ident+` SET version = version + 1 WHERE id = ANY($1)`, ids)
	if err != nil {
		return 0, fmt.Errorf("update %s: %w", t.name, err)
	}
	return tag.RowsAffected(), nil
}

// queued counts the table's events still in the queue, those of claims in
// flight included: a claim's delete is not committed until Kafka acknowledged.
func (t *table) queued(ctx context.Context) (int64, error) {
	var n int64
	err := t.pool.QueryRow(ctx, `SELECT count(*) FROM pg2kafka.outbound_event_queue WHERE table_schema = 'public' AND table_name = $1`, t.name).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count queued events of %s: %w", t.name, err)
	}
	return n, nil
}

// versions returns each row's final version.
func (t *table) versions(ctx context.Context) (map[string]int, error) {
	rows, err := t.pool.Query(ctx, `SELECT id, version FROM `+t.ident)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", t.name, err)
	}
	type row struct {
		ID      string `db:"id"`
		Version int    `db:"version"`
	}
	all, err := pgx.CollectRows(rows, pgx.RowToStructByName[row])
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", t.name, err)
	}
	out := make(map[string]int, len(all))
	for _, r := range all {
		out[r.ID] = r.Version
	}
	return out, nil
}

// writer updates rows in the background while faults are injected. A failed
// update (the server restarting, say) is rolled back whole, so versions stay
// gapless, and the writer tries again on its next tick.
type writer struct {
	cancel context.CancelFunc
	done   chan struct{}
	events atomic.Int64
	errs   atomic.Int64
	last   atomic.Pointer[string]
}

// writerTick is how often the writer writes: rate/10 events each time.
const writerTick = 100 * time.Millisecond

// startWriter updates rate random rows a second (none if rate is 0). If
// topUp is given and says so on a tick, that tick updates every row instead.
func startWriter(ctx context.Context, t *table, rate int, seed uint64, topUp func(context.Context) bool, log *slog.Logger) *writer {
	ctx, cancel := context.WithCancel(ctx)
	w := &writer{cancel: cancel, done: make(chan struct{})}
	rng := rand.New(rand.NewPCG(seed, 0x77726974))
	perTick := min(t.keys, max(1, rate*int(writerTick/time.Millisecond)/1000))
	go func() {
		defer close(w.done)
		tick := time.NewTicker(writerTick)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var n int64
			var err error
			switch {
			case topUp != nil && topUp(ctx):
				n, err = t.updateAll(ctx)
			case rate > 0:
				ids := make([]string, perTick)
				for i, k := range rng.Perm(t.keys)[:perTick] {
					ids[i] = key(k)
				}
				n, err = t.updateSome(ctx, ids)
			}
			w.events.Add(n)
			if err != nil && ctx.Err() == nil {
				w.errs.Add(1)
				msg := err.Error()
				w.last.Store(&msg)
				log.Debug("writer: update failed; trying again", "error", err)
			}
		}
	}()
	return w
}

// stop stops the writer and returns how many events it wrote.
func (w *writer) stop() int64 {
	w.cancel()
	<-w.done
	return w.events.Load()
}

func (w *writer) summary() string {
	s := fmt.Sprintf("writer added %d events", w.events.Load())
	if n := w.errs.Load(); n > 0 {
		s += fmt.Sprintf(" (%d updates failed and were rolled back, last: %s)", n, *w.last.Load())
	}
	return s
}

// oldestTransactionSQL describes the oldest transaction a pg2kafka session
// of this database holds open: its age in seconds, and what the session is
// doing. No row if there is none.
const oldestTransactionSQL = `
SELECT extract(epoch FROM now() - xact_start)::float8,
       format('pid %s, %s for %ss, last query %s', pid, state,
              round(extract(epoch FROM now() - state_change)::numeric, 2),
              left(regexp_replace(query, '\s+', ' ', 'g'), 60))
FROM pg_stat_activity
WHERE application_name = 'pg2kafka' AND state <> 'idle' AND datname = current_database()
ORDER BY xact_start
LIMIT 1`

// oldestTransaction returns the age of the oldest transaction a pg2kafka
// session holds open, and what that session is doing.
func oldestTransaction(ctx context.Context, pool *pgxpool.Pool) (time.Duration, string, error) {
	var secs float64
	var what string
	err := pool.QueryRow(ctx, oldestTransactionSQL).Scan(&secs, &what)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", err
	}
	return time.Duration(secs * float64(time.Second)), what, nil
}

// terminateSQL ends every pg2kafka session of the chaos database.
const terminateSQL = `
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
FROM pg_stat_activity
WHERE application_name = 'pg2kafka' AND datname = current_database()`

func terminateSessions(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	err := pool.QueryRow(ctx, terminateSQL).Scan(&n)
	return n, err
}

// restartServer restarts the local Postgres cluster with pg_ctlcluster. The
// version and cluster are found from the server itself (its major version
// and data directory) and checked against /etc/postgresql. skipped explains
// why the restart was not attempted or did not happen, when it did not.
func restartServer(ctx context.Context, pool *pgxpool.Pool) (skipped string, err error) {
	var versionNum int
	var dataDir string
	if err := pool.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('data_directory')`).Scan(&versionNum, &dataDir); err != nil {
		return "", fmt.Errorf("find the server's version and data directory: %w", err)
	}
	version, cluster := strconv.Itoa(versionNum/10000), filepath.Base(dataDir)
	if _, err := os.Stat(filepath.Join("/etc/postgresql", version, cluster)); err != nil {
		entries, _ := os.ReadDir("/etc/postgresql")
		var have []string
		for _, e := range entries {
			have = append(have, e.Name())
		}
		return fmt.Sprintf("Postgres restart skipped: the server is %s/%s but /etc/postgresql has no such cluster (versions there: %s); is it a Debian-managed cluster?",
			version, cluster, strings.Join(have, ", ")), nil
	}
	ctl, err := exec.LookPath("pg_ctlcluster")
	if err != nil {
		return "Postgres restart skipped: pg_ctlcluster is not on PATH", nil
	}
	if os.Geteuid() != 0 {
		owner, err := dirOwner(dataDir)
		if err != nil || owner != os.Geteuid() {
			return fmt.Sprintf("Postgres restart skipped: not permitted (pg_ctlcluster needs root or the cluster's owner; running as uid %d)", os.Geteuid()), nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, ctl, "--skip-systemctl-redirect", version, cluster, "restart").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("Postgres restart failed, so skipped: pg_ctlcluster --skip-systemctl-redirect %s %s restart: %v: %s",
			version, cluster, err, strings.TrimSpace(string(out))), nil
	}
	return "", nil
}

func dirOwner(path string) (int, error) {
	info, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, errors.New("no owner")
	}
	return int(st.Uid), nil
}

// waitPostgres waits until the pool answers again after a restart.
func waitPostgres(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for {
		pingCtx, cancelPing := context.WithTimeout(ctx, 2*time.Second)
		err = pool.Ping(pingCtx)
		cancelPing()
		if err == nil {
			return nil
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return fmt.Errorf("Postgres not back within %s: %w", timeout, err)
		}
	}
}

// sleepCtx waits for d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
