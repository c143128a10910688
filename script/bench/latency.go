package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/pg2kafka/pg2kafka/shipper"
)

// latencyResult is section 3: events committed at a fixed rate while
// pg2kafka runs, each timed from its commit to its arrival at a consumer.
type latencyResult struct {
	TargetRate   int     `json:"target_rate"`
	Writers      int     `json:"writers"`
	Committed    int     `json:"committed"`
	WriteSeconds float64 `json:"write_seconds"`
	AchievedRate float64 `json:"achieved_rate"`
	Received     int     `json:"received"`
	Missing      int     `json:"missing"` // committed, not arrived within -timeout
	P50Ms        float64 `json:"p50_ms"`
	P99Ms        float64 `json:"p99_ms"`
	MaxMs        float64 `json:"max_ms"`
	// MaxDepth is the most events queued at a once-a-second sample;
	// EndDepth those queued when the writer stopped.
	MaxDepth int64 `json:"max_queue_depth"`
	EndDepth int64 `json:"end_queue_depth"`
	// Variant names the pg2kafka settings of a -latency-variant run, Env;
	// empty for the run with the suite's own settings.
	Variant string   `json:"variant,omitempty"`
	Env     []string `json:"env,omitempty"`
	// Breakdown is where the time of the Timed events went (breakdown.go).
	Breakdown []stageResult `json:"breakdown,omitempty"`
	Timed     int           `json:"timed,omitempty"`
	// Variants are the -latency-variant runs, each right after this one.
	Variants []latencyResult `json:"variants,omitempty"`
	// Floor is the physical line at the same rate, after the variants.
	Floor *floorResult `json:"floor,omitempty"`
}

const insertLatencySQL = `INSERT INTO bench_latency (id, customer, status, payload) VALUES ($1, $2, 'pending', $3)`

// probeID is the row written, and awaited, before the timed run, so that
// neither pg2kafka's start nor the consumer's is timed.
const probeID = 0

func (b *bench) runLatency(ctx context.Context) error {
	for i, rate := range b.cfg.Latency.Rates {
		r, err := b.latencyRun(ctx, rate, latencyVariant{}, i == 0)
		if err != nil {
			return fmt.Errorf("latency at %d/s: %w", rate, err)
		}
		for _, v := range b.cfg.Latency.Variants {
			vr, err := b.latencyRun(ctx, rate, v, false)
			if err != nil {
				return fmt.Errorf("latency variant %s at %d/s: %w", v.Name, rate, err)
			}
			r.Variants = append(r.Variants, *vr)
		}
		if r.Floor, err = b.runFloor(ctx, rate); err != nil {
			return fmt.Errorf("latency's physical line at %d/s: %w", rate, err)
		}
		// The first rate's run stays where a single run's always was.
		if i == 0 {
			b.report.Latency = r
		} else {
			b.report.LatencyRates = append(b.report.LatencyRates, r)
		}
	}
	return nil
}

// latencyIdle is pg2kafka's cost with an empty queue, measured by the
// latency section before its first rate's writes, on the pg2kafka of that
// run (LOG_LEVEL=debug, as the breakdown needs).
type latencyIdle struct {
	WindowSeconds float64 `json:"window_seconds"`
	// Core is the CPU pg2kafka and its Postgres sessions used over the
	// window, as a share of one core.
	Core float64 `json:"core"`
	// LogLines are the lines pg2kafka wrote over the window, at debug
	// level: with nothing to ship there should be none.
	LogLines int64 `json:"log_lines"`
}

// latencyRun measures one run of the latency section at rate commits per
// second, with pg2kafka given v's settings beside the suite's. With idle,
// it first measures pg2kafka's idle cost with the queue empty.
func (b *bench) latencyRun(ctx context.Context, rate int, v latencyVariant, idle bool) (*latencyResult, error) {
	cfg := b.cfg.Latency
	total := int(float64(rate) * time.Duration(cfg.Duration).Seconds())
	_, base, consumer, err := b.freshLatencyConsumer(ctx, total)
	if err != nil {
		return nil, err
	}
	defer consumer.stop()
	shipper, times, err := b.startTimedShipper(base, v.Env...)
	if err != nil {
		return nil, err
	}
	defer func() { _, _ = shipper.Stop(stopTimeout) }() // for early returns; the normal path checks it
	if err := b.warmUp(ctx, consumer); err != nil {
		return nil, err
	}
	if idle {
		if b.report.LatencyIdle, err = b.measureIdle(ctx, shipper, times); err != nil {
			return nil, err
		}
	}

	sampler := sampleDepth(ctx, b.pool, time.Second)
	defer sampler.stop()
	b.log.Info("writing at a fixed rate", "rate", rate, "duration", time.Duration(cfg.Duration), "writers", cfg.Writers, "variant", v.Name)
	commits, writeTime, err := b.writeAtRate(ctx, rate, total, base)
	if err != nil {
		return nil, err
	}
	endDepth, err := queueDepth(ctx, b.pool)
	if err != nil {
		return nil, err
	}
	consumer.waitFor(ctx, total, time.Duration(b.cfg.Timeout))
	maxDepth := sampler.stop()
	if _, err := shipper.Stop(stopTimeout); err != nil {
		return nil, err
	}
	if err := times.wait(ctx); err != nil {
		return nil, err
	}

	r := latencyResult{
		TargetRate:   rate,
		Writers:      cfg.Writers,
		Committed:    total,
		WriteSeconds: writeTime.Seconds(),
		AchievedRate: float64(total) / writeTime.Seconds(),
		MaxDepth:     max(maxDepth, endDepth),
		EndDepth:     endDepth,
		Variant:      v.Name,
		Env:          v.Env,
	}
	arrived := consumer.stop()
	r.Breakdown, r.Timed = times.breakdown(commits, arrived, consumer.uuids)
	r.addLatencies(commits, arrived)
	b.log.Info("latency", "rate", rate, "variant", v.Name, "p50_ms", r.P50Ms, "p99_ms", r.P99Ms, "max_ms", r.MaxMs, "achieved_rate", int(r.AchievedRate), "max_queue_depth", r.MaxDepth, "missing", r.Missing)
	for _, s := range r.Breakdown {
		b.log.Info("latency breakdown", "rate", rate, "variant", v.Name, "stage", s.Stage, "p50_ms", s.P50Ms, "p99_ms", s.P99Ms, "max_ms", s.MaxMs)
	}
	return &r, nil
}

// measureIdle waits for the probe row's delete, gives the polls a moment to
// reach their longest wait, as the pinned section does, then measures the
// CPU of shipper and its sessions over -latency-idle-window.
func (b *bench) measureIdle(ctx context.Context, shipper *process, times *batchTimes) (*latencyIdle, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		empty, err := queueEmpty(ctx, b.pool)
		if err != nil {
			return nil, err
		}
		if empty {
			break
		}
		if time.Now().After(deadline) {
			return nil, errors.New("the queue was not empty within 10s of the probe row's arrival")
		}
		if err := sleepUntil(ctx, time.Now().Add(10*time.Millisecond)); err != nil {
			return nil, err
		}
	}
	if err := sleepUntil(ctx, time.Now().Add(2*time.Second)); err != nil {
		return nil, err
	}
	window := time.Duration(b.cfg.Latency.IdleWindow)
	b.log.Info("measuring idle CPU with an empty queue", "window", window)
	lines := times.lines.Load()
	core, err := b.idleCore(ctx, shipper, window)
	if err != nil {
		return nil, err
	}
	r := &latencyIdle{WindowSeconds: window.Seconds(), Core: core, LogLines: times.lines.Load() - lines}
	b.log.Info("idle", "core", fmt.Sprintf("%.1f%%", 100*core), "log_lines", r.LogLines)
	return r, nil
}

// addLatencies sums up arrival minus commit of rows 1..len-1, both indexed
// by row id; a zero arrival is a row that did not arrive.
func (r *latencyResult) addLatencies(commits, arrivals []time.Duration) {
	var latencies []time.Duration
	for id := 1; id < len(commits); id++ {
		if arrivals[id] == 0 {
			r.Missing++
			continue
		}
		latencies = append(latencies, arrivals[id]-commits[id])
	}
	r.Received = len(latencies)
	r.P50Ms, r.P99Ms, r.MaxMs = percentileMs(latencies, 50), percentileMs(latencies, 99), percentileMs(latencies, 100)
}

// createTopic creates topic up front, so that the consumer finds it at once
// instead of at its next metadata refresh.
func (b *bench) createTopic(ctx context.Context, topic string) error {
	_, err := b.kafka.CreateTopic(ctx, int32(b.cfg.Partitions), 1, nil, topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	return nil
}

// warmUp commits the probe row and waits for it to arrive.
func (b *bench) warmUp(ctx context.Context, consumer *arrivals) error {
	if _, err := b.pool.Exec(ctx, insertLatencySQL, probeID, "probe", "probe"); err != nil {
		return fmt.Errorf("write the probe row: %w", err)
	}
	return consumer.awaitProbe(ctx)
}

// awaitProbe waits for the probe row's record to arrive.
func (a *arrivals) awaitProbe(ctx context.Context) error {
	select {
	case <-a.probe:
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("the probe row did not reach the consumer within 30s")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writeAtRate commits rows 1..total, one per transaction, through
// -latency-writers connections paced together at rate commits per second:
// row i is not written before start + i/rate, so a writer that falls behind
// is caught up by the others.
// It returns when each row's commit returned, indexed by row id, and how long
// the writing took.
func (b *bench) writeAtRate(ctx context.Context, rate, total int, base time.Time) ([]time.Duration, time.Duration, error) {
	cfg := b.cfg.Latency
	conns, release, err := acquire(ctx, b.pool, cfg.Writers)
	if err != nil {
		return nil, 0, err
	}
	defer release()
	payload := randomText(payloadLen(200))
	interval := float64(time.Second) / float64(rate)
	commits := make([]time.Duration, total+1)
	var next atomic.Int64

	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for _, conn := range conns {
		g.Go(func() error {
			for {
				slot := next.Add(1) - 1
				if slot >= int64(total) {
					return nil
				}
				if err := sleepUntil(gctx, start.Add(time.Duration(float64(slot)*interval))); err != nil {
					return err
				}
				id := slot + 1
				if _, err := conn.Exec(gctx, insertLatencySQL, id, "customer-0001", payload); err != nil {
					return fmt.Errorf("write row %d: %w", id, err)
				}
				commits[id] = time.Since(base) // each id is written by one goroutine only
			}
		})
	}
	err = g.Wait()
	return commits, time.Since(start), err
}

// arrivals consumes a topic from its start and records when each row's event
// arrived, by the row id in the event's data.
type arrivals struct {
	client   *kgo.Client
	cancel   context.CancelFunc
	done     chan struct{}
	close    sync.Once
	probe    chan struct{} // closed when the probe row arrived
	received atomic.Int64  // distinct rows 1..total arrived
	// at is indexed by row id; only the consuming goroutine writes it, and
	// it is read once that goroutine has ended.
	at []time.Duration
	// uuids holds each row's event uuid, as its header gives it.
	uuids []string
}

func startArrivals(ctx context.Context, broker, topic string, total int, base time.Time) (*arrivals, error) {
	client, err := kgo.NewClient(
		kgo.SeedBrokers(broker),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	a := &arrivals{
		client: client,
		cancel: cancel,
		done:   make(chan struct{}),
		probe:  make(chan struct{}),
		at:     make([]time.Duration, total+1),
		uuids:  make([]string, total+1),
	}
	go a.consume(ctx, base)
	return a, nil
}

func (a *arrivals) consume(ctx context.Context, base time.Time) {
	defer close(a.done)
	probed := false
	for {
		fetches := a.client.PollFetches(ctx)
		if ctx.Err() != nil {
			return
		}
		now := time.Since(base)
		fetches.EachRecord(func(r *kgo.Record) {
			var event struct {
				Data struct {
					ID int64 `json:"id"`
				} `json:"data"`
			}
			if json.Unmarshal(r.Value, &event) != nil {
				return
			}
			switch id := event.Data.ID; {
			case id == probeID && !probed:
				probed = true
				close(a.probe)
			case id >= 1 && id < int64(len(a.at)) && a.at[id] == 0:
				a.at[id] = now
				a.received.Add(1)
				for _, h := range r.Headers {
					if h.Key == shipper.HeaderEventID {
						a.uuids[id] = string(h.Value)
					}
				}
			}
		})
	}
}

// waitFor waits until n rows have arrived, or for at most timeout.
func (a *arrivals) waitFor(ctx context.Context, n int, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for a.received.Load() < int64(n) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// stop ends the consumer and returns the arrival times by row id, zero for
// rows that did not arrive. It may be called more than once.
func (a *arrivals) stop() []time.Duration {
	a.cancel()
	<-a.done
	a.close.Do(a.client.Close)
	return a.at
}

// depthSampler counts the queue every interval and keeps the largest count.
type depthSampler struct {
	cancel context.CancelFunc
	done   chan struct{}
	max    int64
}

func sampleDepth(ctx context.Context, pool *pgxpool.Pool, every time.Duration) *depthSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &depthSampler{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if n, err := queueDepth(ctx, pool); err == nil {
				s.max = max(s.max, n)
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the largest depth seen. It may be
// called more than once.
func (s *depthSampler) stop() int64 {
	s.cancel()
	<-s.done
	return s.max
}

// percentileMs returns the p-th percentile (nearest rank) of ds in
// milliseconds, 0 if ds is empty; 100 is the maximum. ds is sorted in place.
func percentileMs(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := max(0, int(math.Ceil(p/100*float64(len(ds))))-1)
	return float64(ds[i]) / float64(time.Millisecond)
}

// sleepUntil waits until t or until ctx ends.
func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
