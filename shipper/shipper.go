// Package shipper moves change events from the outbox to a destination:
// claim a batch, encode it, send it to a Sink, delete what the sink
// acknowledged, commit, and again.
package shipper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// Config tunes a Shipper. Zero values take the defaults stated.
type Config struct {
	// Database names the topics: pg2kafka.<Database>.<table>. Required.
	Database string
	// TopicNamespace, if set, is inserted after "pg2kafka." in every topic.
	TopicNamespace string
	// BatchSize is the most events claimed and sent at once. Default 5000.
	BatchSize int
	// BatchBytes bounds a batch's event data, by claiming fewer events when
	// they are large, so that memory stays bounded whatever the rows hold.
	// Default 4 MiB.
	BatchBytes int
	// Workers is how many batches are in flight at once, each from its own
	// share of the lanes over its own connection. Default 2.
	Workers int
	// PollInterval is how often the shipper's watcher checks, inside
	// Postgres, whether event ids were handed out (outbox.Queue.Watch): the
	// workers of an idle shipper wait for its news rather than polling. It is
	// also the longest a worker waits before claiming again when it found
	// its lanes empty while an event id it could find was handed out, or
	// while the watcher cannot wait: the wait starts at 1ms and doubles
	// while they stay empty. After any event a worker looks again at once.
	// Default 20ms.
	PollInterval time.Duration
	// RebalanceInterval is how often a worker checks that it owns its fair
	// share of the lanes, which is also how soon the lanes of a shipper that
	// died are taken over. Default 1s, or LaneTakeoverTimeout/5 if that is
	// shorter.
	RebalanceInterval time.Duration
	// LaneTakeoverTimeout bounds how long the lanes of a shipper that
	// stopped (frozen, or cut off from Postgres) stay its own: Postgres ends
	// its sessions once they have been silent for half of it, and the other
	// shippers take the lanes at their next rebalance. A worker that is
	// only waiting (for events, to retry, for its destination) keeps its
	// session alive meanwhile. Default 10s.
	LaneTakeoverTimeout time.Duration
	// SendTimeout bounds how long one batch may wait for its destination,
	// and so how long its claim transaction stays open. Default 30s.
	SendTimeout time.Duration
	// ShutdownTimeout is how long, after shutdown is asked for, the batch in
	// flight may still wait for its acknowledgements before it is rolled
	// back. Default 5s.
	ShutdownTimeout time.Duration
	// Format is the shape of every record's value. Default FormatPg2kafka.
	Format Format
	// DebeziumTombstones follows each DELETE event that has a key with a
	// record of the same key and a null value, for compacted topics. Only
	// with FormatDebezium. Default false.
	DebeziumTombstones bool
	// Version is pg2kafka's version, which FormatDebezium's source names.
	// Default: the binary's module version, or "dev".
	Version string
	// Logger receives the shipper's logs. Default: discard.
	Logger *slog.Logger
	// OnSettled, if set, is called by a worker after each batch it shipped
	// is settled, before it claims the next. It must return at once, as
	// the worker waits for it, and must not keep the Settled's slices,
	// which the worker reuses. Default: none.
	OnSettled func(*Settled)
}

func (c *Config) withDefaults() Config {
	out := *c
	if out.BatchSize <= 0 {
		out.BatchSize = 5000
	}
	if out.BatchBytes <= 0 {
		out.BatchBytes = 4 << 20
	}
	if out.Workers <= 0 {
		out.Workers = 2
	}
	if out.PollInterval <= 0 {
		out.PollInterval = 20 * time.Millisecond
	}
	if out.LaneTakeoverTimeout <= 0 {
		out.LaneTakeoverTimeout = outbox.DefaultLaneTakeoverTimeout
	}
	if out.RebalanceInterval <= 0 {
		out.RebalanceInterval = min(time.Second, out.LaneTakeoverTimeout/5)
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
	if out.Version == "" {
		out.Version = buildVersion()
	}
	return out
}

// Shipper drains the outbox into a Sink with several workers.
type Shipper struct {
	cfg   Config
	queue *outbox.Queue
	sink  Sink
	// deadLettered counts the events moved to the dead-letter table.
	deadLettered atomic.Int64
	running      atomic.Bool
	workers      atomic.Pointer[[]*worker]
	pauses       *pauses
}

// New returns a shipper from queue to sink.
func New(cfg Config, queue *outbox.Queue, sink Sink) *Shipper {
	cfg = cfg.withDefaults()
	return &Shipper{cfg: cfg, queue: queue, sink: sink, pauses: newPauses(sink, queue, cfg.Logger)}
}

// Paused returns the tables whose events wait because their target failed,
// with the target, since when, and why. Safe to call from any goroutine.
func (s *Shipper) Paused() []PausedTable { return s.pauses.list() }

// DeadLettered returns how many events the shipper has moved to the
// dead-letter table since it was made.
func (s *Shipper) DeadLettered() int64 { return s.deadLettered.Load() }

// Run ships until ctx ends, then returns nil once the batches in flight are
// settled. Errors of the database or the destination are logged and retried
// with backoff; none ends Run, and none loses an event. Only shippers of
// another kind of destination on the same queue do: Run returns their
// *outbox.DestinationConflictError at once.
func (s *Shipper) Run(ctx context.Context) error {
	registry := &tables{queue: s.queue}
	if s.cfg.Format != FormatPg2kafka {
		registry.warnIncomplete(ctx, s.cfg.Format, s.cfg.Logger)
	}
	var workers []*worker
	for i := range s.cfg.Workers {
		w := &worker{
			cfg:     s.cfg,
			claimer: s.queue.NewClaimer(s.cfg.Logger.With(slog.Int("worker", i)), s.cfg.LaneTakeoverTimeout),
			sink:    s.sink,
			logger:  s.cfg.Logger.With(slog.Int("worker", i)),
			topics:  make(map[outbox.Table]string),
			pauses:  s.pauses,
			tables:  registry,

			deadLettered: &s.deadLettered,
		}
		// Counted among the shippers before any takes lanes, the workers
		// each take their share in their first round. One that cannot
		// join now keeps trying in its loop, unless the shippers it would
		// join ship elsewhere: that needs someone to decide.
		err := w.claimer.Join(ctx)
		if conflict, ok := errors.AsType[*outbox.DestinationConflictError](err); ok {
			for _, w := range append(workers, w) {
				w.claimer.Close(context.WithoutCancel(ctx))
			}
			return conflict
		}
		if err != nil && ctx.Err() == nil {
			w.logger.Warn("could not join the shippers yet; retrying", slog.Any("error", err))
			w.state.note(nil, err)
		}
		workers = append(workers, w)
	}
	s.workers.Store(&workers)
	s.running.Store(true)
	defer s.running.Store(false)
	logsDone := make(chan struct{})
	logCtx, stopLogs := context.WithCancel(context.WithoutCancel(ctx))
	go func() { defer close(logsDone); s.pauses.run(logCtx) }()
	watchDone := make(chan struct{})
	watchCtx, stopWatching := context.WithCancel(ctx)
	go func() {
		defer close(watchDone)
		s.queue.Watch(watchCtx, s.cfg.PollInterval, s.cfg.Logger.With(slog.String("component", "watch")))
	}()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { w.run(ctx) })
	}
	wg.Wait()
	stopWatching()
	<-watchDone
	stopLogs()
	<-logsDone
	return nil
}

// worker is one claim → send → settle loop over its share of the lanes.
type worker struct {
	cfg     Config
	claimer *outbox.Claimer
	sink    Sink
	logger  *slog.Logger

	topics map[outbox.Table]string
	// tableHeaders holds each table's HeaderTable value.
	tableHeaders map[outbox.Table][]byte
	// pauses holds the tables whose last events failed, shared by all
	// workers: their events stay queued while other tables keep flowing.
	pauses *pauses
	// dbRetry backs off after database errors, which stop the worker.
	dbRetry       retryState
	lastRebalance time.Time
	// eventBytes estimates an event's size, to keep batches under
	// BatchBytes.
	eventBytes float64
	// balanced is false while the worker is owed lanes that others are
	// releasing; it then rebalances on every step rather than every
	// RebalanceInterval, so that handing lanes over takes milliseconds.
	balanced bool
	// nothingPending is set by a step whose look found no event id handed
	// out that its claim could find, with no table paused.
	nothingPending bool
	deadLettered   *atomic.Int64
	// state is what State reports of the worker; failed is true after a
	// step that met a database error, until one that did not.
	state  workerState
	failed bool
	// tables is the registry of tracked tables, for formats that need it.
	tables *tables
}

// minPollInterval is the first wait after a claim finds nothing. The waits
// double while claims keep finding nothing, up to PollInterval: under steady
// traffic a lane is only briefly empty and its next events wait a
// millisecond or two, while an idle queue is polled every PollInterval.
const minPollInterval = time.Millisecond

// lookAfterWait is the wait after which a worker looks at the id sequence
// before it claims (outbox.Claimer.Pending): it has found nothing for twice
// that long, so the claim most likely would not either, and the look costs
// half as much. Sooner, under steady traffic, the look would only delay
// the claim that finds the next events.
const lookAfterWait = 8 * time.Millisecond

func (w *worker) run(ctx context.Context) {
	defer w.claimer.Close(context.WithoutCancel(ctx))
	idle := minPollInterval
	waited := time.Duration(0)
	woken := false
	for ctx.Err() == nil {
		// Woken by news of events, it claims at once.
		claimed, err := w.step(ctx, waited >= min(lookAfterWait, w.cfg.PollInterval) && !woken)
		waited, woken = 0, false
		if err != nil && ctx.Err() == nil {
			w.state.note(nil, err)
			w.failed = true
		} else if w.failed && err == nil {
			w.state.note(w.claimer.Lanes(), nil)
			w.failed = false
		}
		switch {
		case ctx.Err() != nil:
		case err != nil:
			delay := w.dbRetry.fail()
			w.logger.Error("shipping stopped by a database error; retrying", slog.Any("error", err), slog.Duration("retry_in", delay))
			w.wait(ctx, delay)
		case claimed == 0 && w.nothingPending && w.balanced && w.claimer.Watched():
			// No event id a claim could find has been handed out, and the
			// queue's watcher will say when one is: until then there is
			// nothing to do but the next rebalance.
			waited = time.Until(w.lastRebalance.Add(w.cfg.RebalanceInterval))
			if woken = w.waitOrWake(ctx, waited, w.claimer.Advanced()); woken {
				idle = minPollInterval
			}
		case claimed == 0:
			waited = min(idle, w.cfg.PollInterval)
			var advanced <-chan struct{}
			if waited >= min(lookAfterWait, w.cfg.PollInterval) {
				// The next step looks first: news of events, from the
				// watcher or another worker's look, answers it sooner.
				advanced = w.claimer.Advanced()
			}
			if woken = w.waitOrWake(ctx, waited, advanced); woken {
				idle = minPollInterval
			} else {
				idle = min(2*idle, w.cfg.PollInterval)
			}
		default:
			idle = minPollInterval
		}
	}
}

// step rebalances the lanes when it is time, then ships one batch, and
// returns how many events it claimed. With look, it first asks whether the
// queue holds anything a claim could find, and claims only if so.
func (w *worker) step(ctx context.Context, look bool) (int, error) {
	if !w.balanced || time.Since(w.lastRebalance) >= w.cfg.RebalanceInterval {
		balanced, err := w.claimer.Rebalance(ctx)
		if err != nil {
			return 0, err
		}
		w.balanced, w.lastRebalance = balanced, time.Now()
		w.state.note(w.claimer.Lanes(), nil)
	}
	return w.shipBatch(ctx, look)
}

// shipBatch ships one batch and returns how many events it claimed; with
// look, only if the queue may hold any.
func (w *worker) shipBatch(ctx context.Context, look bool) (int, error) {
	claimStart := time.Now()
	except := w.pauses.except(claimStart)
	w.nothingPending = false
	if look {
		pending, err := w.claimer.Pending(ctx, except)
		if err != nil || !pending {
			// A paused table's retry comes with no news of events: while
			// one waits for it, the worker keeps looking by itself.
			w.nothingPending = err == nil && len(except) == 0
			return 0, err
		}
	}
	batch, err := w.claimer.Claim(ctx, w.batchLimit(), except)
	if err != nil {
		return 0, err
	}
	w.dbRetry.succeed()
	if len(batch.Events) == 0 {
		return 0, batch.Rollback(ctx)
	}
	claimed := time.Now()
	w.noteEventSizes(batch.Events)
	if w.cfg.Format == FormatPgevents {
		// Its id is the key column's value: the registry names the column.
		if err := w.tables.cover(ctx, batch.Events); err != nil {
			return 0, errors.Join(err, batch.Rollback(ctx))
		}
	}

	msgs, ids, firsts := w.encode(batch.Events)

	// The batch is sent even if shutdown begins meanwhile, so that what the
	// destination acknowledges can still be deleted; but only for
	// ShutdownTimeout after that, so shutdown stays prompt when the
	// destination is down.
	sendCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.SendTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(w.cfg.ShutdownTimeout, cancel) })
	defer stop()

	sendStart := time.Now()
	errs := w.send(sendCtx, msgs)
	sent := time.Since(sendStart)
	if firsts != nil {
		msgs, errs = perEvent(msgs, errs, firsts)
	}
	acked := ids[:0:0]
	var deadLetters []outbox.DeadLetter
	var refused []int
	failures := make(map[outbox.Table]failure)
	for i, err := range errs {
		if err == nil {
			acked = append(acked, ids[i])
			continue
		}
		if r, ok := errors.AsType[*RejectedError](err); ok {
			deadLetters = append(deadLetters, outbox.DeadLetter{
				ID: ids[i], Error: r.Err.Error(), Attempts: r.Attempts,
				FirstFailedAt: r.FirstFailedAt, LastFailedAt: r.LastFailedAt,
			})
			refused = append(refused, i)
			continue
		}
		t := batch.Events[i].Table()
		f := failures[t]
		if f.err == nil {
			f.err, f.topic = err, msgs[i].Topic
		}
		f.events++
		failures[t] = f
	}

	// Deleting what was acknowledged must survive shutdown: an acknowledged
	// event left in the queue would be shipped twice.
	completeCtx, cancelComplete := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancelComplete()
	if err := batch.Complete(completeCtx, acked, deadLetters...); err != nil {
		return 0, err
	}

	if w.cfg.OnSettled != nil {
		w.cfg.OnSettled(&Settled{
			Events: batch.Events, Messages: msgs, Errs: errs,
			Claimed: claimStart, Acknowledged: sendStart.Add(sent), Committed: time.Now(),
		})
	}
	w.noteDeadLetters(batch.Events, msgs, errs, refused)
	w.noteResults(batch.Events, errs, failures, claimStart)
	w.logger.Debug("batch shipped", slog.Int("events", len(batch.Events)), slog.Int("acknowledged", len(acked)),
		slog.Int("dead_lettered", len(deadLetters)), slog.Duration("send", sent), slog.Duration("total", time.Since(claimStart)))
	if w.logger.Enabled(ctx, slog.LevelDebug) {
		w.logTiming(batch.Events, [timingStages]time.Time{claimStart, claimed, sendStart, sendStart.Add(sent), time.Now()})
	}
	return len(batch.Events), nil
}

// timingStages are the instants logTiming logs of a batch: its claim began,
// the claim returned, the encoded batch went to the sink, the sink answered,
// the outcome was committed.
const timingStages = 5

// TimingMessage is the message of the debug log line that gives, for each
// batch shipped, the instants of its stages in Unix microseconds (claim,
// claimed, sent, acknowledged, committed) and its events' uuids, so that a
// benchmark can tell where an event's time went. It is only built when
// debug logging is on.
const TimingMessage = "batch timing"

func (w *worker) logTiming(events []outbox.Event, at [timingStages]time.Time) {
	uuids := make([]byte, 0, 37*len(events))
	for i := range events {
		if i > 0 {
			uuids = append(uuids, ' ')
		}
		uuids = appendUUID(uuids, events[i].UUID)
	}
	w.logger.Debug(TimingMessage,
		slog.Int64("claim", at[0].UnixMicro()), slog.Int64("claimed", at[1].UnixMicro()),
		slog.Int64("sent", at[2].UnixMicro()), slog.Int64("acknowledged", at[3].UnixMicro()),
		slog.Int64("committed", at[4].UnixMicro()), slog.String("uuids", string(uuids)))
}

// batchLimit is how many events to claim: BatchSize, or fewer if events of
// the size seen lately would exceed BatchBytes.
func (w *worker) batchLimit() int {
	size := w.eventBytes
	if size <= 0 {
		// Nothing seen yet: assume events are large, so that a first batch
		// of large ones cannot overshoot; a few batches teach the truth.
		size = firstGuessEventBytes
	}
	return max(1, min(w.cfg.BatchSize, int(float64(w.cfg.BatchBytes)/size)))
}

// noteEventSizes folds a batch's mean event size into the running estimate,
// weighting the newest batch by a quarter.
func (w *worker) noteEventSizes(events []outbox.Event) {
	total := 0
	for i := range events {
		total += len(events[i].Data)
	}
	mean := float64(total)/float64(len(events)) + eventOverhead
	if w.eventBytes == 0 {
		w.eventBytes = mean
	} else {
		w.eventBytes = 0.75*w.eventBytes + 0.25*mean
	}
}

// firstGuessEventBytes is the event size assumed before any is seen.
const firstGuessEventBytes = 16 << 10

// eventOverhead is roughly what an event costs beyond its data: the JSON
// envelope, the key and the record.
const eventOverhead = 200

type failure struct {
	err    error
	topic  string
	events int
}

// encode builds a message per event, and for DEBEZIUM_TOMBSTONES a
// tombstone after each DELETE with a key. When it adds any, firsts holds
// the index of each event's first message (its event's own), and the
// messages up to the next event's are its; firsts is nil otherwise, each
// message being its event's.
func (w *worker) encode(events []outbox.Event) (msgs []Message, ids []int64, firsts []int) {
	size := 0
	tombstones := 0
	perEvent := 160
	if w.cfg.Format != FormatPg2kafka {
		perEvent += 300 + len(w.cfg.Database)*2
	}
	for i := range events {
		e := &events[i]
		size += len(e.Data) + len(e.Old) + perEvent
		if e.ExternalID != nil {
			size += len(*e.ExternalID)
			if w.cfg.DebeziumTombstones && w.cfg.Format == FormatDebezium && e.Statement == "DELETE" {
				tombstones++
			}
		}
	}
	f := formatter{format: w.cfg.Format, database: w.cfg.Database, version: "pg2kafka-" + w.cfg.Version,
		shippedMs: time.Now().UnixMilli(), keyColumn: w.tables.keyColumn}
	arena := make([]byte, 0, size)
	msgs = make([]Message, 0, len(events)+tombstones)
	ids = make([]int64, len(events))
	if tombstones > 0 {
		firsts = make([]int, len(events))
	}
	headers := make([]Header, 3*len(events))
	for i := range events {
		e := &events[i]
		ids[i] = e.ID
		if e.Statement == outbox.StatementEvent {
			// The application's own record, in every format.
			var m Message
			m, arena = w.encodeEmitted(arena, e)
			if firsts != nil {
				firsts[i] = len(msgs)
			}
			msgs = append(msgs, m)
			continue
		}
		// A topic chosen in setup() travels with the event, so that
		// changing it does not move events already queued.
		topic := w.topic(e.Table())
		if e.Topic != nil {
			topic = *e.Topic
		}
		start := len(arena)
		var value, eventID []byte
		if w.cfg.Format == FormatPg2kafka {
			arena = appendEvent(arena, e)
			value = arena[start:len(arena):len(arena)]
			eventID = value[uuidOffset : uuidOffset+36 : uuidOffset+36]
		} else {
			arena = f.appendValue(arena, e, topic)
			value = arena[start:len(arena):len(arena)]
			start = len(arena)
			arena = appendUUID(arena, e.UUID)
			eventID = arena[start:len(arena):len(arena)]
		}
		h := headers[3*i : 3*i+3 : 3*i+3]
		h[0] = Header{HeaderEventID, eventID}
		h[1] = Header{HeaderStatement, statementValues[e.Statement]}
		h[2] = Header{HeaderTable, w.tableHeader(e.Table())}
		m := Message{
			Topic:       topic,
			TopicChosen: e.Topic != nil,
			Value:       value,
			Headers:     h,
			Timestamp:   e.CreatedAt,
		}
		if e.ExternalID != nil {
			start := len(arena)
			arena = append(arena, *e.ExternalID...)
			m.Key = arena[start:len(arena):len(arena)]
		}
		if firsts != nil {
			firsts[i] = len(msgs)
		}
		msgs = append(msgs, m)
		// Right after its DELETE, so that a later event of the key, in
		// this batch or after, comes after it.
		if m.Key != nil && tombstones > 0 && e.Statement == "DELETE" {
			msgs = append(msgs, Message{Topic: topic, TopicChosen: m.TopicChosen, Key: m.Key, Headers: h, Timestamp: e.CreatedAt})
		}
	}
	return msgs, ids, firsts
}

// perEvent folds the results of messages into those of their events, as
// firsts (see encode) groups them: an event is acknowledged once all its
// messages are, and otherwise fails with its first message's error that
// is not nil. It returns each event's own message beside its result.
func perEvent(msgs []Message, errs []error, firsts []int) ([]Message, []error) {
	own := make([]Message, len(firsts))
	results := make([]error, len(firsts))
	for i, first := range firsts {
		end := len(msgs)
		if i+1 < len(firsts) {
			end = firsts[i+1]
		}
		own[i] = msgs[first]
		for _, err := range errs[first:end] {
			if err != nil {
				results[i] = err
				break
			}
		}
	}
	return own, results
}

func (w *worker) tableHeader(t outbox.Table) []byte {
	h, ok := w.tableHeaders[t]
	if !ok {
		if w.tableHeaders == nil {
			w.tableHeaders = make(map[outbox.Table][]byte)
		}
		h = []byte(t.Schema + "." + t.Name)
		w.tableHeaders[t] = h
	}
	return h
}

func (w *worker) topic(t outbox.Table) string {
	topic, ok := w.topics[t]
	if !ok {
		topic = TopicName(w.cfg.TopicNamespace, w.cfg.Database, t)
		w.topics[t] = topic
	}
	return topic
}

// noteDeadLetters logs and counts the events at the given indexes, which
// the batch has moved to the dead-letter table.
func (w *worker) noteDeadLetters(events []outbox.Event, msgs []Message, errs []error, refused []int) {
	for _, i := range refused {
		e := &events[i]
		r, _ := errors.AsType[*RejectedError](errs[i])
		externalID := slog.Any("external_id", nil)
		if e.ExternalID != nil {
			externalID = slog.String("external_id", *e.ExternalID)
		}
		w.deadLettered.Add(1)
		w.logger.Error("event moved to the dead-letter table: the destination refuses it",
			slog.String("table", e.TableSchema+"."+e.TableName),
			slog.String("topic", msgs[i].Topic),
			slog.Int64("event_id", e.ID),
			slog.String("event_uuid", e.UUID.String()),
			externalID,
			slog.Int("attempts", r.Attempts),
			slog.Any("error", r.Err),
			slog.String("requeue", fmt.Sprintf("SELECT pg2kafka.requeue_dead_letters(ARRAY[%d])", e.ID)))
	}
}

// noteResults pauses the tables whose events failed and resumes those whose
// events went through, in the pauses all workers share.
func (w *worker) noteResults(events []outbox.Event, errs []error, failures map[outbox.Table]failure, claimed time.Time) {
	var last outbox.Table
	for i := range events {
		if errs[i] != nil {
			continue
		}
		t := events[i].Table()
		if t == last {
			continue
		}
		last = t
		if _, failed := failures[t]; !failed && w.pauses.isPaused(t) {
			w.pauses.succeeded(t, claimed)
		}
	}
	for t, f := range failures {
		w.pauses.failed(t, f.topic, f.err, claimed)
		w.logger.Debug("events not shipped; they stay queued", slog.String("table", t.Schema+"."+t.Name),
			slog.String("topic", f.topic), slog.Int("events", f.events), slog.Time("claimed", claimed), slog.Any("error", f.err))
	}
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
	d := backoff(r.failures)
	r.failures++
	r.retryAt = time.Now().Add(d)
	return d
}

// backoff is the delay after n failures in a row: 100ms doubling to 30s,
// drawn from the upper half of that.
func backoff(n int) time.Duration {
	d := min(minRetryDelay<<min(n, 16), maxRetryDelay)
	return d/2 + rand.N(d/2+1)
}

func (r *retryState) succeed() { r.failures = 0 }

// wait waits for d or until ctx ends, keeping the worker's session, and with
// it its lanes, alive meanwhile: only a worker that stopped altogether must
// lose them.
func (w *worker) wait(ctx context.Context, d time.Duration) { w.waitOrWake(ctx, d, nil) }

// waitOrWake is wait that ends early, and says so, once wake is closed.
func (w *worker) waitOrWake(ctx context.Context, d time.Duration, wake <-chan struct{}) (woken bool) {
	for end := time.Now().Add(d); ctx.Err() == nil; {
		left := time.Until(end)
		if left <= 0 {
			return false
		}
		if !sleep(ctx, min(left, w.claimer.KeepAliveInterval()), wake) {
			return ctx.Err() == nil
		}
		if ctx.Err() != nil {
			return false
		}
		// A session that is gone is found, and its loss logged, by the
		// next claim.
		_ = w.claimer.KeepAlive(ctx)
	}
	return false
}

// send sends msgs while keeping the batch's claim alive: a claim that
// waits for its destination in silence would be ended by Postgres after
// half of LaneTakeoverTimeout, which SEND_TIMEOUT may well exceed. The sink
// works on a goroutine of its own, as the claimer's connection is the
// worker's alone.
func (w *worker) send(ctx context.Context, msgs []Message) []error {
	done := make(chan []error, 1)
	go func() { done <- w.sink.Send(ctx, msgs) }()
	tick := time.NewTicker(w.claimer.KeepAliveInterval())
	defer tick.Stop()
	for {
		select {
		case errs := <-done:
			return errs
		case <-tick.C:
			if err := w.claimer.KeepAlive(ctx); err != nil {
				// The claim is lost; the batch is settled, in vain, once
				// the sink answers, and nothing it acknowledged is deleted.
				w.logger.Warn("the claim of the batch in flight has ended; what the destination acknowledges of it will be shipped again", slog.Any("error", err))
				tick.Stop()
			}
		}
	}
}

// sleep waits for d, and says so, or until ctx ends or wake is closed.
func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) (slept bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-wake:
		return false
	case <-t.C:
		return true
	}
}
