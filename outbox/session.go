package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultLaneTakeoverTimeout is how long a claimer may go without a word to
// Postgres before its lanes are taken over, when NewClaimer is given none.
const DefaultLaneTakeoverTimeout = 10 * time.Second

// sessionBounds are what a claimer's session is allowed, derived from the
// lane takeover timeout T. Postgres ends the session once it has heard
// nothing for idle; the others then see its lanes free at their next
// rebalance, which they do every T/5 at most, so the lanes change hands
// within idle + T/5 ≈ 0.7 T, leaving the rest of T for load. A live claimer
// says something every keepAlive, a third of idle, so that a late timer or a
// slow round trip does not cost it its lanes.
type sessionBounds struct {
	takeover  time.Duration // T: a round trip unanswered for this long is given up
	idle      time.Duration
	keepAlive time.Duration
	// withoutIdleSessionTimeout treats the server as one without
	// idle_session_timeout, as Postgres 13 is, for tests.
	withoutIdleSessionTimeout bool
}

func newSessionBounds(takeover time.Duration) sessionBounds {
	if takeover <= 0 {
		takeover = DefaultLaneTakeoverTimeout
	}
	idle := takeover / 2
	return sessionBounds{takeover: takeover, idle: idle, keepAlive: idle / 3}
}

// settings are the session's parameters that bound it, for Postgres to
// apply to this session alone (the user's other sessions keep theirs):
//
//   - idle_session_timeout ends a session frozen between batches (Postgres 14
//     and later);
//   - idle_in_transaction_session_timeout one frozen inside a claim, rolling
//     the claim back;
//   - tcp_user_timeout one whose host stopped acknowledging what Postgres
//     sends it, and the keepalives one whose host is gone while neither side
//     has anything to say: a partition, a dead host (these two are what
//     Postgres 13 has for a session that is merely silent);
//
// and one that is not a bound: synchronous_commit off, so that committing a
// batch's delete does not wait for its WAL to reach the disk, which was
// the largest part of an event's latency on a busy server. What only
// deletes acknowledged events, or moves refused ones to the dead-letter
// table in the same transaction, may be lost at a crash of Postgres (not of
// pg2kafka) within about three wal_writer_delay: those events come back to
// the queue and are shipped again, a duplicate, never a loss. The writers'
// transactions keep their own setting.
func (b sessionBounds) settings() (names, values []string) {
	seconds := func(d time.Duration) string { return strconv.Itoa(max(1, int(d/time.Second))) }
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	add := func(name, value string) { names, values = append(names, name), append(values, value) }
	if !b.withoutIdleSessionTimeout {
		add("idle_session_timeout", ms(b.idle))
	}
	add("idle_in_transaction_session_timeout", ms(b.idle))
	add("tcp_user_timeout", ms(b.idle))
	add("tcp_keepalives_idle", seconds(b.idle/2))
	add("tcp_keepalives_interval", seconds(b.idle/6))
	add("tcp_keepalives_count", "3")
	add("synchronous_commit", "off")
	return names, values
}

// sessionSettingsSQL applies the settings this server knows, for the
// session, and returns their names; Postgres 13 has no
// idle_session_timeout, which a startup parameter could not leave out.
const sessionSettingsSQL = `
SELECT p.name
FROM unnest($1::text[], $2::text[]) AS p(name, setting)
WHERE p.name IN (SELECT name FROM pg_settings)
  AND set_config(p.name, p.setting, false) IS NOT NULL`

// silenceLockKey is the advisory lock class under which a claimer on a
// server without idle_session_timeout publishes how long it may be silent,
// in milliseconds, as the lock's second key (held shared, so that equal
// bounds do not collide): there the claimers end each other's silent
// sessions instead, each by its own bound, so that replicas with different
// LANE_TAKEOVER_TIMEOUTs never cut a live one short.
const silenceLockKey int32 = 0x70676b03

// silentPeersSQL ends the sessions of the claimers of this database that
// have been idle, between batches, for longer than they allowed themselves.
// A claimer idle inside a claim is ended by idle_in_transaction_session_timeout.
const silentPeersSQL = `
SELECT a.pid, pg_terminate_backend(a.pid)
FROM pg_locks b JOIN pg_stat_activity a ON a.pid = b.pid
WHERE b.locktype = 'advisory' AND b.objsubid = 2 AND b.granted AND b.classid = $1::bigint::oid
  AND b.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND a.pid <> pg_backend_pid()
  AND a.state = 'idle'
  AND a.state_change < clock_timestamp() - b.objid::bigint * interval '1 millisecond'`

// endSilentPeers ends, on a server without idle_session_timeout, the
// sessions of claimers frozen between batches, which free their lanes. A
// claimer not allowed to (pg_terminate_backend needs the same role as the
// session's, or pg_signal_backend) says so once and stops trying.
func (c *Claimer) endSilentPeers(ctx context.Context) error {
	if !c.sweepsPeers {
		return nil
	}
	rows, err := c.conn.Query(ctx, silentPeersSQL, silenceLockKey)
	if err != nil {
		return fmt.Errorf("outbox: end silent shippers' sessions: %w", err)
	}
	type ended struct {
		PID  int32
		Done bool
	}
	all, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ended])
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42501" { // insufficient_privilege
			c.sweepsPeers = false
			c.logger.Warn("cannot end the sessions of frozen shippers (pg_terminate_backend needs the same role, or pg_signal_backend): on this Postgres, without idle_session_timeout, a shipper frozen between batches keeps its lanes until it wakes", slog.Any("error", err))
			return nil
		}
		return fmt.Errorf("outbox: end silent shippers' sessions: %w", err)
	}
	for _, e := range all {
		if e.Done {
			c.logger.Info("ended the session of a shipper silent for longer than its lane takeover timeout allows; its lanes are free", slog.Int("pid", int(e.PID)))
		}
	}
	return nil
}

// dialer is the client side of the same bounds: TCP keepalives, and
// TCP_USER_TIMEOUT where the system has it, so that a claimer cut off from
// Postgres sees its connection fail within about the same time as Postgres
// ends the session; and a connect timeout, so that reconnecting to a server
// that does not answer is retried rather than waited on.
func (b sessionBounds) dialer() *net.Dialer {
	return &net.Dialer{
		Timeout: b.takeover,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     max(time.Second, b.idle/2),
			Interval: max(time.Second, b.idle/6),
			Count:    3,
		},
		Control: func(network, _ string, raw syscall.RawConn) error {
			if !strings.HasPrefix(network, "tcp") {
				return nil
			}
			return setTCPUserTimeout(raw, b.idle)
		},
	}
}

// sessionConfig returns a copy of cfg whose connection is bounded by b.
func (b sessionBounds) sessionConfig(cfg *pgx.ConnConfig) *pgx.ConnConfig {
	out := cfg.Copy()
	out.DialFunc = b.dialer().DialContext
	if out.ConnectTimeout == 0 || out.ConnectTimeout > b.takeover {
		out.ConnectTimeout = b.takeover
	}
	return out
}

// roundTrip bounds one exchange with Postgres by the takeover timeout: by
// then the others may own the lanes, and a connection that does not answer
// (a server gone silent behind a proxy that still acknowledges every packet)
// is better closed, which pgx does when the deadline passes, and opened
// again.
func (c *Claimer) roundTrip(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.bounds.takeover)
}

// KeepAliveInterval is how often a claimer must say something to Postgres
// to keep its session, and with it its lanes and its open claim: a third of
// the silence Postgres allows it.
func (c *Claimer) KeepAliveInterval() time.Duration { return c.bounds.keepAlive }

// KeepAlive tells Postgres the claimer is alive, if it has said nothing for
// half of KeepAliveInterval (so that calls every KeepAliveInterval, however
// they fall, leave no silence much longer than that), so that waiting (to poll again, to retry, for the
// destination to answer while a claim is open) never costs it its lanes. It
// may be called while a Batch is open, between the batch's own calls. An
// error means the session is gone; the next Claim or Rebalance reconnects.
func (c *Claimer) KeepAlive(ctx context.Context) error {
	if c.conn == nil || c.conn.IsClosed() || time.Since(c.lastHeard) < c.bounds.keepAlive/2 {
		return nil
	}
	ctx, cancel := c.roundTrip(ctx)
	defer cancel()
	if _, err := c.conn.Exec(ctx, `SELECT`); err != nil {
		return fmt.Errorf("outbox: keep the session alive: %w", err)
	}
	c.heard()
	return nil
}

func (c *Claimer) heard() { c.lastHeard = time.Now() }
