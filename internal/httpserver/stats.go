package httpserver

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"

	"github.com/pg2kafka/pg2kafka/internal/stream"
	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
)

// Stats is what pg2kafka counts of its shipping, fed by the shipper through
// Settled, and the Prometheus registry it is exported from. It exists before
// the destination's client, so that the client can report into it.
type Stats struct {
	registry *prometheus.Registry
	hub      *stream.Hub

	shipped, failed, deadLettered *prometheus.CounterVec
	batchSize, batchDuration      prometheus.Histogram
	ackAge                        prometheus.Histogram

	mu    sync.Mutex
	rates map[string]*rateHistory // by table
}

// NewStats returns the counters of one pg2kafka process. Acknowledged
// events are handed on to hub's viewers; hub may be nil.
func NewStats(hub *stream.Hub) *Stats {
	s := &Stats{
		registry: prometheus.NewRegistry(),
		hub:      hub,
		shipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pg2kafka_events_shipped_total",
			Help: "Events the destination acknowledged and that were deleted from the queue, by this process.",
		}, []string{"table"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pg2kafka_events_failed_total",
			Help: "Sends of events the destination did not acknowledge; the events stay queued and are retried.",
		}, []string{"table"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pg2kafka_events_dead_lettered_total",
			Help: "Events the destination refused for good, moved to pg2kafka.dead_letter_events by this process.",
		}, []string{"table"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pg2kafka_batch_size_events",
			Help:    "Events per batch claimed and sent.",
			Buckets: []float64{1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000},
		}),
		batchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pg2kafka_batch_duration_seconds",
			Help:    "Time from a batch's claim to its outcome committed: claim, send, acknowledgement and delete.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16), // 1ms to 33s
		}),
		ackAge: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pg2kafka_event_ack_age_seconds",
			Help:    "Age of an event when its destination acknowledged it: from the transaction that wrote it (created_at) to the acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 18), // 1ms to 3.4h
		}),
		rates: make(map[string]*rateHistory),
	}
	s.registry.MustRegister(s.shipped, s.failed, s.deadLettered, s.batchSize, s.batchDuration, s.ackAge,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return s
}

// Registry returns the registry the metrics are in, for collectors of other
// parts.
func (s *Stats) Registry() *prometheus.Registry { return s.registry }

// KafkaHooks returns franz-go hooks that export the Kafka client's metrics
// (pg2kafka_kafka_…) beside pg2kafka's: pass them to the clients of one
// Kafka sink with kgo.WithHooks. Call it once per Stats.
func (s *Stats) KafkaHooks() kgo.Hook {
	return newKafkaHooks(kprom.NewMetrics("pg2kafka", kprom.Subsystem("kafka"), kprom.Registry(s.registry),
		kprom.FetchAndProduceDetail(kprom.ByNode, kprom.ByTopic, kprom.Batches, kprom.Records, kprom.CompressedBytes, kprom.UncompressedBytes, kprom.ConsistentNaming)))
}

// Settled counts a settled batch and hands its acknowledged events to the
// stream's viewers; it is shipper.Config.OnSettled. It takes a few
// microseconds per table of the batch, and one histogram update per event.
func (s *Stats) Settled(b *shipper.Settled) {
	type counts struct{ shipped, failed, deadLettered int }
	byTable := make(map[outbox.Table]*counts, 2)
	ackAt := b.Acknowledged
	for i := range b.Events {
		e := &b.Events[i]
		c := byTable[e.Table()]
		if c == nil {
			c = &counts{}
			byTable[e.Table()] = c
		}
		switch err := b.Errs[i]; {
		case err == nil:
			c.shipped++
			s.ackAge.Observe(ackAt.Sub(e.CreatedAt).Seconds())
		case isRejected(err):
			c.deadLettered++
		default:
			c.failed++
		}
	}
	s.batchSize.Observe(float64(len(b.Events)))
	s.batchDuration.Observe(b.Committed.Sub(b.Claimed).Seconds())
	s.mu.Lock()
	for t, c := range byTable {
		label := tableLabel(t)
		if c.shipped > 0 {
			s.shipped.WithLabelValues(label).Add(float64(c.shipped))
			r := s.rates[label]
			if r == nil {
				r = &rateHistory{}
				s.rates[label] = r
			}
			r.add(b.Committed, c.shipped)
		}
		if c.failed > 0 {
			s.failed.WithLabelValues(label).Add(float64(c.failed))
		}
		if c.deadLettered > 0 {
			s.deadLettered.WithLabelValues(label).Add(float64(c.deadLettered))
		}
	}
	s.mu.Unlock()
	if s.hub != nil {
		s.hub.Publish(b)
	}
}

func isRejected(err error) bool {
	_, ok := errors.AsType[*shipper.RejectedError](err)
	return ok
}

func tableLabel(t outbox.Table) string { return t.Schema + "." + t.Name }

// shippedPerSecond returns each table's events shipped per second by this
// process, one value per rateBucket over the last rateBuckets, oldest first.
func (s *Stats) shippedPerSecond(now time.Time) map[string][]float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]float64, len(s.rates))
	for t, r := range s.rates {
		out[t] = r.perSecond(now)
	}
	return out
}

// The status page's charts: events shipped per second, in buckets of
// rateBucket, over the last rateBuckets of them.
const (
	rateBucket  = 5 * time.Second
	rateBuckets = 60
)

// rateHistory is a ring of per-bucket counts.
type rateHistory struct {
	counts [rateBuckets]int
	last   int64 // index, in buckets since the epoch, of the newest count
}

func (r *rateHistory) advance(now time.Time) {
	idx := now.UnixNano() / int64(rateBucket)
	for r.last < idx {
		r.last++
		r.counts[r.last%rateBuckets] = 0
		if idx-r.last > rateBuckets {
			r.last = idx - rateBuckets
		}
	}
}

func (r *rateHistory) add(now time.Time, n int) {
	r.advance(now)
	r.counts[r.last%rateBuckets] += n
}

func (r *rateHistory) perSecond(now time.Time) []float64 {
	r.advance(now)
	out := make([]float64, rateBuckets)
	for i := range rateBuckets {
		out[i] = float64(r.counts[(r.last+1+int64(i))%rateBuckets]) / rateBucket.Seconds()
	}
	return out
}
