package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// isolationResult is the isolation section: the whole of pg2kafka with a
// table whose topic does not exist and a backlog of its events queued,
// beside a flowing table written to at -latency-rate. Each run measures the
// flowing table's commit→consumer latency for -isolation-duration, then
// drains -isolation-bursts bursts of its events one after another. The runs
// go in rounds, none queued and then each backlog, closed by one more run
// with none queued, and what is reported are medians over the runs: on a
// shared machine one unlucky run, or the machine's drift over the section,
// would otherwise decide a ratio.
type isolationResult struct {
	Drain  int            `json:"drain_events"`
	Bursts int            `json:"bursts_per_run"`
	Rounds int            `json:"rounds"`
	Runs   []isolationRun `json:"runs"`
}

type isolationRun struct {
	// Round counts from 1; the closing run with none queued is Rounds+1.
	Round   int     `json:"round"`
	Backlog int     `json:"paused_backlog"`
	Latency float64 `json:"p99_ms"`
	P50Ms   float64 `json:"p50_ms"`
	Missing int     `json:"missing"`
	// BurstsPerSec are the run's bursts of -isolation-drain events of the
	// flowing table, each committed at once and timed from its commit to
	// its last event on the topic; DrainPerSec is their median.
	BurstsPerSec []float64 `json:"bursts_per_sec"`
	DrainPerSec  float64   `json:"drain_per_sec"`
	// IndexRowsPerEvent and SeqRowsPerEvent are the queue rows read while
	// the bursts drained, by index and by sequential scans, per event
	// drained (pg_stat_user_tables): what a paused backlog walked would show.
	IndexRowsPerEvent float64 `json:"index_rows_read_per_event"`
	SeqRowsPerEvent   float64 `json:"seq_rows_read_per_event"`
	// CountMs is one count of the paused table's queued events, as its
	// pause line and each reminder, every 30 s, make it: a pass over the
	// whole queue, timed after the bursts.
	CountMs float64 `json:"count_ms,omitempty"`
	// StillQueued is the paused table's events left queued at the end: all
	// of them, since its topic never exists.
	StillQueued int64 `json:"still_queued"`
}

// fillLatencySQL queues rows $1..$2 of the flowing table at once.
const fillLatencySQL = `
INSERT INTO bench_latency (id, customer, status, payload)
SELECT g, 'customer-' || lpad((g % 10000)::text, 4, '0'), 'pending', repeat('x', 150)
FROM generate_series($1::bigint, $2::bigint) AS g`

// backlogStash holds the queue rows of the largest paused backlog, written
// once through the trigger as a user's rows would be, and copied back into
// the queue, ids and all, by each run that needs a backlog: writing a
// million events through the trigger again took most of a run's time.
const backlogStash = "bench_isolation_backlog"

// restoreBacklogSQL queues the first $1 events of the stash again, at their
// own ids, below every id handed out since: ahead of the flowing table's.
const restoreBacklogSQL = `
INSERT INTO pg2kafka.outbound_event_queue OVERRIDING SYSTEM VALUE
SELECT * FROM ` + backlogStash + ` ORDER BY id LIMIT $1`

func (b *bench) runIsolation(ctx context.Context) error {
	cfg := b.cfg.Isolation
	r := &isolationResult{Drain: cfg.Drain, Bursts: cfg.Bursts, Rounds: cfg.Rounds}
	b.report.Isolation = r
	if err := b.stashBacklog(ctx, slices.Max(cfg.Backlogs)); err != nil {
		return err
	}
	type step struct{ round, backlog int }
	var steps []step
	for round := 1; round <= cfg.Rounds; round++ {
		steps = append(steps, step{round, 0})
		for _, backlog := range cfg.Backlogs {
			steps = append(steps, step{round, backlog})
		}
	}
	steps = append(steps, step{cfg.Rounds + 1, 0})
	for _, s := range steps {
		run, err := b.isolationRun(ctx, s.round, s.backlog)
		if err != nil {
			return err
		}
		r.Runs = append(r.Runs, run)
	}
	return nil
}

func (b *bench) isolationRun(ctx context.Context, round, backlog int) (isolationRun, error) {
	run := isolationRun{Round: round, Backlog: backlog}
	cfg := b.cfg.Isolation
	total := int(float64(b.cfg.Latency.Rate) * time.Duration(cfg.Duration).Seconds())
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
		if _, err := b.pool.Exec(ctx, restoreBacklogSQL, backlog); err != nil {
			return run, fmt.Errorf("queue the paused backlog: %w", err)
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
	pauseLog := newLineWatch(b.stderr, pausedLine)
	cmd := b.shipperCmd(b.bin.pg2kafka, b.cfg.BatchSize, "KAFKA_CREATE_TOPICS=false")
	cmd.Stdout, cmd.Stderr = pauseLog, pauseLog
	shipper, err := startProcess("pg2kafka", cmd)
	if err != nil {
		return run, err
	}
	defer func() { _, _ = shipper.Stop(stopTimeout) }()
	if err := b.warmUp(ctx, consumer); err != nil {
		return run, err
	}
	// The latency window opens once the table's pause is over with, in
	// every run alike: pg2kafka logs it after counting the table's queued
	// events, one pass over the whole queue, while each claimer walks past
	// the backlog once; then a second more. That count, which each reminder
	// makes again, is timed on its own below.
	if backlog > 0 {
		select {
		case <-pauseLog.seen:
		case <-time.After(30 * time.Second):
			return run, fmt.Errorf("pg2kafka did not log the table paused within 30s of its start")
		case <-ctx.Done():
			return run, ctx.Err()
		}
	}
	if err := sleepUntil(ctx, time.Now().Add(time.Second)); err != nil {
		return run, err
	}
	b.log.Info("isolation: writing the flowing table at a fixed rate", "round", round, "paused_backlog", backlog,
		"rate", b.cfg.Latency.Rate, "duration", time.Duration(cfg.Duration))
	commits, _, err := b.writeAtRate(ctx, b.cfg.Latency.Rate, total, base)
	if err != nil {
		return run, err
	}
	consumer.waitFor(ctx, total, time.Duration(b.cfg.Timeout))
	var l latencyResult
	l.addLatencies(commits, consumer.stop())
	run.P50Ms, run.Latency, run.Missing = l.P50Ms, l.P99Ms, l.Missing

	// The bursts: one statement queues each, and the clock runs from its
	// commit, when pg2kafka can first see it, until the topic holds it.
	before, err := b.queueReads(ctx)
	if err != nil {
		return run, err
	}
	next := int64(total + 1)
	shipped := int64(1 + total) // the probe row too
	for range cfg.Bursts {
		if _, err := b.pool.Exec(ctx, fillLatencySQL, next, next+int64(cfg.Drain)-1); err != nil {
			return run, fmt.Errorf("fill %s: %w", latencyTable, err)
		}
		start := time.Now()
		next += int64(cfg.Drain)
		shipped += int64(cfg.Drain)
		if err := b.waitRecords(ctx, flowing, shipped); err != nil {
			return run, err
		}
		run.BurstsPerSec = append(run.BurstsPerSec, float64(cfg.Drain)/time.Since(start).Seconds())
	}
	run.DrainPerSec = median(run.BurstsPerSec)
	drained := int64(cfg.Bursts * cfg.Drain)
	after, err := b.queueReadsOf(ctx, before, drained)
	if err != nil {
		return run, err
	}
	run.IndexRowsPerEvent = float64(after.index-before.index) / float64(drained)
	run.SeqRowsPerEvent = float64(after.seq-before.seq) / float64(drained)
	if backlog > 0 {
		start := time.Now()
		if _, err := outbox.NewQueue(b.pool).QueuedOf(ctx, outbox.Table{Schema: "public", Name: eventsTable}); err != nil {
			return run, err
		}
		run.CountMs = ms(time.Since(start))
	}

	if _, err := shipper.Stop(stopTimeout); err != nil {
		return run, err
	}
	if run.StillQueued, err = queueDepth(ctx, b.pool); err != nil {
		return run, err
	}
	b.log.Info("isolation", "round", round, "paused_backlog", backlog, "p50_ms", run.P50Ms, "p99_ms", run.Latency, "missing", run.Missing,
		"drain_per_sec", int(run.DrainPerSec), "bursts_per_sec", run.BurstsPerSec,
		"index_rows_per_event", run.IndexRowsPerEvent, "seq_rows_per_event", run.SeqRowsPerEvent, "count_ms", run.CountMs, "still_queued", run.StillQueued)
	if run.StillQueued != int64(backlog) {
		return run, fmt.Errorf("isolation: %d events left queued, want the paused table's %d", run.StillQueued, backlog)
	}
	return run, nil
}

// pausedLine begins the line pg2kafka logs when a table pauses
// (shipper/pause.go), once it has counted the table's queued events.
const pausedLine = "table paused"

// lineWatch passes pg2kafka's output on, and closes seen once marker has
// gone by in it. exec.Cmd calls Write from one goroutine at a time when it
// is both Stdout and Stderr.
type lineWatch struct {
	out    io.Writer
	marker []byte
	seen   chan struct{}
	once   sync.Once
	tail   []byte // the end of the output so far, for a marker split across writes
}

func newLineWatch(out io.Writer, marker string) *lineWatch {
	return &lineWatch{out: out, marker: []byte(marker), seen: make(chan struct{})}
}

func (w *lineWatch) Write(p []byte) (int, error) {
	buf := append(w.tail, p...)
	if bytes.Contains(buf, w.marker) {
		w.once.Do(func() { close(w.seen) })
	}
	keep := min(len(buf), len(w.marker)-1)
	w.tail = append(w.tail[:0], buf[len(buf)-keep:]...)
	return w.out.Write(p)
}

// medianOf says, after a figure, of how many runs it is the median.
func medianOf(runs int) string {
	if runs == 1 {
		return ""
	}
	return fmt.Sprintf(" (median of %d)", runs)
}

// stashBacklog writes n events of the paused table through its trigger and
// keeps their queue rows in backlogStash.
func (b *bench) stashBacklog(ctx context.Context, n int) error {
	if err := truncate(ctx, b.pool, eventsTable, "pg2kafka.outbound_event_queue"); err != nil {
		return err
	}
	if err := b.fillFrom(ctx, 1, n); err != nil {
		return err
	}
	if _, err := b.pool.Exec(ctx, `DROP TABLE IF EXISTS `+backlogStash+`; CREATE TABLE `+backlogStash+` AS SELECT * FROM pg2kafka.outbound_event_queue`); err != nil {
		return fmt.Errorf("keep the paused backlog: %w", err)
	}
	return truncate(ctx, b.pool, eventsTable, "pg2kafka.outbound_event_queue")
}

// queueReads is what pg_stat_user_tables has counted of the queue so far:
// rows read by index and by sequential scans, and rows deleted.
type queueReads struct{ index, seq, deleted int64 }

func (b *bench) queueReads(ctx context.Context) (queueReads, error) {
	var r queueReads
	err := b.pool.QueryRow(ctx, `
SELECT coalesce(idx_tup_fetch, 0), coalesce(seq_tup_read, 0), n_tup_del
FROM pg_stat_user_tables WHERE relid = 'pg2kafka.outbound_event_queue'::regclass`).Scan(&r.index, &r.seq, &r.deleted)
	if err != nil {
		return r, fmt.Errorf("read the queue's table statistics: %w", err)
	}
	return r, nil
}

// queueReadsOf returns the queue's counts once they include the deletes of
// the events drained since before. A session reports its counts a second or
// so after its transactions, so they are read no sooner than that, and
// again until the deletes are in (or a few seconds have passed).
func (b *bench) queueReadsOf(ctx context.Context, before queueReads, deleted int64) (queueReads, error) {
	start := time.Now()
	for {
		after, err := b.queueReads(ctx)
		if err != nil {
			return after, err
		}
		waited := time.Since(start)
		if (waited > 1100*time.Millisecond && after.deleted-before.deleted >= deleted) || waited > 5*time.Second {
			return after, nil
		}
		select {
		case <-ctx.Done():
			return after, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
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

// isolationRows reports, for nothing queued, the medians of its runs; for
// each backlog, the medians of its runs, and its ratios: each round's run
// against the two runs with nothing queued either side of it, which takes
// out the machine's drift over the section, and the median of those.
func (r *report) isolationRows() []row {
	s := r.Isolation
	if s == nil || len(s.Runs) == 0 {
		return nil
	}
	by := make(map[int][]isolationRun)
	var backlogs []int
	for _, run := range s.Runs {
		if _, ok := by[run.Backlog]; !ok && run.Backlog > 0 {
			backlogs = append(backlogs, run.Backlog)
		}
		by[run.Backlog] = append(by[run.Backlog], run)
	}
	none := by[0]
	if len(none) == 0 {
		return nil
	}
	noneByRound := make(map[int]isolationRun)
	for _, run := range none {
		noneByRound[run.Round] = run
	}
	col := func(runs []isolationRun, f func(isolationRun) float64) []float64 {
		var out []float64
		for _, run := range runs {
			out = append(out, f(run))
		}
		return out
	}
	p50 := func(r isolationRun) float64 { return r.P50Ms }
	p99 := func(r isolationRun) float64 { return r.Latency }
	drain := func(r isolationRun) float64 { return r.DrainPerSec }
	reads := func(runs []isolationRun) string {
		idx, seq := median(col(runs, func(r isolationRun) float64 { return r.IndexRowsPerEvent })), median(col(runs, func(r isolationRun) float64 { return r.SeqRowsPerEvent }))
		out := fmt.Sprintf("%.1f queue rows read per event", idx+seq)
		if seq >= 0.05 {
			out += fmt.Sprintf(", %.1f of them by sequential scans", seq)
		}
		return out
	}
	missing := func(runs []isolationRun) int {
		n := 0
		for _, run := range runs {
			n += run.Missing
		}
		return n
	}
	bursts := fmt.Sprintf("%d bursts of %s a run", s.Bursts, thousands(s.Drain))
	if s.Bursts == 1 {
		bursts = "a burst of " + thousands(s.Drain)
	}
	noneDrain := col(none, drain)
	rows := []row{{
		Measure: fmt.Sprintf("isolation: flowing table, nothing queued beside it (median of %d runs)", len(none)),
		Value: fmt.Sprintf("p50 / p99 %.1f / %.1f ms, %d missing; %s drained at %s (runs %s–%s), %s",
			median(col(none, p50)), median(col(none, p99)), missing(none), bursts, perSec(median(noneDrain), "events"),
			thousands(int64(slices.Min(noneDrain)+0.5)), thousands(int64(slices.Max(noneDrain)+0.5)), reads(none)),
	}}
	for _, backlog := range backlogs {
		runs := by[backlog]
		label := fmt.Sprintf("isolation: flowing table beside a missing topic with %s events queued", thousands(backlog))
		of := fmt.Sprintf("median of %d rounds, each run against the runs with none queued either side", len(runs))
		if len(runs) == 1 {
			of = "one run against the runs with none queued either side"
		}
		var p99Rounds, drainRounds []float64
		for _, run := range runs {
			before, ok1 := noneByRound[run.Round]
			after, ok2 := noneByRound[run.Round+1]
			if ok1 && ok2 {
				p99Rounds = append(p99Rounds, 2*run.Latency/(before.Latency+after.Latency))
				drainRounds = append(drainRounds, 2*run.DrainPerSec/(before.DrainPerSec+after.DrainPerSec))
			}
		}
		if len(p99Rounds) == 0 {
			continue // a report cut short
		}
		spread := func(xs []float64, format string) string {
			if len(xs) < 2 {
				return ""
			}
			return fmt.Sprintf("; rounds "+format+"–"+format, slices.Min(xs), slices.Max(xs))
		}
		p99Ratio, drainRatio := median(p99Rounds), median(drainRounds)
		rows = append(rows,
			check(label+": p99 ÷ none queued ("+of+")",
				fmt.Sprintf("p50 / p99 %.1f / %.1f ms%s, %d missing (%.2f×%s)", median(col(runs, p50)), median(col(runs, p99)), medianOf(len(runs)), missing(runs), p99Ratio, spread(p99Rounds, "%.2f×")),
				fmt.Sprintf("≤ %.0f×", targetIsolationP99), p99Ratio <= targetIsolationP99 && missing(runs) == 0),
			check(label+": drain ÷ none queued ("+of+")",
				fmt.Sprintf("%s drained at %s%s, %s (%.2f%s)", bursts, perSec(median(col(runs, drain)), "events"), medianOf(len(runs)), reads(runs), drainRatio, spread(drainRounds, "%.2f")),
				"≥ "+percent(targetIsolationDrain), drainRatio >= targetIsolationDrain),
			row{Measure: label + ": one count of the paused table's queued events, as its pause line and each reminder (every 30 s) make it, outside the latency windows",
				Value: fmt.Sprintf("%.0f ms%s", median(col(runs, func(r isolationRun) float64 { return r.CountMs })), medianOf(len(runs)))})
	}
	return rows
}
