package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// freeze stops a random replica with SIGSTOP, under the writer's load, for
// one to two LANE_TAKEOVER_TIMEOUTs, wakes it with SIGCONT, and again,
// -freezes times. The frozen replica's lanes must pass to the others within
// the timeout, so no key waits much longer than that; a probe reading the
// topic as it fills measures how long each event written meanwhile took to
// arrive, and the report gives the longest.
func (s *scene) freeze(ctx context.Context) error {
	cfg := s.c.cfg
	w := startWriter(ctx, s.t, cfg.WriterRate, s.seed, nil, s.c.log)
	writing := true
	stopWriter := func() {
		if writing {
			w.stop()
			writing = false
			s.r.note("%s", w.summary())
		}
	}
	defer stopWriter()

	// The queue filled before the replicas started is drained first: the
	// waits measured are the freezes', not the backlog's.
	if err := s.drained(ctx, int64(max(cfg.WriterRate, 1000))); err != nil {
		return err
	}
	probe := startWaitProbe(ctx, s.c.broker.addr, s.topic, time.Now())
	defer probe.stop()

	var frozenFor time.Duration
	for i := range cfg.Freezes {
		r := s.rng.IntN(s.fl.size())
		p := s.fl.proc(r)
		hold := laneTakeoverTimeout + time.Duration(s.rng.Int64N(int64(laneTakeoverTimeout)))
		queued, _ := s.t.queued(ctx)
		s.c.log.Info("SIGSTOP", "freeze", i+1, "replica", r, "for", hold.Round(time.Millisecond), "queued", queued)
		if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			return fmt.Errorf("SIGSTOP replica %d: %w", r, err)
		}
		slept := sleepCtx(ctx, hold)
		// Woken even when chaos is interrupted, so that it can be stopped.
		if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			return fmt.Errorf("SIGCONT replica %d: %w", r, err)
		}
		if !slept {
			return ctx.Err()
		}
		frozenFor += hold
		if crashes := s.fl.crashed(); len(crashes) > 0 {
			return fmt.Errorf("during the freezes: %s", crashes[0])
		}
		if !sleepCtx(ctx, time.Second+time.Duration(s.rng.Int64N(int64(2*time.Second)))) {
			return ctx.Err()
		}
	}
	stopWriter()

	// Every event the writer added is read by the probe before it reports.
	if err := s.drained(ctx, 0); err != nil {
		return err
	}
	deadline := time.Now().Add(cfg.Timeout)
	for {
		end, err := endOffsets(ctx, s.c.kafka, s.topic)
		if err == nil && probe.read() >= end {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the wait probe read %d records of %d within %s", probe.read(), end, cfg.Timeout)
		}
		if !sleepCtx(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
	probe.stop()

	s.r.fault = fmt.Sprintf("%d freezes, %s frozen", cfg.Freezes, frozenFor.Round(time.Second))
	longest, what, measured := probe.result()
	s.r.note("longest any key waited for an event written during the freezes: %s (%s), over %d events; LANE_TAKEOVER_TIMEOUT=%s",
		longest.Round(time.Millisecond), what, measured, laneTakeoverTimeout)
	// A key of a frozen replica's lanes waits for the lanes to change hands
	// (within the timeout) and then for the new owner's batches: the bound
	// allows a SEND_TIMEOUT of those on a loaded machine.
	if limit := laneTakeoverTimeout + sendTimeout; longest > limit {
		s.r.fail("a key waited %s, over LANE_TAKEOVER_TIMEOUT + SEND_TIMEOUT = %s: %s", longest.Round(time.Millisecond), limit, what)
	}
	lost := 0
	for _, path := range s.fl.logPaths {
		if b, err := os.ReadFile(path); err == nil {
			lost += strings.Count(string(b), "lost its lanes")
		}
	}
	s.r.note("woken replicas' workers logged %d times that they had lost their lanes", lost)
	return nil
}

// checkFreezeDuplicates holds the freeze scenario to at most one batch sent
// again per freeze by each worker of the frozen replica.
func (s *scene) checkFreezeDuplicates() {
	d, bound := s.r.verdict.duplicates, int64(s.c.cfg.Freezes)*batchSize*workers
	s.r.note("duplicates: %d (bound: %d, a batch of %d per worker of each frozen replica)", d, bound, batchSize)
	if d > bound {
		s.r.fail("%d duplicates after %d freezes, more than %d", d, s.c.cfg.Freezes, bound)
	}
}

// drained waits until at most below events are queued.
func (s *scene) drained(ctx context.Context, below int64) error {
	deadline := time.Now().Add(s.c.cfg.Timeout)
	for {
		n, err := s.t.queued(ctx)
		if err == nil && n <= below {
			return nil
		}
		if crashes := s.fl.crashed(); len(crashes) > 0 {
			return fmt.Errorf("waiting for the queue to drain: %s", crashes[0])
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d events still queued after %s (last error: %v)", n, s.c.cfg.Timeout, err)
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// waitProbe reads a topic as it fills and measures, for each event written
// after from, how long it took from its commit (the record's timestamp, the
// event's created_at, taken from the same clock) to reach the topic; only a
// version's first arrival counts, not a replay.
type waitProbe struct {
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	mu       sync.Mutex
	records  int64
	measured int64
	longest  time.Duration
	what     string
}

func startWaitProbe(ctx context.Context, broker, topic string, from time.Time) *waitProbe {
	ctx, cancel := context.WithCancel(ctx)
	p := &waitProbe{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		client, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(topic),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
		if err != nil {
			return
		}
		defer client.Close()
		next := make(map[string]int) // key → next version not yet seen
		for ctx.Err() == nil {
			fetches := client.PollFetches(ctx)
			arrived := time.Now()
			fetches.EachRecord(func(r *kgo.Record) {
				var event struct {
					Data struct {
						Version int `json:"version"`
					} `json:"data"`
				}
				_ = json.Unmarshal(r.Value, &event)
				key, v := string(r.Key), event.Data.Version
				p.mu.Lock()
				defer p.mu.Unlock()
				p.records++
				if v < next[key] {
					return
				}
				next[key] = v + 1
				if r.Timestamp.Before(from) {
					return
				}
				p.measured++
				if wait := arrived.Sub(r.Timestamp); wait > p.longest {
					p.longest = wait
					p.what = fmt.Sprintf("key %s, version %d, committed %s", key, v, r.Timestamp.Format("15:04:05.000"))
				}
			})
		}
	}()
	return p
}

func (p *waitProbe) read() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.records
}

func (p *waitProbe) stop() {
	p.once.Do(func() {
		p.cancel()
		<-p.done
	})
}

func (p *waitProbe) result() (longest time.Duration, what string, measured int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.longest, p.what, p.measured
}
