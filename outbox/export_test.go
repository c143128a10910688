package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Setting returns the value of a parameter in the claimer's session.
func (c *Claimer) Setting(ctx context.Context, name string) (string, error) {
	if err := c.connect(ctx); err != nil {
		return "", err
	}
	var v string
	err := c.conn.QueryRow(ctx, `SELECT current_setting($1)`, name).Scan(&v)
	return v, err
}

// SetProbeInterval shortens how long a claimer whose claims find nothing
// waits before it asks the id sequence again, and how long one whose
// candidate waits on a snapshot's xmin held back (by a test running beside
// it, say) waits before it looks for the writers again, so that a test need
// not wait.
func (c *Claimer) SetProbeInterval(d time.Duration) { c.low.probeGap, c.low.lookGap = d, d }

// ExplainClaim runs the claim that Claim(limit, except) would run now, or
// the same claim from the head of the queue, under EXPLAIN (ANALYZE,
// BUFFERS) in a transaction it rolls back, and returns how many shared
// buffers it touched: the claim's cost, free of the machine's speed.
func (c *Claimer) ExplainClaim(ctx context.Context, limit int, except []Table, fromHead bool) (int64, error) {
	if err := c.connect(ctx); err != nil {
		return 0, err
	}
	from := c.low.from(except)
	if c.low.conn != c.conn || fromHead {
		from = 0
	}
	lanes, schemas, names := c.claimArgs(except)
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var out []byte
	if err := tx.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+claimSQL, limit, lanes, schemas, names, from, []int64(nil)).Scan(&out); err != nil {
		return 0, fmt.Errorf("explain the claim: %w", err)
	}
	return planBuffers(out)
}

// planBuffers returns the shared buffers an EXPLAIN (ANALYZE, BUFFERS,
// FORMAT JSON) says its statement touched.
func planBuffers(out []byte) (int64, error) {
	var plans []struct {
		Plan struct {
			Hit  int64 `json:"Shared Hit Blocks"`
			Read int64 `json:"Shared Read Blocks"`
		}
	}
	if err := json.Unmarshal(out, &plans); err != nil || len(plans) != 1 {
		return 0, fmt.Errorf("read the claim's plan %s: %v", out, err)
	}
	return plans[0].Plan.Hit + plans[0].Plan.Read, nil
}

// WithoutIdleSessionTimeout makes c treat its server as one without
// idle_session_timeout, as Postgres 13 is.
func WithoutIdleSessionTimeout(c *Claimer) { c.bounds.withoutIdleSessionTimeout = true }

// WithoutLooks keeps c from looking for the queue's writers in pg_locks,
// so that only its claims' snapshots clear its candidates.
func WithoutLooks(c *Claimer) { c.low.noLook = true }

// ExplainPreparedClaim is ExplainPrepared for the claim, with the arguments
// Claim(limit, nil) would give it now.
func (c *Claimer) ExplainPreparedClaim(ctx context.Context, limit int) (int64, error) {
	lanes := "NULL" // every lane
	if l, _, _ := c.claimArgs(nil); l != nil {
		lanes = strings.Trim(strings.Join(strings.Fields(fmt.Sprint(l)), ","), "[]")
		lanes = "'{" + lanes + "}'"
	}
	return c.ExplainPrepared(ctx, claimSQL, fmt.Sprintf("%d, %s, NULL, NULL, %d, NULL", limit, lanes, c.low.from(nil)))
}

// ExplainPrepared runs a statement the claimer has prepared, with the plan
// it keeps for it and the given arguments (EXECUTE takes them as literals),
// under EXPLAIN (ANALYZE, BUFFERS) in a transaction it rolls back, and
// returns the shared buffers it touched.
func (c *Claimer) ExplainPrepared(ctx context.Context, statement, args string) (int64, error) {
	var name string
	if err := c.conn.QueryRow(ctx, `SELECT name FROM pg_prepared_statements WHERE statement = $1`, statement).Scan(&name); err != nil {
		return 0, fmt.Errorf("find the prepared statement: %w", err)
	}
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var out []byte
	if err := tx.QueryRow(ctx, fmt.Sprintf(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE %q(%s)`, name, args)).Scan(&out); err != nil {
		return 0, fmt.Errorf("explain the prepared statement: %w", err)
	}
	return planBuffers(out)
}

// MoveToDeadLetterSQL is the statement that moves refused events to the
// dead-letter table.
const MoveToDeadLetterSQL = moveToDeadLetterSQL

// SetWatchRetry sets how long Watch waits after an error before it tries
// again, so that a test need not wait the default.
func (q *Queue) SetWatchRetry(d time.Duration) { q.watchRetry = d }
