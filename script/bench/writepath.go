package main

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
)

// writeVariant is one of the write-path tables: identical columns, a
// different trigger.
type writeVariant struct {
	key   string
	label string
	table string
}

var writeVariants = []writeVariant{
	{key: "a", label: "no trigger", table: "bench_w_a"},
	{key: "b", label: "minimal outbox trigger", table: "bench_w_b"},
	{key: "c", label: "pg2kafka trigger", table: "bench_w_c"},
	{key: "d", label: "minimal trigger into a copy of pg2kafka's queue", table: "bench_w_d"},
	{key: "e", label: "pg2kafka trigger, full_row", table: "bench_w_e"},
}

// updateVariants are the tables whose UPDATE cost is compared: pg2kafka's
// trigger without and with full_row.
var updateVariants = []writeVariant{writeVariants[2], writeVariants[4]}

// updateRows is how many rows the UPDATE runs spread their updates over.
const updateRows = 10_000

// writeResult is section 4: single-row INSERT transactions per second into
// each variant, the median of the rounds.
type writeResult struct {
	Clients int                  `json:"clients"`
	Seconds float64              `json:"seconds_per_run"`
	Runs    map[string][]float64 `json:"runs_tps"` // by variant, in run order
	TPS     map[string]float64   `json:"median_tps"`
	CvsA    float64              `json:"c_vs_a"`
	CvsB    float64              `json:"c_vs_b"`
	DvsB    float64              `json:"d_vs_b"`
	// EvsC is INSERT with full_row over without.
	EvsC float64 `json:"e_vs_c"`
	// UpdateRuns and UpdateTPS are single-row UPDATE transactions per
	// second into c and e; UpdateEvsC is e's over c's.
	UpdateRuns map[string][]float64 `json:"update_runs_tps"`
	UpdateTPS  map[string]float64   `json:"update_median_tps"`
	UpdateEvsC float64              `json:"update_e_vs_c"`
}

// runWritePath runs the variants interleaved, a b c d a b c d …, so that a
// machine getting slower or faster over time weighs on all of them alike.
func (b *bench) runWritePath(ctx context.Context) error {
	cfg := b.cfg.Write
	r := writeResult{
		Clients: cfg.Clients,
		Seconds: time.Duration(cfg.Duration).Seconds(),
		Runs:    make(map[string][]float64),
		TPS:     make(map[string]float64),

		UpdateRuns: make(map[string][]float64),
		UpdateTPS:  make(map[string]float64),
	}
	for round := 1; round <= cfg.Rounds; round++ {
		for _, v := range writeVariants {
			tps, err := b.insertLoad(ctx, v.table)
			if err != nil {
				return fmt.Errorf("write path (%s) %s: %w", v.key, v.label, err)
			}
			r.Runs[v.key] = append(r.Runs[v.key], tps)
			b.log.Info("write path", "round", round, "variant", v.key, "trigger", v.label, "tps", int(tps))
		}
		for _, v := range updateVariants {
			tps, err := b.updateLoad(ctx, v.table)
			if err != nil {
				return fmt.Errorf("write path UPDATE (%s) %s: %w", v.key, v.label, err)
			}
			r.UpdateRuns[v.key] = append(r.UpdateRuns[v.key], tps)
			b.log.Info("write path", "round", round, "statement", "UPDATE", "variant", v.key, "trigger", v.label, "tps", int(tps))
		}
	}
	for key, runs := range r.UpdateRuns {
		r.UpdateTPS[key] = median(runs)
	}
	r.UpdateEvsC = r.UpdateTPS["e"] / r.UpdateTPS["c"]
	for key, runs := range r.Runs {
		r.TPS[key] = median(runs)
	}
	r.CvsA, r.CvsB, r.DvsB = r.TPS["c"]/r.TPS["a"], r.TPS["c"]/r.TPS["b"], r.TPS["d"]/r.TPS["b"]
	r.EvsC = r.TPS["e"] / r.TPS["c"]
	b.report.WritePath = &r
	return nil
}

// insertLoad empties the write-path tables and the queue, then inserts rows
// into table from -write-clients connections, each through its own prepared
// statement, for -write-duration, and returns the commits per second.
func (b *bench) insertLoad(ctx context.Context, table string) (float64, error) {
	cfg := b.cfg.Write
	if err := truncate(ctx, b.pool, "bench_w_a", "bench_w_b", "bench_w_c", "bench_w_d", "bench_w_e", "bench_min_outbox", "bench_shaped_outbox", "pg2kafka.outbound_event_queue"); err != nil {
		return 0, err
	}
	if err := settle(ctx, b.pool); err != nil {
		return 0, err
	}
	conns, release, err := acquire(ctx, b.pool, cfg.Clients)
	if err != nil {
		return 0, err
	}
	defer release()
	name := "insert_" + table
	sql := "INSERT INTO " + table + " (customer, status, payload) VALUES ($1, $2, $3)"
	for _, c := range conns {
		if _, err := c.Conn().Prepare(ctx, name, sql); err != nil {
			return 0, fmt.Errorf("prepare: %w", err)
		}
	}

	payload := randomText(payloadLen(200))
	var commits atomic.Int64
	start := time.Now()
	deadline := start.Add(time.Duration(cfg.Duration))
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range conns {
		g.Go(func() error { return insertUntil(gctx, c, name, payload, deadline, &commits) })
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return float64(commits.Load()) / time.Since(start).Seconds(), nil
}

// insertUntil executes the prepared insert, each its own transaction, until
// deadline.
func insertUntil(ctx context.Context, conn *pgxpool.Conn, stmt, payload string, deadline time.Time, commits *atomic.Int64) error {
	for time.Now().Before(deadline) {
		if _, err := conn.Exec(ctx, stmt, "customer-0001", "pending", payload); err != nil {
			return err
		}
		commits.Add(1)
	}
	return nil
}

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// updateLoad fills table with updateRows rows, empties the queue, then
// updates one row per transaction from -write-clients connections for
// -write-duration, each client its own rows, every update a change, and
// returns the commits per second.
func (b *bench) updateLoad(ctx context.Context, table string) (float64, error) {
	cfg := b.cfg.Write
	if err := truncate(ctx, b.pool, table); err != nil {
		return 0, err
	}
	payload := randomText(payloadLen(200))
	if _, err := b.pool.Exec(ctx, "INSERT INTO "+table+" (customer, status, payload) SELECT 'customer-' || i, 'pending', $1 FROM generate_series(1, $2) AS i",
		payload, updateRows); err != nil {
		return 0, fmt.Errorf("fill %s: %w", table, err)
	}
	var first int64
	if err := b.pool.QueryRow(ctx, "SELECT min(id) FROM "+table).Scan(&first); err != nil {
		return 0, err
	}
	if err := truncate(ctx, b.pool, "pg2kafka.outbound_event_queue"); err != nil {
		return 0, err
	}
	if err := settle(ctx, b.pool); err != nil {
		return 0, err
	}
	conns, release, err := acquire(ctx, b.pool, cfg.Clients)
	if err != nil {
		return 0, err
	}
	defer release()
	name := "update_" + table
	sql := "UPDATE " + table + " SET status = $1 WHERE id = $2"
	for _, c := range conns {
		if _, err := c.Conn().Prepare(ctx, name, sql); err != nil {
			return 0, fmt.Errorf("prepare: %w", err)
		}
	}
	var commits atomic.Int64
	start := time.Now()
	deadline := start.Add(time.Duration(cfg.Duration))
	share := int64(updateRows / len(conns))
	g, gctx := errgroup.WithContext(ctx)
	for k, c := range conns {
		g.Go(func() error {
			statuses := [2]string{"paid", "pending"}
			for n := int64(0); time.Now().Before(deadline); n++ {
				id := first + int64(k)*share + n%share
				// A row's status flips on each of its updates, so none is a no-op.
				if _, err := c.Exec(gctx, name, statuses[(n/share)%2], id); err != nil {
					return err
				}
				commits.Add(1)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return float64(commits.Load()) / time.Since(start).Seconds(), nil
}
