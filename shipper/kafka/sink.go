package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pg2kafka/pg2kafka/shipper"
)

// Sink produces messages to Kafka. Create it with New.
type Sink struct {
	// client asks the brokers about topics and whether they answer; it
	// produces nothing.
	client *kgo.Client
	// producers holds a producer per Send in flight; the records out on
	// any of them, and on probe, are counted together (outstanding).
	producers producerPool
	admin     *kadm.Client
	cfg       Config
	// probe sends the records Kafka refused again, to find out which of
	// them it refuses for themselves (see findRefused). It sends nothing
	// else, and holding probeTurn lets one batch use it at a time, so a
	// record it sends alone really travels alone: on the shared client,
	// another worker's records could join it in its partition's batch.
	probe     *producer
	probeTurn chan struct{}
	// mu guards what the sink knows of the topics and the brokers (see
	// topics.go), which the background watch keeps fresh.
	mu        sync.Mutex
	topics    map[string]*topicState
	nextCheck time.Time
	reach     reach
	stopWatch context.CancelFunc
	watched   chan struct{} // closed when watch returns
	closing   atomic.Bool
}

var _ shipper.Sink = (*Sink)(nil)

// New returns a sink for cfg, which it validates, reading the TLS files it
// names; it does not connect yet. opts are passed to franz-go as they are,
// after the options cfg makes, so they can override them.
func New(cfg Config, opts ...kgo.Opt) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	base, err := cfg.clientOpts()
	if err != nil {
		return nil, err
	}
	client, err := kgo.NewClient(slices.Concat(base, opts)...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	// A producer holds a batch's records until all are handed to it, then
	// sends them: see producer.produce.
	produceOpts := slices.Concat(base, opts, []kgo.Opt{kgo.ManualFlushing(), kgo.MaxBufferedRecords(maxBufferedRecords)})
	out := newOutstanding()
	probe, err := newProducer(produceOpts, out)
	if err != nil {
		client.Close()
		return nil, err
	}
	s := &Sink{
		client:    client,
		producers: producerPool{opts: produceOpts, out: out},
		admin:     kadm.NewClient(client),
		probe:     probe,
		probeTurn: make(chan struct{}, 1),
		cfg:       cfg,
		topics:    make(map[string]*topicState),
		nextCheck: time.Now(),
		watched:   make(chan struct{}),
	}
	if cfg.Linger > 0 && cfg.Logger != nil {
		cfg.Logger.Warn("KAFKA_LINGER has no effect: the records of a batch are sent together once all of them are handed to the producer; unset it",
			slog.Duration("kafka_linger", cfg.Linger))
	}
	// The first check connects at once, so that a wrong address or a
	// refused certificate is said while the queue may well be empty.
	ctx, stop := context.WithCancel(context.Background())
	s.stopWatch = stop
	go s.watch(ctx)
	return s, nil
}

// Send implements shipper.Sink. Records are produced all at once and awaited
// together; each result is matched to its message through the record's
// promise, since franz-go settles them in completion order. Records Kafka
// may have refused for themselves are then sorted out by findRefused; those
// it does refuse fail with a *RejectedError.
func (s *Sink) Send(ctx context.Context, msgs []shipper.Message) []error {
	errs := make([]error, len(msgs))
	var unknown []string
	for i := range msgs {
		t := msgs[i].Topic
		if _, ok := s.known(t); !ok && !slices.Contains(unknown, t) {
			unknown = append(unknown, t)
		}
	}
	if len(unknown) > 0 {
		s.lookUp(ctx, unknown)
	}
	// A batch is split by topic here: the messages of a topic known to be
	// unusable fail at once, the others are produced.
	todo := make([]int, 0, len(msgs))
	for i := range msgs {
		if err := s.unavailable(msgs[i].Topic); err != nil {
			errs[i] = err
			continue
		}
		todo = append(todo, i)
	}
	p, err := s.producers.take()
	if err != nil {
		for _, i := range todo {
			errs[i] = err
		}
		return errs
	}
	p.produce(ctx, msgs, todo, errs)
	s.producers.put(p)
	var suspects []int
	for _, i := range todo {
		switch err := errs[i]; {
		case err == nil:
		case isTopicUnusable(err):
			t := msgs[i].Topic
			s.setTopic(t, err)
			errs[i] = &shipper.UnavailableError{Target: t, Err: err, RetryAfter: s.untilNextCheck()}
		case refusesRecord(err):
			suspects = append(suspects, i)
		}
	}
	if len(suspects) > 0 {
		s.findRefused(ctx, msgs, suspects, errs)
	}
	return errs
}

// maxBufferedRecords bounds the records a producer holds: more than a
// batch can have (BATCH_SIZE is at most 100,000), since a producer that
// does not flush by itself fails a record over the bound.
const maxBufferedRecords = 1 << 20

// producer is a franz-go client that one Send at a time produces to. It
// flushes only when told (kgo.ManualFlushing), so that every record of a
// batch is in its buffer before any is sent. That is what keeps a key's
// records in order when Kafka refuses a partition's batch: franz-go then
// fails every record it holds for the partition, which is every later
// record of the key in this batch; had it sent the first records while
// later ones were still being handed to it, those later ones would go
// out in a batch of their own and could be written ahead of the earlier
// ones, sent again. A client of its own per Send keeps another worker's
// Send from flushing a batch half handed over.
//
// Handed to it is not yet in its buffer, though: a record of a topic whose
// partitions the client does not know yet waits for them, and once they are
// known, flushing could send the first of the topic's records before the
// others are in. So produce flushes only once every record is partitioned,
// which the client's hook counts, or failed: before a flush nothing is
// sent, so a record that fails then was never partitioned (too large for
// the client, of a topic found missing), or its Send is over anyway.
type producer struct {
	client *kgo.Client
	out    *outstanding

	mu          sync.Mutex
	partitioned int           // records of the Send partitioned, or failed before the flush
	want        int           // how many the Send has
	ready       chan struct{} // closed once partitioned reaches want
}

func newProducer(opts []kgo.Opt, out *outstanding) (*producer, error) {
	p := &producer{out: out}
	client, err := kgo.NewClient(append(slices.Clip(opts), kgo.WithHooks(partitionHook{p}))...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	p.client = client
	return p, nil
}

// partitionHook tells its producer of each record partitioned.
type partitionHook struct{ p *producer }

func (h partitionHook) OnProduceRecordPartitioned(*kgo.Record, int32) { h.p.arrived() }

// expect readies the count of partitioned records for a Send of n.
func (p *producer) expect(n int) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partitioned, p.want, p.ready = 0, n, make(chan struct{})
	if n == 0 {
		close(p.ready)
	}
	return p.ready
}

func (p *producer) arrived() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.partitioned == p.want {
		return // flushing, or flushed: failures count no more
	}
	if p.partitioned++; p.partitioned == p.want {
		close(p.ready)
	}
}

// producerPool hands each Send a producer no other Send is using, making
// one when none is free: there are as many as Sends ever ran at once, one
// per worker.
type producerPool struct {
	opts []kgo.Opt
	out  *outstanding

	mu     sync.Mutex
	free   []*producer
	all    []*producer
	closed bool
}

func (pp *producerPool) take() (*producer, error) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.closed {
		return nil, errors.New("kafka: the sink is closed")
	}
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		return p, nil
	}
	p, err := newProducer(pp.opts, pp.out)
	if err != nil {
		return nil, err
	}
	pp.all = append(pp.all, p)
	return p, nil
}

func (pp *producerPool) put(p *producer) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.free = append(pp.free, p)
}

func (pp *producerPool) close() {
	pp.mu.Lock()
	all := pp.all
	pp.all, pp.free, pp.closed = nil, nil, true
	pp.mu.Unlock()
	for _, p := range all {
		p.client.Close()
	}
}

// outstanding counts the records handed to any producer that no batch
// waits for any more.
type outstanding struct {
	mu        sync.Mutex
	abandoned int
	drained   chan struct{} // closed while abandoned is 0
}

func newOutstanding() *outstanding {
	o := &outstanding{drained: make(chan struct{})}
	close(o.drained)
	return o
}

type produced struct {
	i   int
	err error
}

// produce sends the messages msgs[i] for i in which, in that order, and
// waits until each is settled or ctx ends, setting errs[i] to nil or its
// error.
//
// An idempotent producer never fails a record that may already have reached
// a broker: it waits to learn whether the broker kept it, for as long as the
// broker is away. produce does not wait that long. When ctx ends, the records
// still out fail with ctx's error, so that their batch is rolled back and its
// events stay queued, and they are counted as abandoned until franz-go
// settles them. Before sending anything, produce waits for the abandoned
// records of every producer to settle: a partition then never holds two
// sends of an event, so an event sent again can only repeat the earlier
// send, never overtake it, and the records held through an outage stay
// bounded by one batch per worker.
func (p *producer) produce(ctx context.Context, msgs []shipper.Message, which []int, errs []error) {
	// A select picks among ready cases at random, so an ended ctx is
	// looked at first: produced anyway, the records of a topic the Send
	// could not look up, nor create, would come back unknown, and the
	// topic be taken for missing.
	if err := ctx.Err(); err != nil {
		for _, i := range which {
			errs[i] = fmt.Errorf("kafka: not sent: %w", err)
		}
		return
	}
	p.out.mu.Lock()
	drained := p.out.drained
	p.out.mu.Unlock()
	select {
	case <-drained:
	case <-ctx.Done():
		for _, i := range which {
			errs[i] = fmt.Errorf("kafka: records sent earlier are still unacknowledged; is the broker reachable? %w", ctx.Err())
		}
		return
	}

	results := make(chan produced, len(which)) // late promises never block
	// The records and their headers are allocated together, a few
	// allocations per batch rather than a few per record.
	records := make([]kgo.Record, len(which))
	nHeaders := 0
	for _, i := range which {
		nHeaders += len(msgs[i].Headers)
	}
	headers := make([]kgo.RecordHeader, 0, nHeaders)
	ready := p.expect(len(which))
	for k, i := range which {
		m := &msgs[i]
		first := len(headers)
		headers = appendRecordHeaders(headers, m.Headers)
		records[k] = kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: headers[first:len(headers):len(headers)], Timestamp: m.Timestamp}
		p.client.Produce(ctx, &records[k], func(_ *kgo.Record, err error) {
			if err != nil {
				p.arrived()
			}
			results <- produced{i, err}
		})
	}
	// Flush returns once every record is settled, or when ctx ends, which
	// the loop below sees too.
	select {
	case <-ready:
		_ = p.client.Flush(ctx)
	case <-ctx.Done():
	}
	settled := make([]bool, len(msgs))
	settle := func(r produced) {
		settled[r.i] = true
		errs[r.i] = nil
		if r.err != nil {
			errs[r.i] = explainProduceError(msgs[r.i].Topic, r.err)
		}
	}
	for left := len(which); left > 0; left-- {
		select {
		case r := <-results:
			settle(r)
		case <-ctx.Done():
			// The results that came while Flush waited are in, and a
			// select picks among ready cases at random: take them all
			// before failing the rest, or records Kafka acknowledged
			// would fail and be sent again.
			for empty := false; !empty && left > 0; {
				select {
				case r := <-results:
					settle(r)
					left--
				default:
					empty = true
				}
			}
			if left == 0 {
				return
			}
			for _, i := range which {
				if !settled[i] {
					errs[i] = fmt.Errorf("kafka: no acknowledgement in time: %w", ctx.Err())
				}
			}
			// Flushing stopped with ctx, and what it had not sent yet
			// would wait for the next flush: flush until every record
			// is settled, or the client closes.
			go func() { _ = p.client.Flush(context.WithoutCancel(ctx)) }()
			p.out.abandon(left, results)
			return
		}
	}
}

// abandon counts n records whose results will arrive on results, unread,
// until they have.
func (o *outstanding) abandon(n int, results <-chan produced) {
	o.mu.Lock()
	if o.abandoned == 0 {
		o.drained = make(chan struct{})
	}
	o.abandoned += n
	o.mu.Unlock()
	go func() {
		for range n {
			<-results
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.abandoned -= n; o.abandoned == 0 {
			close(o.drained)
		}
	}()
}

// refusesRecord reports whether err is Kafka refusing a record for what it
// is, which sending it again cannot change: too large for the broker
// (message.max.bytes, max.message.bytes; or for this client's
// ProducerBatchMaxBytes, which franz-go reports with the same error), larger
// than a log segment, invalid (a null key on a compacted topic, a broker-side
// validation), or with a timestamp the topic does not accept.
//
// Errors about the topic (missing, not allowed, invalid name) are not
// counted: they are the same for every event of the table and are fixed by
// whoever runs Kafka, so the events wait for that. Neither is
// CORRUPT_MESSAGE: the event bytes are always a valid record, so a checksum
// the broker finds wrong was damaged on the way, and the next send is new.
func refusesRecord(err error) bool {
	return errors.Is(err, kerr.MessageTooLarge) ||
		errors.Is(err, kerr.RecordListTooLarge) ||
		errors.Is(err, kerr.InvalidRecord) ||
		errors.Is(err, kerr.InvalidTimestamp)
}

// findRefused tells the suspects, records that failed with an error for
// which refusesRecord holds, that Kafka refuses for themselves from those
// that only shared their fate. Kafka answers a produce for a partition's
// whole batch of records, and franz-go, to keep a partition in order, then
// fails every record it holds for that partition with that same error: one
// record over the broker's size limit fails its neighbours with
// MESSAGE_TOO_LARGE too, and so does a batch of small records that is too
// large only as a whole.
//
// So the suspects are sent again on the probe, in halves, in their order: a
// group that goes through is acknowledged, one that fails is halved again,
// and a record that fails even alone is refused for itself. Its error
// becomes a *RejectedError. One refused record among n suspects costs about
// 2·log2(n) sends. Any other failure stops the search and leaves the
// suspects not yet settled failed as they were, since a later event of a key
// must not overtake an earlier one that may yet go through; so does the end
// of ctx while waiting for another batch's search.
func (s *Sink) findRefused(ctx context.Context, msgs []shipper.Message, suspects []int, errs []error) {
	select {
	case s.probeTurn <- struct{}{}:
		defer func() { <-s.probeTurn }()
	case <-ctx.Done():
		return
	}
	f := &refusalFinder{
		ctx:         ctx,
		probe:       s.probe,
		msgs:        msgs,
		errs:        errs,
		attempts:    make(map[int]int, len(suspects)),
		firstFailed: time.Now(),
	}
	for _, i := range suspects {
		f.attempts[i] = 1
	}
	f.split(suspects)
}

type refusalFinder struct {
	ctx         context.Context
	probe       *producer
	msgs        []shipper.Message
	errs        []error
	attempts    map[int]int // failed sends of each suspect
	firstFailed time.Time   // when the suspects first failed, together
}

// split sends the halves of failed, which failed together, one after the
// other, and reports whether the search may go on.
func (f *refusalFinder) split(failed []int) bool {
	if len(failed) == 1 {
		return f.send(failed)
	}
	mid := len(failed) / 2
	return f.send(failed[:mid]) && f.send(failed[mid:])
}

// send sends group and settles it, and reports whether the search may go on.
func (f *refusalFinder) send(group []int) bool {
	f.probe.produce(f.ctx, f.msgs, group, f.errs)
	failedAt := time.Now()
	var failed []int
	goOn := true
	for _, i := range group {
		if f.errs[i] == nil {
			continue
		}
		f.attempts[i]++
		if !refusesRecord(f.errs[i]) {
			goOn = false
		}
		failed = append(failed, i)
	}
	switch {
	case !goOn || len(failed) == 0:
		return goOn
	case len(group) == 1:
		i := group[0]
		f.errs[i] = &shipper.RejectedError{Err: f.errs[i], Attempts: f.attempts[i], FirstFailedAt: f.firstFailed, LastFailedAt: failedAt}
		return true
	}
	return f.split(failed)
}

func explainProduceError(topic string, err error) error {
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return fmt.Errorf("kafka: topic %q does not exist: create it (kafka-topics.sh --create --topic %s) or set KAFKA_CREATE_TOPICS=true: %w", topic, topic, err)
	case errors.Is(err, kerr.TopicAuthorizationFailed):
		return fmt.Errorf("kafka: not allowed to produce to topic %q: grant this client WRITE on it: %w", topic, err)
	}
	return fmt.Errorf("kafka: produce to %q: %w", topic, err)
}

// Close implements shipper.Sink.
func (s *Sink) Close() {
	s.closing.Store(true)
	s.stopWatch()
	<-s.watched
	s.producers.close()
	s.probe.client.Close()
	s.client.Close()
}

// appendRecordHeaders appends headers to dst as franz-go's record headers.
func appendRecordHeaders(dst []kgo.RecordHeader, headers []shipper.Header) []kgo.RecordHeader {
	for _, h := range headers {
		dst = append(dst, kgo.RecordHeader{Key: h.Key, Value: h.Value})
	}
	return dst
}
