package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// awaitSQL waits in Postgres, every check_ms, until an event id past $1 has
// been handed out or $2 ms have passed (migrations/00012_await_event_ids.sql).
const awaitSQL = awaitCall + `$1::bigint, $2::integer, $3::integer)`

// awaitCall is how awaitSQL begins, by which the status queries know the
// watcher's session.
const awaitCall = `SELECT pg2kafka.await_event_ids(`

// watchTimeout is how long one wait lasts before it returns with nothing
// new. It bounds the snapshot the call holds, and how soon a session that
// has gone is found.
const watchTimeout = time.Second

// Watch waits for event ids to be handed out, checking every check inside
// Postgres over a session of its own, and wakes the queue's waiting claimers
// (Advanced) as soon as one is, until ctx ends. While it watches, Watched is
// true, and an idle claimer can wait for it instead of polling; when it
// cannot (a schema without pg2kafka.await_event_ids, a role without the
// right to call it, Postgres unreachable) it says why, once, and tries
// again every few seconds, and the claimers poll meanwhile.
func (q *Queue) Watch(ctx context.Context, check time.Duration, logger *slog.Logger) {
	defer q.watched.Store(false)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
		}
	}()
	var failing error
	checkMs := max(1, int(check/time.Millisecond))
	for ctx.Err() == nil {
		err := func() error {
			if conn == nil || conn.IsClosed() {
				c, err := pgx.ConnectConfig(ctx, q.pool.Config().ConnConfig.Copy())
				if err != nil {
					return fmt.Errorf("connect: %w", err)
				}
				conn = c
			}
			after := int64(-1) // the first call returns at once, with where ids are
			if r := q.readings.get(); r.read {
				after = r.last
			}
			callCtx, cancel := context.WithTimeout(ctx, watchTimeout+10*time.Second)
			defer cancel()
			var last int64
			if err := conn.QueryRow(callCtx, awaitSQL, after, watchTimeout.Milliseconds(), checkMs).Scan(&last); err != nil {
				return err
			}
			q.readings.note(last)
			return nil
		}()
		switch {
		case ctx.Err() != nil:
		case err == nil:
			if failing != nil {
				logger.Info("waiting in Postgres for new events again")
				failing = nil
			}
			q.watched.Store(true)
		default:
			q.watched.Store(false)
			if failing == nil {
				logger.Warn("cannot wait in Postgres for new events, so idle shippers poll every POLL_INTERVAL instead; retrying", watchErrorAttrs(err)...)
			}
			failing = err
			if conn != nil {
				_ = conn.Close(context.WithoutCancel(ctx))
				conn = nil
			}
			sleepCtx(ctx, cmp.Or(q.watchRetry, watchRetry))
		}
	}
}

// watchRetry is how long Watch waits after an error before it tries again.
const watchRetry = 5 * time.Second

// watchErrorAttrs says what went wrong and, where it is known, the fix.
func watchErrorAttrs(err error) []any {
	attrs := []any{slog.Any("error", err)}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		switch pgErr.Code {
		case "42883": // undefined_function
			attrs = append(attrs, slog.String("fix", "the installed schema predates pg2kafka.await_event_ids: run pg2kafka migrate"))
		case "42501": // insufficient_privilege
			attrs = append(attrs, slog.String("fix", "as the owner of schema pg2kafka, run: SELECT pg2kafka.grant_shipper_privileges()"))
		case "57014": // query_canceled
			attrs = append(attrs, slog.String("fix", fmt.Sprintf("a statement_timeout shorter than %s ends the wait: raise it for the shipper's role", watchTimeout+time.Second)))
		}
	}
	return attrs
}

// Watched tells whether the queue's Watch is waiting in Postgres for new
// events, so that Advanced will say when any are handed out.
func (c *Claimer) Watched() bool { return c.queue.watched.Load() }

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
