package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

// floorResult is the physical line beside a rate's run: the same writes,
// the same broker and consumer, the same machine at the same moment, with
// pg2kafka replaced by the least a shipper can be.
type floorResult struct {
	// Outbox is a polling outbox without any of pg2kafka's costs or
	// guarantees beyond at-least-once: one connection that claims and
	// deletes in one statement with no wait between claims (so it spends a
	// core spinning), produces each batch and commits once it is
	// acknowledged. No lanes, no leases, no pauses, no logging.
	Outbox latencyFigures `json:"outbox"`
	// Broker is the broker's leg alone, no Postgres at all: a record per
	// row produced at the rate, timed from the produce call to the consumer.
	Broker latencyFigures `json:"broker"`
}

// latencyFigures are one run's p50 / p99 / max and the rate it achieved.
type latencyFigures struct {
	P50Ms        float64 `json:"p50_ms"`
	P99Ms        float64 `json:"p99_ms"`
	MaxMs        float64 `json:"max_ms"`
	AchievedRate float64 `json:"achieved_rate"`
	Missing      int     `json:"missing"`
}

// runFloor measures both physical lines at rate, one after the other.
func (b *bench) runFloor(ctx context.Context, rate int) (*floorResult, error) {
	outbox, err := b.spinningOutboxRun(ctx, rate)
	if err != nil {
		return nil, fmt.Errorf("the spinning outbox: %w", err)
	}
	broker, err := b.brokerRun(ctx, rate)
	if err != nil {
		return nil, fmt.Errorf("the broker alone: %w", err)
	}
	return &floorResult{Outbox: outbox, Broker: broker}, nil
}

// spinningOutboxRun writes at rate as the pg2kafka run does, shipped by the
// spinning outbox.
func (b *bench) spinningOutboxRun(ctx context.Context, rate int) (latencyFigures, error) {
	run, err := b.startFloorRun(ctx, rate)
	if err != nil {
		return latencyFigures{}, err
	}
	defer run.close()
	total, base, consumer, producer := run.total, run.base, run.consumer, run.producer
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return latencyFigures{}, err
	}
	defer conn.Release()

	shipCtx, stopShipping := context.WithCancel(ctx)
	shipped := make(chan error, 1)
	go func() {
		err := spinShip(shipCtx, conn.Conn(), producer, b.cfg.BatchSize)
		if shipCtx.Err() == nil {
			b.log.Error("the spinning outbox stopped", "error", err)
		}
		shipped <- err
	}()
	stop := func() error {
		stopShipping()
		if err := <-shipped; err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}
	if err := b.warmUp(ctx, consumer); err != nil {
		return latencyFigures{}, errors.Join(err, stop())
	}
	b.log.Info("writing at a fixed rate", "rate", rate, "duration", time.Duration(b.cfg.Latency.Duration), "shipper", "spinning outbox")
	commits, writeTime, err := b.writeAtRate(ctx, rate, total, base)
	if err != nil {
		return latencyFigures{}, errors.Join(err, stop())
	}
	consumer.waitFor(ctx, total, time.Duration(b.cfg.Timeout))
	if err := stop(); err != nil {
		return latencyFigures{}, err
	}
	f := figures(commits, consumer.stop(), writeTime)
	b.log.Info("physical line: spinning outbox", "rate", rate, "p50_ms", f.P50Ms, "p99_ms", f.P99Ms, "max_ms", f.MaxMs, "achieved_rate", int(f.AchievedRate), "missing", f.Missing)
	return f, nil
}

// spinShip claims batches on conn with no wait between claims, produces
// each and commits its delete once the broker acknowledged it, until ctx
// ends. Its claim is one round trip, as pg2kafka's is, of the raw drain's
// statement.
func spinShip(ctx context.Context, conn *pgx.Conn, producer *kgo.Client, limit int) error {
	records := make([]*kgo.Record, 0, limit)
	for ctx.Err() == nil {
		var claim pgx.Batch
		claim.BeginTx(pgx.TxOptions{})
		claim.Queue(rawDrainSQL, limit)
		results := conn.SendBatch(ctx, &claim)
		tx := results.Tx()
		records = records[:0]
		_, err := results.Exec() // the BEGIN's
		var rows pgx.Rows
		if err == nil {
			rows, err = results.Query()
		}
		for err == nil && rows.Next() {
			var e queuedEvent
			if err = rows.Scan(&e.ID, &e.UUID, &e.ExternalID, &e.TableSchema, &e.TableName, &e.Statement, &e.Data, &e.CreatedAt); err == nil {
				r := &kgo.Record{Value: append(append([]byte(`{"data":`), e.Data...), '}')}
				if e.ExternalID != nil {
					r.Key = []byte(*e.ExternalID)
				}
				records = append(records, r)
			}
		}
		if rows != nil {
			rows.Close()
			err = errors.Join(err, rows.Err())
		}
		err = errors.Join(err, results.Close())
		if err == nil && len(records) > 0 {
			err = producer.ProduceSync(ctx, records...).FirstErr()
		}
		if err != nil {
			return errors.Join(err, tx.Rollback(context.WithoutCancel(ctx)))
		}
		if len(records) == 0 {
			err = tx.Rollback(ctx)
		} else {
			err = tx.Commit(ctx)
		}
		if err != nil {
			return err
		}
	}
	return ctx.Err()
}

// brokerRun produces a record per row at rate, as the writer commits them,
// and times each from its produce call to the consumer.
func (b *bench) brokerRun(ctx context.Context, rate int) (latencyFigures, error) {
	run, err := b.startFloorRun(ctx, rate)
	if err != nil {
		return latencyFigures{}, err
	}
	defer run.close()
	total, base, consumer, producer := run.total, run.base, run.consumer, run.producer
	record := func(id int) *kgo.Record {
		return &kgo.Record{Key: []byte("customer-0001"), Value: fmt.Appendf(nil, `{"data":{"id":%d}}`, id)}
	}
	if err := producer.ProduceSync(ctx, record(probeID)).FirstErr(); err != nil {
		return latencyFigures{}, err
	}
	if err := consumer.awaitProbe(ctx); err != nil {
		return latencyFigures{}, err
	}

	b.log.Info("producing at a fixed rate", "rate", rate, "duration", time.Duration(b.cfg.Latency.Duration), "shipper", "none")
	produced := make([]time.Duration, total+1)
	interval := float64(time.Second) / float64(rate)
	failed := make(chan error, 1)
	start := time.Now()
	for id := 1; id <= total; id++ {
		if err := sleepUntil(ctx, start.Add(time.Duration(float64(id-1)*interval))); err != nil {
			return latencyFigures{}, err
		}
		produced[id] = time.Since(base)
		producer.Produce(ctx, record(id), func(_ *kgo.Record, err error) {
			if err != nil {
				select {
				case failed <- err:
				default:
				}
			}
		})
	}
	writeTime := time.Since(start)
	if err := producer.Flush(ctx); err != nil {
		return latencyFigures{}, err
	}
	select {
	case err := <-failed:
		return latencyFigures{}, fmt.Errorf("produce: %w", err)
	default:
	}
	consumer.waitFor(ctx, total, time.Duration(b.cfg.Timeout))
	f := figures(produced, consumer.stop(), writeTime)
	b.log.Info("physical line: the broker alone", "rate", rate, "p50_ms", f.P50Ms, "p99_ms", f.P99Ms, "max_ms", f.MaxMs, "achieved_rate", int(f.AchievedRate), "missing", f.Missing)
	return f, nil
}

// floorRun is what both physical lines need: a fresh topic, a consumer
// timing arrivals on it and a producer to it that does not linger.
type floorRun struct {
	total    int
	base     time.Time
	consumer *arrivals
	producer *kgo.Client
}

func (b *bench) startFloorRun(ctx context.Context, rate int) (*floorRun, error) {
	total := int(float64(rate) * time.Duration(b.cfg.Latency.Duration).Seconds())
	topic, base, consumer, err := b.freshLatencyConsumer(ctx, total)
	if err != nil {
		return nil, err
	}
	producer, err := kgo.NewClient(kgo.SeedBrokers(b.broker), kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(0))
	if err != nil {
		consumer.stop()
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	return &floorRun{total: total, base: base, consumer: consumer, producer: producer}, nil
}

func (r *floorRun) close() {
	r.producer.Close()
	r.consumer.stop()
}

// freshLatencyConsumer empties the latency table and the queue, makes the
// latency topic anew, so that no earlier run's records count, and starts a
// consumer of total rows on it. Every time of the run is taken as
// time.Since(base), on the monotonic clock.
func (b *bench) freshLatencyConsumer(ctx context.Context, total int) (topic string, base time.Time, consumer *arrivals, err error) {
	if err := truncate(ctx, b.pool, latencyTable, "pg2kafka.outbound_event_queue"); err != nil {
		return "", time.Time{}, nil, err
	}
	topic = b.topic(latencyTable)
	b.deleteTopic(ctx, topic)
	if err := b.createTopic(ctx, topic); err != nil {
		return "", time.Time{}, nil, err
	}
	base = time.Now()
	consumer, err = startArrivals(ctx, b.broker, topic, total, base)
	return topic, base, consumer, err
}

// figures sums up arrival minus start of rows 1..len-1, both indexed by row
// id, over a run that took took.
func figures(starts, arrivals []time.Duration, took time.Duration) latencyFigures {
	var r latencyResult
	r.addLatencies(starts, arrivals)
	return latencyFigures{P50Ms: r.P50Ms, P99Ms: r.P99Ms, MaxMs: r.MaxMs,
		AchievedRate: float64(len(starts)-1) / took.Seconds(), Missing: r.Missing}
}
