package shipper

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// PausedTable is a table whose events wait in the queue because its target
// failed, as Shipper.Paused reports it.
type PausedTable struct {
	Table outbox.Table
	// Topic is the target that failed: the Kafka topic, or what the sink
	// made of it.
	Topic string
	// Since is when the table's events first failed in this episode.
	Since time.Time
	// RetryAt is when the shipper next tries the table's events; with a
	// sink that looks targets up itself (Kafka), when it next asks it.
	RetryAt time.Time
	// Err is the last failure.
	Err error
}

// reminderInterval is how often a table that stays paused is logged again.
const reminderInterval = 30 * time.Second

// pauses holds the tables whose events failed, shared by the workers: one
// failure episode of a table is one pause, and one error line, however many
// workers and batches meet it. A paused table's events stay queued and are
// left out of every claim until its retry time, so that they cost the other
// tables nothing, neither a worker nor a claim held open.
type pauses struct {
	sink   Sink
	queue  *outbox.Queue
	logger *slog.Logger
	// logs are written in order by one goroutine, which counts the table's
	// queued events first: that count reads the queue, and a worker must
	// not wait for it.
	logs chan pauseLog

	mu     sync.Mutex
	tables map[outbox.Table]*pause
}

type pause struct {
	topic    string
	since    time.Time
	err      error
	failures int
	retryAt  time.Time
	remindAt time.Time
	// askSink is set when the sink said the target itself is unavailable
	// and can tell when it is back (TargetChecker): at the retry time the
	// sink is asked first, and the table stays paused while the answer is
	// no, at no cost of a claim.
	askSink bool
}

type pauseLog struct {
	at    time.Time
	level slog.Level
	msg   string
	table outbox.Table
	attrs []slog.Attr
}

func newPauses(sink Sink, queue *outbox.Queue, logger *slog.Logger) *pauses {
	return &pauses{sink: sink, queue: queue, logger: logger, logs: make(chan pauseLog, 256), tables: make(map[outbox.Table]*pause)}
}

// run writes the log lines until ctx ends and none are left.
func (p *pauses) run(ctx context.Context) {
	for {
		select {
		case l := <-p.logs:
			p.write(ctx, p.withWaiting(l))
		case <-ctx.Done():
			if lines := p.withWaiting(); len(lines) > 0 {
				p.write(context.WithoutCancel(ctx), lines)
			}
			return
		}
	}
}

// withWaiting returns lines and the lines waiting behind them, which are
// counted and written together: tables paused by one outage have their
// lines at once, and their events counted in one read of the queue.
func (p *pauses) withWaiting(lines ...pauseLog) []pauseLog {
	for {
		select {
		case l := <-p.logs:
			lines = append(lines, l)
		default:
			return lines
		}
	}
}

func (p *pauses) write(ctx context.Context, lines []pauseLog) {
	var queued map[outbox.Table]int64
	if p.queue != nil {
		tables := make([]outbox.Table, 0, len(lines))
		for _, l := range lines {
			if !slices.Contains(tables, l.table) {
				tables = append(tables, l.table)
			}
		}
		countCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		queued, _ = p.queue.QueuedOfEach(countCtx, tables) // a line without its count still tells
		cancel()
	}
	h := p.logger.Handler()
	for _, l := range lines {
		attrs := append([]slog.Attr{slog.String("table", l.table.Schema+"."+l.table.Name)}, l.attrs...)
		if n, ok := queued[l.table]; ok {
			attrs = append(attrs, slog.Int64("queued", n))
		}
		// Stamped with when it happened, not when the count was done.
		r := slog.NewRecord(l.at, l.level, l.msg, 0)
		r.AddAttrs(attrs...)
		if h.Enabled(ctx, l.level) {
			_ = h.Handle(context.WithoutCancel(ctx), r)
		}
	}
}

func (p *pauses) log(level slog.Level, msg string, t outbox.Table, attrs ...slog.Attr) {
	select {
	case p.logs <- pauseLog{time.Now(), level, msg, t, attrs}:
	default:
		// Hundreds of tables changing state at once: the line is dropped
		// rather than a worker held; Shipper.Paused still tells.
	}
}

// except returns the tables to leave out of a claim made now. A table past
// its retry time is let through, unless the sink says its target is still
// unavailable, in which case it waits for the sink's next look.
func (p *pauses) except(now time.Time) []outbox.Table {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []outbox.Table
	checker, _ := p.sink.(TargetChecker)
	for t, ps := range p.tables {
		if !now.Before(ps.retryAt) && ps.askSink && checker != nil {
			if err := checker.TargetReady(ps.topic); err != nil {
				ps.err = err
				ps.retryAt = now.Add(retryDelay(err, minRetryDelay))
			}
		}
		if now.Before(ps.retryAt) {
			out = append(out, t)
		}
		if !now.Before(ps.remindAt) {
			ps.remindAt = now.Add(reminderInterval)
			p.log(slog.LevelWarn, "table still paused: its events stay queued", t,
				slog.String("topic", ps.topic), slog.Duration("paused_for", now.Sub(ps.since).Round(time.Millisecond)),
				slog.Duration("retry_in", max(ps.retryAt.Sub(now), 0).Round(time.Millisecond)), slog.Any("error", ps.err))
		}
	}
	return out
}

// failed records that events of t, claimed at claimed, failed with err.
// The first failure of an episode is logged; a failure of a batch claimed
// before the table's last retry time, by another worker, changes nothing,
// so that the retry time logged stays the real one.
func (p *pauses) failed(t outbox.Table, topic string, err error, claimed time.Time) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := p.tables[t]
	if ps != nil && claimed.Before(ps.retryAt) && now.Before(ps.retryAt) {
		return
	}
	first := ps == nil
	if first {
		ps = &pause{topic: topic, since: now, remindAt: now.Add(reminderInterval)}
		p.tables[t] = ps
	}
	delay := backoff(ps.failures)
	ps.failures++
	ps.topic, ps.err = topic, err
	_, ps.askSink = errors.AsType[*UnavailableError](err)
	delay = retryDelay(err, delay)
	ps.retryAt = now.Add(delay)
	if first {
		p.log(slog.LevelError, "table paused: its events are not shipped and stay queued; other tables go on", t,
			slog.String("topic", topic), slog.Duration("retry_in", delay.Round(time.Millisecond)), slog.Any("error", err))
	}
}

// succeeded records that events of t, claimed at claimed, went through,
// which ends t's pause if the claim was made after the pause began.
func (p *pauses) succeeded(t outbox.Table, claimed time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := p.tables[t]
	if ps == nil || claimed.Before(ps.since) {
		return
	}
	delete(p.tables, t)
	p.log(slog.LevelInfo, "table flowing again: its events are shipped", t,
		slog.String("topic", ps.topic), slog.Duration("paused_for", time.Since(ps.since).Round(time.Millisecond)))
}

func (p *pauses) isPaused(t outbox.Table) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tables[t] != nil
}

func (p *pauses) list() []PausedTable {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PausedTable, 0, len(p.tables))
	for t, ps := range p.tables {
		out = append(out, PausedTable{Table: t, Topic: ps.topic, Since: ps.since, RetryAt: ps.retryAt, Err: ps.err})
	}
	return out
}

// retryDelay is the wait an *UnavailableError asks for, or d.
func retryDelay(err error, d time.Duration) time.Duration {
	if u, ok := errors.AsType[*UnavailableError](err); ok && u.RetryAfter > 0 {
		return u.RetryAfter
	}
	return d
}
