// Package shipper moves change events from the outbox to a destination:
// claim a batch, encode it, send it to a Sink, delete what the sink
// acknowledged, commit, and again.
package shipper

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// Config tunes a Shipper. Zero values take the defaults stated.
type Config struct {
	// Database names the topics: pg2kafka.<Database>.<table>. Required.
	Database string
	// TopicNamespace, if set, is inserted after "pg2kafka." in every topic.
	TopicNamespace string
	// BatchSize is the most events claimed and sent at once. Default 1000.
	BatchSize int
	// PollInterval is how long the shipper waits before looking again when
	// the queue had less than a full batch. Default 100ms.
	PollInterval time.Duration
	// SendTimeout bounds how long one batch may wait for its destination,
	// and so how long its claim transaction stays open. Default 30s.
	SendTimeout time.Duration
	// ShutdownTimeout is how long, after shutdown is asked for, the batch in
	// flight may still wait for its acknowledgements before it is rolled
	// back. Default 5s.
	ShutdownTimeout time.Duration
	// Logger receives the shipper's logs. Default: discard.
	Logger *slog.Logger
}

func (c *Config) withDefaults() Config {
	out := *c
	if out.BatchSize <= 0 {
		out.BatchSize = 1000
	}
	if out.PollInterval <= 0 {
		out.PollInterval = 100 * time.Millisecond
	}
	if out.SendTimeout <= 0 {
		out.SendTimeout = 30 * time.Second
	}
	if out.ShutdownTimeout <= 0 {
		out.ShutdownTimeout = 5 * time.Second
	}
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	return out
}

// Shipper drains the outbox into a Sink. One goroutine runs it.
type Shipper struct {
	cfg    Config
	queue  *outbox.Queue
	sink   Sink
	logger *slog.Logger

	topics map[outbox.Table]string
	// paused holds the tables whose last events failed, until their retry
	// time: their events stay queued while other tables keep flowing.
	paused map[outbox.Table]*retryState
	// dbRetry backs off after database errors, which stop every table.
	dbRetry retryState
}

// New returns a shipper from queue to sink.
func New(cfg Config, queue *outbox.Queue, sink Sink) *Shipper {
	cfg = cfg.withDefaults()
	return &Shipper{
		cfg:    cfg,
		queue:  queue,
		sink:   sink,
		logger: cfg.Logger,
		topics: make(map[outbox.Table]string),
		paused: make(map[outbox.Table]*retryState),
	}
}

// Run ships until ctx ends, then returns nil once the batch in flight is
// settled. Errors of the database or the destination are logged and retried
// with backoff; none ends Run, and none loses an event.
func (s *Shipper) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		full, err := s.shipBatch(ctx)
		switch {
		case ctx.Err() != nil:
		case err != nil:
			delay := s.dbRetry.fail()
			s.logger.Error("shipping stopped by a database error; retrying", slog.Any("error", err), slog.Duration("retry_in", delay))
			sleep(ctx, delay)
		case full:
			// More is probably waiting: claim again at once.
		default:
			sleep(ctx, s.cfg.PollInterval)
		}
	}
	return nil
}

// shipBatch ships one batch and reports whether it was full.
func (s *Shipper) shipBatch(ctx context.Context) (full bool, err error) {
	batch, err := s.queue.Claim(ctx, s.cfg.BatchSize, s.pausedTables())
	if err != nil {
		return false, err
	}
	s.dbRetry.succeed()
	if len(batch.Events) == 0 {
		return false, batch.Rollback(ctx)
	}

	msgs, ids, err := s.encode(batch.Events)
	if err != nil {
		_ = batch.Rollback(context.WithoutCancel(ctx))
		return false, err
	}

	// The batch is sent even if shutdown begins meanwhile, so that what the
	// destination acknowledges can still be deleted; but only for
	// ShutdownTimeout after that, so shutdown stays prompt when the
	// destination is down.
	sendCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.SendTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(s.cfg.ShutdownTimeout, cancel) })
	defer stop()

	errs := s.sink.Send(sendCtx, msgs)
	acked := ids[:0:0]
	failures := make(map[outbox.Table]failure)
	for i, err := range errs {
		if err == nil {
			acked = append(acked, ids[i])
			continue
		}
		t := batch.Events[i].Table()
		f := failures[t]
		if f.err == nil {
			f.err = err
		}
		f.events++
		failures[t] = f
	}

	// Deleting what was acknowledged must survive shutdown: an acknowledged
	// event left in the queue would be shipped twice.
	completeCtx, cancelComplete := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancelComplete()
	if err := batch.Complete(completeCtx, acked); err != nil {
		return false, err
	}

	s.noteResults(batch.Events, errs, failures)
	return len(batch.Events) == s.cfg.BatchSize, nil
}

type failure struct {
	err    error
	events int
}

func (s *Shipper) encode(events []outbox.Event) ([]Message, []int64, error) {
	size := 0
	for i := range events {
		size += len(events[i].Data) + 160
	}
	arena := make([]byte, 0, size)
	msgs := make([]Message, len(events))
	ids := make([]int64, len(events))
	for i := range events {
		e := &events[i]
		start := len(arena)
		var err error
		if arena, err = appendEvent(arena, e); err != nil {
			return nil, nil, err
		}
		msgs[i] = Message{
			Topic:     s.topic(e.Table()),
			Value:     arena[start:len(arena):len(arena)],
			Timestamp: e.CreatedAt,
		}
		if e.ExternalID != nil {
			msgs[i].Key = []byte(*e.ExternalID)
		}
		ids[i] = e.ID
	}
	return msgs, ids, nil
}

func (s *Shipper) topic(t outbox.Table) string {
	topic, ok := s.topics[t]
	if !ok {
		topic = TopicName(s.cfg.TopicNamespace, s.cfg.Database, t)
		s.topics[t] = topic
	}
	return topic
}

// noteResults pauses the tables whose events failed and resumes those whose
// events went through.
func (s *Shipper) noteResults(events []outbox.Event, errs []error, failures map[outbox.Table]failure) {
	for i := range events {
		if errs[i] != nil {
			continue
		}
		t := events[i].Table()
		if _, ok := s.paused[t]; ok && failures[t].err == nil {
			delete(s.paused, t)
			s.logger.Info("table's events are flowing again", slog.String("table", t.Schema+"."+t.Name))
		}
	}
	for t, f := range failures {
		r := s.paused[t]
		if r == nil {
			r = &retryState{}
			s.paused[t] = r
		}
		delay := r.fail()
		s.logger.Error("events not shipped; they stay queued and will be retried",
			slog.String("table", t.Schema+"."+t.Name),
			slog.String("topic", s.topic(t)),
			slog.Int("events", f.events),
			slog.Duration("retry_in", delay),
			slog.Any("error", f.err))
	}
}

// pausedTables returns the tables still waiting for their retry time.
func (s *Shipper) pausedTables() []outbox.Table {
	var tables []outbox.Table
	now := time.Now()
	for t, r := range s.paused {
		if now.Before(r.retryAt) {
			tables = append(tables, t)
		}
	}
	return tables
}

// retryState is an exponential backoff with jitter: 100ms doubling to 30s,
// each delay drawn from its upper half so that replicas spread out.
type retryState struct {
	failures int
	retryAt  time.Time
}

const (
	minRetryDelay = 100 * time.Millisecond
	maxRetryDelay = 30 * time.Second
)

func (r *retryState) fail() time.Duration {
	d := minRetryDelay << min(r.failures, 16)
	d = min(d, maxRetryDelay)
	r.failures++
	d = d/2 + rand.N(d/2+1)
	r.retryAt = time.Now().Add(d)
	return d
}

func (r *retryState) succeed() { r.failures = 0 }

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
