package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// pausedResult is the paused section: how fast a claimer drains a flowing
// table's backlog while a paused table's events are queued ahead of it, and
// with none. It measures the claim path alone (claim, then delete as if
// acknowledged), so that what a destination costs does not hide what the
// skipped events cost; the isolation section measures the whole of pg2kafka.
type pausedResult struct {
	Flowing int         `json:"flowing_events"`
	Runs    []pausedRun `json:"runs"`
}

type pausedRun struct {
	Paused      int     `json:"paused_events"`
	DrainPerSec float64 `json:"drain_per_sec"`
	// AfterFirstPerSec is the drain rate after the first claim: a claimer
	// that starts with the backlog in place walks it once, in its first
	// claim, and what a paused backlog must not cost is a walk per claim.
	AfterFirstPerSec float64 `json:"after_first_claim_per_sec"`
	// FirstClaimMs is the first claim, which walks past the paused events;
	// MedianClaimMs the median of all.
	FirstClaimMs  float64 `json:"first_claim_ms"`
	MedianClaimMs float64 `json:"median_claim_ms"`
}

// pausedTable is the table whose events are queued ahead and skipped.
const pausedTable = latencyTable

// fillPausedSQL queues rows $1..$2 of the paused table.
const fillPausedSQL = `
INSERT INTO bench_latency (id, customer, status, payload)
SELECT g, 'customer-' || lpad((g % 10000)::text, 4, '0'), 'pending', 'paused'
FROM generate_series($1::bigint, $2::bigint) AS g`

func (b *bench) runPaused(ctx context.Context) error {
	cfg := b.cfg.Paused
	r := &pausedResult{Flowing: cfg.Flowing}
	b.report.Paused = r
	for _, paused := range []int{0, cfg.Paused} {
		run, err := b.pausedDrain(ctx, paused, cfg.Flowing)
		if err != nil {
			return err
		}
		r.Runs = append(r.Runs, run)
	}
	return nil
}

func (b *bench) pausedDrain(ctx context.Context, paused, flowing int) (pausedRun, error) {
	run := pausedRun{Paused: paused}
	if err := truncate(ctx, b.pool, eventsTable, pausedTable, "pg2kafka.outbound_event_queue"); err != nil {
		return run, err
	}
	for lo := 1; lo <= paused; lo += fillChunk {
		if _, err := b.pool.Exec(ctx, fillPausedSQL, lo, min(lo+fillChunk-1, paused)); err != nil {
			return run, fmt.Errorf("fill %s: %w", pausedTable, err)
		}
	}
	if err := b.fillFrom(ctx, 1, flowing); err != nil {
		return run, err
	}
	if err := settle(ctx, b.pool, "pg2kafka.outbound_event_queue"); err != nil {
		return run, err
	}

	c := outbox.NewQueue(b.pool).NewClaimer(slog.New(slog.DiscardHandler), 0)
	defer c.Close(context.WithoutCancel(ctx))
	if err := c.Join(ctx); err != nil {
		return run, err
	}
	for balanced := false; !balanced; {
		var err error
		if balanced, err = c.Rebalance(ctx); err != nil {
			return run, err
		}
	}
	except := []outbox.Table{{Schema: "public", Name: pausedTable}}
	var claims []time.Duration
	shipped, firstShipped := 0, 0
	start := time.Now()
	var afterFirst time.Time
	for shipped < flowing {
		t := time.Now()
		batch, err := c.Claim(ctx, b.cfg.BatchSize, except)
		if err != nil {
			return run, err
		}
		claims = append(claims, time.Since(t))
		ids := make([]int64, len(batch.Events))
		for i, e := range batch.Events {
			if e.TableName == pausedTable {
				return run, fmt.Errorf("claimed an event of the paused table %s", pausedTable)
			}
			ids[i] = e.ID
		}
		if err := batch.Complete(ctx, ids); err != nil {
			return run, err
		}
		if len(ids) == 0 {
			return run, fmt.Errorf("the claims found %d of the %d flowing events", shipped, flowing)
		}
		shipped += len(ids)
		if afterFirst.IsZero() {
			afterFirst, firstShipped = time.Now(), shipped
		}
	}
	elapsed := time.Since(start)
	run.DrainPerSec = float64(flowing) / elapsed.Seconds()
	run.AfterFirstPerSec = float64(flowing-firstShipped) / time.Since(afterFirst).Seconds()
	run.FirstClaimMs = ms(claims[0])
	run.MedianClaimMs = ms(medianDuration(claims))
	b.log.Info("drained past a paused backlog", "paused", paused, "flowing", flowing, "events_per_sec", int(run.DrainPerSec),
		"first_claim_ms", run.FirstClaimMs, "median_claim_ms", run.MedianClaimMs)
	return run, nil
}

func medianDuration(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// targetPausedDrain is issue 9's: the flowing table's drain rate with the
// paused backlog within 10% of its rate with none.
const targetPausedDrain = 0.90

func (r *report) pausedRows() []row {
	p := r.Paused
	if p == nil || len(p.Runs) == 0 {
		return nil
	}
	var rows []row
	free := p.Runs[0]
	for _, run := range p.Runs {
		label := fmt.Sprintf("paused: claim path, drain of %s flowing events, %s paused events ahead", thousands(p.Flowing), thousands(run.Paused))
		value := fmt.Sprintf("%s; after the first claim %s (claims: first %.1f ms, median %.2f ms)",
			perSec(run.DrainPerSec, "events"), perSec(run.AfterFirstPerSec, "events"), run.FirstClaimMs, run.MedianClaimMs)
		if run.Paused == 0 {
			rows = append(rows, row{Measure: label, Value: value})
			continue
		}
		rows = append(rows, row{Measure: label + ", from the claimer's start (÷ none ahead): its first claim walks the backlog once",
			Value: fmt.Sprintf("%.2f", run.DrainPerSec/free.DrainPerSec)})
		ratio := run.AfterFirstPerSec / free.AfterFirstPerSec
		rows = append(rows, check(label+", after the first claim (÷ none ahead)", fmt.Sprintf("%.2f", ratio), "≥ "+percent(targetPausedDrain), ratio >= targetPausedDrain))
	}
	return rows
}
