package httpserver

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
)

// backlogSnapshot is the queue as counted at one moment.
type backlogSnapshot struct {
	at     time.Time
	status *outbox.Status
	err    error
}

// backlogTimeout bounds a count of the queue. outbox.ReadStatus estimates
// rather than read a long queue whole, so this is for a Postgres that is
// slow to answer at all.
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
	b.status, b.err = outbox.ReadStatus(ctx, p.Pool)
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
		"Events waiting in pg2kafka.outbound_event_queue, by table; estimated from a sample on a queue of more than 2000 pages (pg2kafka_queue_events_estimated).", []string{"table"}, nil)
	queueEstimatedDesc = prometheus.NewDesc("pg2kafka_queue_events_estimated",
		"1 when pg2kafka_queue_events is an estimate: the queue is too long to count whole at every scrape.", nil, nil)
	queueOldestDesc = prometheus.NewDesc("pg2kafka_queue_oldest_event_age_seconds",
		"Age of the oldest event waiting in the queue, by table; 0 when none waits. On a long queue, only tables among its first 10000 events have one.", []string{"table"}, nil)
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
	snapshotAgeDesc = prometheus.NewDesc("pg2kafka_oldest_snapshot_age_seconds",
		"How long the oldest snapshot that keeps vacuum from removing the queue's dead rows has been held, by what holds it (holder: session, prepared_transaction, replication_slot, standby); 0 with holder \"none\" when nothing holds one. Absent when Postgres does not say when it began (a replication slot or a standby; a session of another role, unless pg2kafka's role is a member of pg_read_all_stats): pg2kafka_oldest_snapshot_xid_age still tells.", []string{"holder"}, nil)
	snapshotXIDAgeDesc = prometheus.NewDesc("pg2kafka_oldest_snapshot_xid_age",
		"How many transactions ago the oldest snapshot that keeps the queue's dead rows was taken, by what holds it; 0 with holder \"none\" when nothing holds one.", []string{"holder"}, nil)
	deadRowsDesc = prometheus.NewDesc("pg2kafka_queue_dead_rows",
		"Postgres' estimate of the dead rows in pg2kafka.outbound_event_queue (n_dead_tup): shipped events vacuum has not removed yet.", nil, nil)
	tablePausedDesc = prometheus.NewDesc("pg2kafka_table_paused",
		"1 while this process holds the table's events back because its target is unusable (a missing Kafka topic, a failing webhook endpoint, an unroutable RabbitMQ key): they stay queued and are retried, and the other tables go on; 0 for the other tables of the queue's count. The status page and /status.json say why.", []string{"table"}, nil)
	viewersDesc = prometheus.NewDesc("pg2kafka_stream_viewers",
		"Live stream viewers connected to this process.", nil, nil)
	droppedDesc = prometheus.NewDesc("pg2kafka_stream_viewers_dropped_total",
		"Live stream viewers disconnected for falling too far behind.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queueEventsDesc, queueEstimatedDesc, queueOldestDesc, deadLettersDesc, snapshotAgeDesc, snapshotXIDAgeDesc, deadRowsDesc, tablePausedDesc, shippersDesc, lanesDesc, readyDesc, backlogUpDesc, viewersDesc, droppedDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	b := s.currentBacklog(context.Background())
	paused := s.pausedTables()
	up := 0.0
	if b.err == nil {
		up = 1
		for _, t := range b.status.Tables {
			label := tableLabel(outbox.Table{Schema: t.Schema, Name: t.Name})
			if _, ok := paused[label]; !ok {
				ch <- prometheus.MustNewConstMetric(tablePausedDesc, prometheus.GaugeValue, 0, label)
			}
			ch <- prometheus.MustNewConstMetric(queueEventsDesc, prometheus.GaugeValue, float64(t.Queued), label)
			if age, ok := oldestAge(t, b.at); ok {
				ch <- prometheus.MustNewConstMetric(queueOldestDesc, prometheus.GaugeValue, age, label)
			}
			ch <- prometheus.MustNewConstMetric(deadLettersDesc, prometheus.GaugeValue, float64(t.DeadLetters), label)
		}
		estimated := 0.0
		if b.status.Queue.Estimated {
			estimated = 1
		}
		ch <- prometheus.MustNewConstMetric(queueEstimatedDesc, prometheus.GaugeValue, estimated)
		ch <- prometheus.MustNewConstMetric(shippersDesc, prometheus.GaugeValue, float64(len(b.status.Shippers)))
		h := b.status.Horizon
		holder := holderLabel(h.Holder)
		if age, ok := snapshotAge(h, b.status.At, b.at); ok {
			ch <- prometheus.MustNewConstMetric(snapshotAgeDesc, prometheus.GaugeValue, age, holder)
		}
		ch <- prometheus.MustNewConstMetric(snapshotXIDAgeDesc, prometheus.GaugeValue, float64(h.XIDAge), holder)
		ch <- prometheus.MustNewConstMetric(deadRowsDesc, prometheus.GaugeValue, float64(h.DeadRows))
	}
	ch <- prometheus.MustNewConstMetric(backlogUpDesc, prometheus.GaugeValue, up)
	for label := range paused {
		ch <- prometheus.MustNewConstMetric(tablePausedDesc, prometheus.GaugeValue, 1, label)
	}
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

// pausedTables returns the tables the shipper holds back, by label.
func (s *Server) pausedTables() map[string]shipper.PausedTable {
	p := s.parts.Load()
	if p == nil {
		return nil
	}
	out := make(map[string]shipper.PausedTable)
	for _, pt := range p.Shipper.Paused() {
		out[tableLabel(pt.Table)] = pt
	}
	return out
}

// oldestAge is the age in seconds of the table's oldest queued event now,
// from the status counted at countedAt: 0 when none is queued, unknown
// when the queue was too long to find it.
func oldestAge(t outbox.TableStatus, countedAt time.Time) (float64, bool) {
	switch {
	case t.Queued == 0:
		return 0, true
	case t.OldestAge == nil:
		return 0, false
	}
	return time.Duration(*t.OldestAge).Seconds() + time.Since(countedAt).Seconds(), true
}

// holderLabel is the holder label of the oldest snapshot's metrics: one of
// a handful of words, never who holds it (a pid or a name would make a new
// series of every session).
func holderLabel(holder string) string {
	if holder == "" {
		return "none"
	}
	return strings.ReplaceAll(holder, " ", "_")
}

// snapshotAge is the age in seconds now of the oldest snapshot h names,
// read at readAt by Postgres' clock and countedAt by ours: 0 when nothing
// holds one, unknown when Postgres does not say when it began.
func snapshotAge(h outbox.Horizon, readAt, countedAt time.Time) (float64, bool) {
	switch {
	case h.Holder == "":
		return 0, true
	case h.Since.IsZero():
		return 0, false
	}
	// The horizon is read a moment after readAt, by a transaction that may
	// have begun after it.
	return max(h.Age(readAt).Seconds(), 0) + time.Since(countedAt).Seconds(), true
}
