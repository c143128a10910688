package main

import (
	"context"
	"fmt"
	"time"
)

// isolationResult is the isolation section: the whole of pg2kafka with a
// table whose topic does not exist and a backlog of its events queued,
// beside a flowing table written to at -latency-rate. For each backlog (none
// first) it measures the flowing table's commit→consumer latency and then
// how fast pg2kafka drains a burst of the flowing table's events, both in
// the same run, so that the ratios to the run with no backlog compare like
// with like on a shared machine.
type isolationResult struct {
	Drain int            `json:"drain_events"`
	Runs  []isolationRun `json:"runs"`
}

type isolationRun struct {
	Backlog int     `json:"paused_backlog"`
	Latency float64 `json:"p99_ms"`
	P50Ms   float64 `json:"p50_ms"`
	Missing int     `json:"missing"`
	// DrainPerSec is the flowing table's burst of -isolation-drain events,
	// committed at once, from the commit to the last on the topic.
	DrainPerSec float64 `json:"drain_per_sec"`
	// StillQueued is the paused table's events left queued at the end: all
	// of them, since its topic never exists.
	StillQueued int64 `json:"still_queued"`
}

// fillLatencySQL queues rows $1..$2 of the flowing table at once.
const fillLatencySQL = `
INSERT INTO bench_latency (id, customer, status, payload)
SELECT g, 'customer-' || lpad((g % 10000)::text, 4, '0'), 'pending', repeat('x', 150)
FROM generate_series($1::bigint, $2::bigint) AS g`

func (b *bench) runIsolation(ctx context.Context) error {
	cfg := b.cfg.Isolation
	r := &isolationResult{Drain: cfg.Drain}
	b.report.Isolation = r
	// None queued both first and last: the reference is their mean, so
	// that neither the first run's cold start nor the machine's drift over
	// the section leans on one side of the ratios.
	backlogs := append(append([]int{0}, cfg.Backlogs...), 0)
	for _, backlog := range backlogs {
		run, err := b.isolationRun(ctx, backlog)
		if err != nil {
			return err
		}
		r.Runs = append(r.Runs, run)
	}
	return nil
}

func (b *bench) isolationRun(ctx context.Context, backlog int) (isolationRun, error) {
	run := isolationRun{Backlog: backlog}
	lat := b.cfg.Latency
	total := int(float64(lat.Rate) * time.Duration(lat.Duration).Seconds())
	if err := truncate(ctx, b.pool, eventsTable, latencyTable, "pg2kafka.outbound_event_queue"); err != nil {
		return run, err
	}
	// The paused table's topic is missing: pg2kafka runs without
	// KAFKA_CREATE_TOPICS, as by default. The flowing table's topic is
	// made afresh, so that the consumer counts this run's records alone.
	flowing, paused := b.topic(latencyTable), b.topic(eventsTable)
	b.deleteTopic(ctx, paused)
	b.deleteTopic(ctx, flowing)
	if err := b.createTopic(ctx, flowing); err != nil {
		return run, err
	}
	if backlog > 0 {
		if err := b.fillFrom(ctx, 1, backlog); err != nil {
			return run, err
		}
	}
	if err := settle(ctx, b.pool, "pg2kafka.outbound_event_queue"); err != nil {
		return run, err
	}

	base := time.Now()
	consumer, err := startArrivals(ctx, b.broker, flowing, total, base)
	if err != nil {
		return run, err
	}
	defer consumer.stop()
	shipper, err := b.startShipper(b.bin.pg2kafka, b.cfg.BatchSize, "KAFKA_CREATE_TOPICS=false")
	if err != nil {
		return run, err
	}
	defer func() { _, _ = shipper.Stop(stopTimeout) }()
	if err := b.warmUp(ctx, consumer); err != nil {
		return run, err
	}
	b.log.Info("isolation: writing the flowing table at a fixed rate", "paused_backlog", backlog, "rate", lat.Rate, "duration", time.Duration(lat.Duration))
	commits, _, err := b.writeAtRate(ctx, total, base)
	if err != nil {
		return run, err
	}
	consumer.waitFor(ctx, total, time.Duration(b.cfg.Timeout))
	var l latencyResult
	l.addLatencies(commits, consumer.stop())
	run.P50Ms, run.Latency, run.Missing = l.P50Ms, l.P99Ms, l.Missing

	// The burst: one statement queues them all, and the clock runs from
	// its commit, when pg2kafka can first see them, until the topic holds
	// them.
	first := int64(total + 1)
	if _, err := b.pool.Exec(ctx, fillLatencySQL, first, first+int64(b.cfg.Isolation.Drain)-1); err != nil {
		return run, fmt.Errorf("fill %s: %w", latencyTable, err)
	}
	start := time.Now()
	want := int64(1 + total + b.cfg.Isolation.Drain) // the probe row too
	if err := b.waitRecords(ctx, flowing, want); err != nil {
		return run, err
	}
	run.DrainPerSec = float64(b.cfg.Isolation.Drain) / time.Since(start).Seconds()
	if _, err := shipper.Stop(stopTimeout); err != nil {
		return run, err
	}
	if run.StillQueued, err = queueDepth(ctx, b.pool); err != nil {
		return run, err
	}
	b.log.Info("isolation", "paused_backlog", backlog, "p50_ms", run.P50Ms, "p99_ms", run.Latency, "missing", run.Missing,
		"drain_per_sec", int(run.DrainPerSec), "still_queued", run.StillQueued)
	if run.StillQueued != int64(backlog) {
		return run, fmt.Errorf("isolation: %d events left queued, want the paused table's %d", run.StillQueued, backlog)
	}
	return run, nil
}

// waitRecords waits until topic holds want records, or -timeout passes.
func (b *bench) waitRecords(ctx context.Context, topic string, want int64) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(b.cfg.Timeout))
	defer cancel()
	for {
		have, err := b.recordsOn(ctx, topic)
		if err == nil && have >= want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d records on %s within %s", have, want, topic, time.Duration(b.cfg.Timeout))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Issue 9's targets: the flowing table's p99 within 2× of its p99 with no
// paused backlog, and its drain rate within 10%.
const (
	targetIsolationP99   = 2.0
	targetIsolationDrain = 0.90
)

func (r *report) isolationRows() []row {
	s := r.Isolation
	if s == nil || len(s.Runs) == 0 {
		return nil
	}
	var free isolationRun
	n := 0.0
	for _, run := range s.Runs {
		if run.Backlog == 0 {
			free.Latency += run.Latency
			free.DrainPerSec += run.DrainPerSec
			n++
		}
	}
	free.Latency /= n
	free.DrainPerSec /= n
	var rows []row
	for _, run := range s.Runs {
		label := fmt.Sprintf("isolation: flowing table beside a missing topic with %s events queued", thousands(run.Backlog))
		lat := fmt.Sprintf("p50 / p99 %.1f / %.1f ms, %d missing", run.P50Ms, run.Latency, run.Missing)
		drain := fmt.Sprintf("burst of %s drained at %s", thousands(s.Drain), perSec(run.DrainPerSec, "events"))
		if run.Backlog == 0 {
			rows = append(rows, row{Measure: label, Value: lat + "; " + drain})
			continue
		}
		p99 := run.Latency / free.Latency
		rate := run.DrainPerSec / free.DrainPerSec
		rows = append(rows,
			check(label+": p99 ÷ none queued (mean of the first and last runs)", fmt.Sprintf("%s (%.2f×)", lat, p99), fmt.Sprintf("≤ %.0f×", targetIsolationP99), p99 <= targetIsolationP99 && run.Missing == 0),
			check(label+": drain ÷ none queued", fmt.Sprintf("%s (%.2f)", drain, rate), "≥ "+percent(targetIsolationDrain), rate >= targetIsolationDrain))
	}
	return rows
}
