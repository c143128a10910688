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
}

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
	}
	for key, runs := range r.Runs {
		r.TPS[key] = median(runs)
	}
	r.CvsA, r.CvsB, r.DvsB = r.TPS["c"]/r.TPS["a"], r.TPS["c"]/r.TPS["b"], r.TPS["d"]/r.TPS["b"]
	b.report.WritePath = &r
	return nil
}

// insertLoad empties the write-path tables and the queue, then inserts rows
// into table from -write-clients connections, each through its own prepared
// statement, for -write-duration, and returns the commits per second.
func (b *bench) insertLoad(ctx context.Context, table string) (float64, error) {
	cfg := b.cfg.Write
	if err := truncate(ctx, b.pool, "bench_w_a", "bench_w_b", "bench_w_c", "bench_w_d", "bench_min_outbox", "bench_shaped_outbox", "pg2kafka.outbound_event_queue"); err != nil {
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
