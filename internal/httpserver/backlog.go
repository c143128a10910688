package httpserver

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// backlogSnapshot is the queue as counted at one moment.
type backlogSnapshot struct {
	at       time.Time
	backlogs []outbox.Backlog
	shippers []outbox.ShipperConn
	err      error
}

// backlogTimeout bounds a count of the queue: a scrape must not hang on a
// queue of millions.
const backlogTimeout = 3 * time.Second

// currentBacklog returns the queue's counts, counting again when the last
// count is older than BacklogInterval. Concurrent callers share one count.
func (s *Server) currentBacklog(ctx context.Context) *backlogSnapshot {
	s.backlogMu.Lock()
	defer s.backlogMu.Unlock()
	if b := s.backlog; b != nil && time.Since(b.at) < s.cfg.BacklogInterval {
		return b
	}
	p := s.parts.Load()
	if p == nil {
		return &backlogSnapshot{at: time.Now(), err: errors.New("pg2kafka is starting: not connected to Postgres yet")}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), backlogTimeout)
	defer cancel()
	b := &backlogSnapshot{}
	b.backlogs, b.err = outbox.Backlogs(ctx, p.Pool)
	if b.err == nil {
		b.shippers, b.err = outbox.Shippers(ctx, p.Pool)
	}
	if b.err != nil {
		s.cfg.Logger.Warn("could not count the queue for the metrics and the status page", slog.Any("error", b.err))
	}
	b.at = time.Now()
	s.backlog = b
	return b
}

// stateCollector exports, at each scrape, what is read from Postgres and
// from the shipper rather than counted as it happens.
type stateCollector struct{ s *Server }

var (
	queueEventsDesc = prometheus.NewDesc("pg2kafka_queue_events",
		"Events waiting in pg2kafka.outbound_event_queue, by table.", []string{"table"}, nil)
	queueOldestDesc = prometheus.NewDesc("pg2kafka_queue_oldest_event_age_seconds",
		"Age of the oldest event waiting in the queue, by table; 0 when none waits.", []string{"table"}, nil)
	deadLettersDesc = prometheus.NewDesc("pg2kafka_dead_letter_events",
		"Events in pg2kafka.dead_letter_events, by table: refused by the destination, waiting for pg2kafka.requeue_dead_letters().", []string{"table"}, nil)
	shippersDesc = prometheus.NewDesc("pg2kafka_shippers",
		"Connections counted among the shippers of the database, one per worker of each pg2kafka process.", nil, nil)
	lanesDesc = prometheus.NewDesc("pg2kafka_lanes_owned",
		"Lanes of the queue owned by this process's workers, of 64.", nil, nil)
	readyDesc = prometheus.NewDesc("pg2kafka_shipper_joined",
		"1 while every worker of this process is counted among the shippers, 0 otherwise.", nil, nil)
	backlogUpDesc = prometheus.NewDesc("pg2kafka_queue_count_up",
		"1 when the last count of the queue succeeded, 0 when it failed (the queue gauges are then missing).", nil, nil)
	viewersDesc = prometheus.NewDesc("pg2kafka_stream_viewers",
		"Live stream viewers connected to this process.", nil, nil)
	droppedDesc = prometheus.NewDesc("pg2kafka_stream_viewers_dropped_total",
		"Live stream viewers disconnected for falling too far behind.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queueEventsDesc, queueOldestDesc, deadLettersDesc, shippersDesc, lanesDesc, readyDesc, backlogUpDesc, viewersDesc, droppedDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	b := s.currentBacklog(context.Background())
	up := 0.0
	if b.err == nil {
		up = 1
		now := time.Now()
		for _, t := range b.backlogs {
			label := tableLabel(t.Table)
			age := 0.0
			if !t.Oldest.IsZero() {
				age = max(0, now.Sub(t.Oldest).Seconds())
			}
			ch <- prometheus.MustNewConstMetric(queueEventsDesc, prometheus.GaugeValue, float64(t.Queued), label)
			ch <- prometheus.MustNewConstMetric(queueOldestDesc, prometheus.GaugeValue, age, label)
			ch <- prometheus.MustNewConstMetric(deadLettersDesc, prometheus.GaugeValue, float64(t.DeadLetters), label)
		}
		ch <- prometheus.MustNewConstMetric(shippersDesc, prometheus.GaugeValue, float64(len(b.shippers)))
	}
	ch <- prometheus.MustNewConstMetric(backlogUpDesc, prometheus.GaugeValue, up)
	lanes, joined := 0.0, 0.0
	if p := s.parts.Load(); p != nil {
		st := p.Shipper.State()
		lanes = float64(st.Lanes())
		if st.Ready() == nil {
			joined = 1
		}
	}
	ch <- prometheus.MustNewConstMetric(lanesDesc, prometheus.GaugeValue, lanes)
	ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, joined)
	if h := s.cfg.Hub; h != nil {
		ch <- prometheus.MustNewConstMetric(viewersDesc, prometheus.GaugeValue, float64(h.Viewers()))
		ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(h.Dropped()))
	}
}
