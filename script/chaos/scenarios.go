package main

import (
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"sync"
	"time"
)

// result is one scenario's outcome, as the report shows it.
type result struct {
	name     string
	events   int64 // written to the table: every version of every row
	fault    string
	kills    int
	verdict  verdict
	maxTxAge time.Duration
	maxRSS   int64
	failures []string
	notes    []string
}

func (r *result) fail(format string, args ...any) {
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

func (r *result) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r *result) verdictWord() string {
	if len(r.failures) > 0 {
		return "FAIL"
	}
	return "pass"
}

// scene is what a scenario's fault works with.
type scene struct {
	c     *chaos
	t     *table
	topic string
	fl    *fleet
	mon   *monitor
	r     *result
	rng   *rand.Rand
	seed  uint64
}

// runScenario runs one scenario on a fresh table and topic: fill the queue,
// start the replicas, inject the fault, wait for the drain, stop the
// replicas and verify the topic.
func (c *chaos) runScenario(ctx context.Context, name string) *result {
	r := &result{name: name}
	if err := c.scenario(ctx, name, r); err != nil {
		r.fail("%v", err)
	}
	return r
}

func (c *chaos) scenario(ctx context.Context, name string, r *result) error {
	h := fnv.New64a()
	h.Write([]byte(name))
	s := &scene{c: c, r: r, seed: c.cfg.Seed ^ h.Sum64()}
	s.rng = rand.New(rand.NewPCG(s.seed, 1))

	// The queue is empty between scenarios, but full of the dead rows of the
	// last one's events, which every claim would have to step over: with
	// autovacuum off, as on some development servers, that slows the next
	// drain down several times over.
	if _, err := c.pool.Exec(ctx, `VACUUM pg2kafka.outbound_event_queue`); err != nil {
		return fmt.Errorf("vacuum the queue: %w", err)
	}
	t, err := createTable(ctx, c.pool, "chaos_counters_"+name, c.cfg.Keys)
	if err != nil {
		return err
	}
	s.t, s.topic = t, c.topic(t.name)
	start := time.Now()
	filled, err := t.fill(ctx, c.cfg.Events, c.cfg.Pad, c.log)
	if err != nil {
		return err
	}
	c.log.Info("queue filled", "table", t.name, "events", filled, "took", time.Since(start).Round(time.Millisecond))

	env := make([][]string, replicaCount)
	for i := range env {
		env[i] = c.replicaEnv(i)
	}
	s.fl = newFleet(c.bins.pg2kafka, c.logDir, name, env)
	// For early returns: the normal path stops the replicas itself, and
	// checks how they stop.
	defer s.fl.terminateAll(shutdownTimeout + 5*time.Second)
	if err := s.fl.startAll(); err != nil {
		return err
	}
	s.mon = startMonitor(ctx, c, s.fl)
	defer s.mon.stop()

	faults := map[string]func(context.Context) error{
		scenarioKill:     s.kill,
		scenarioBroker:   s.brokerOutage,
		scenarioPostgres: s.postgresFaults,
		scenarioSigterm:  s.sigterm,
		scenarioFreeze:   s.freeze,
	}
	if err := faults[name](ctx); err != nil {
		return err
	}

	c.log.Info("waiting for the queue to empty and the topic to settle", "topic", s.topic)
	records, err := c.settled(ctx, t, s.topic, s.fl, c.cfg.Timeout)
	if err != nil {
		return err
	}
	s.mon.stop()
	var oldest string
	r.maxTxAge, oldest, r.maxRSS = s.mon.max()
	if r.maxTxAge > sendTimeout {
		r.note("oldest pg2kafka transaction seen: %s old, over SEND_TIMEOUT (%s): %s", r.maxTxAge.Round(time.Millisecond), sendTimeout, oldest)
	}

	// A clean stop at the end: every replica must exit 0 in time.
	for _, res := range s.fl.terminateAll(shutdownTimeout + 5*time.Second) {
		switch {
		case res.err != nil:
			r.fail("final stop: %v", res.err)
		case res.exitErr != nil:
			r.fail("final stop: replica %d exited with %v after SIGTERM (log: %s)", res.replica, res.exitErr, s.fl.logPaths[res.replica])
		}
	}
	for _, crash := range s.fl.crashed() {
		r.fail("%s", crash)
	}
	// Anything that reached the topic after the wait is read too.
	if after, err := endOffsets(ctx, c.kafka, s.topic); err == nil && after != records {
		r.note("%d records reached the topic after the queue was empty and the topic had settled", after-records)
		records = after
	}

	c.log.Info("verifying", "topic", s.topic, "records", records)
	v, err := c.verify(ctx, t, s.topic, records, c.cfg.Timeout)
	r.verdict = v
	r.events = v.written
	if err != nil {
		return err
	}
	if v.lost > 0 {
		r.fail("%d events lost", v.lost)
	}
	if v.reordered > 0 {
		r.fail("%d events out of order", v.reordered)
	}
	if v.unexpected > 0 {
		r.fail("%d records that were never written", v.unexpected)
	}
	if len(r.failures) > 0 || v.lost+v.reordered+v.unexpected > 0 {
		for _, e := range v.examples {
			r.note("e.g. %s", e)
		}
	}
	switch name {
	case scenarioKill:
		s.checkKillDuplicates()
	case scenarioFreeze:
		s.checkFreezeDuplicates()
	case scenarioBroker:
		if limit := sendTimeout + 5*time.Second; r.maxTxAge >= limit {
			r.fail("a pg2kafka session held a transaction open for %s across the outage, not under SEND_TIMEOUT + 5s = %s", r.maxTxAge.Round(time.Millisecond), limit)
		}
	case scenarioSigterm:
		if v.duplicates > 0 {
			r.fail("%d duplicates after clean SIGTERM stops; want none", v.duplicates)
		}
	}
	return nil
}

// kill kills -9 a random replica at random moments, 100ms to 1s apart, and
// restarts it at once, until the queue is empty and there were at least
// -kills kills. While there were fewer, the writer tops the queue up with a
// round of updates whenever it runs low, so that the kills happen during a
// drain, not against an idle fleet.
func (s *scene) kill(ctx context.Context) error {
	cfg := s.c.cfg
	var mu sync.Mutex
	kills := 0
	enough := func() bool { mu.Lock(); defer mu.Unlock(); return kills >= cfg.Kills }
	topUp := func(ctx context.Context) bool {
		if enough() {
			return false
		}
		n, err := s.t.queued(ctx)
		return err == nil && n < int64(s.t.keys)
	}
	w := startWriter(ctx, s.t, cfg.WriterRate, s.seed, topUp, s.c.log)
	writing := true
	stopWriter := func() {
		if writing {
			w.stop()
			writing = false
			s.r.note("%s", w.summary())
		}
	}
	defer stopWriter()

	deadline := time.Now().Add(cfg.Timeout)
	nextLog := time.Now().Add(10 * time.Second)
	for {
		if enough() {
			// Enough kills: let the queue run dry, still killing.
			stopWriter()
			n, err := s.t.queued(ctx)
			if err == nil && n == 0 {
				break
			}
		}
		if crashes := s.fl.crashed(); len(crashes) > 0 {
			return fmt.Errorf("during the kills: %s", crashes[0])
		}
		if time.Now().After(deadline) {
			n, _ := s.t.queued(ctx)
			return fmt.Errorf("after %d kills in %s, %d events still queued", kills, cfg.Timeout, n)
		}
		if time.Now().After(nextLog) {
			n, _ := s.t.queued(ctx)
			s.c.log.Info("killing", "kills", kills, "queued", n)
			nextLog = time.Now().Add(10 * time.Second)
		}
		if !sleepCtx(ctx, 100*time.Millisecond+time.Duration(s.rng.Int64N(int64(900*time.Millisecond)))) {
			return ctx.Err()
		}
		i := s.rng.IntN(s.fl.size())
		if err := s.fl.proc(i).kill(); err != nil {
			return err
		}
		mu.Lock()
		kills++
		mu.Unlock()
		if err := s.fl.start(i); err != nil {
			return err
		}
	}
	s.r.fault, s.r.kills = fmt.Sprintf("%d kills", kills), kills
	return nil
}

// checkKillDuplicates holds the kill scenario to at most one batch sent
// again per kill by each worker of the killed replica.
func (s *scene) checkKillDuplicates() {
	kills := s.r.kills
	if kills == 0 {
		return
	}
	d := s.r.verdict.duplicates
	s.r.note("duplicates per kill: %.1f (bound: %d, a batch of %d per worker, %d workers)", float64(d)/float64(kills), batchSize*workers, batchSize, workers)
	if bound := int64(kills) * batchSize * workers; d > bound {
		s.r.fail("%d duplicates after %d kills, more than %d (one batch of %d per worker of the killed replica)", d, kills, bound, batchSize)
	}
}

// midDrain waits until a tenth of the filled events have reached the topic:
// the fault then strikes a drain in full flow.
func (s *scene) midDrain(ctx context.Context) error {
	want := int64(s.c.cfg.Events / 10)
	ctx, cancel := context.WithTimeout(ctx, s.c.cfg.Timeout)
	defer cancel()
	for {
		n, err := endOffsets(ctx, s.c.kafka, s.topic)
		if err == nil && n >= want {
			q, _ := s.t.queued(ctx)
			s.c.log.Info("mid-drain", "records", n, "queued", q)
			return nil
		}
		if crashes := s.fl.crashed(); len(crashes) > 0 {
			return fmt.Errorf("before the fault: %s", crashes[0])
		}
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return fmt.Errorf("waiting for %d records on %s before the fault: %v (last: %d, %v)", want, s.topic, ctx.Err(), n, err)
		}
	}
}

// brokerOutage stops the broker mid-drain for -outage while a writer keeps
// adding events, then starts it again. Meanwhile every replica must stay up,
// within -max-rss, and hold no transaction open for longer than
// SEND_TIMEOUT + 5s.
func (s *scene) brokerOutage(ctx context.Context) error {
	cfg := s.c.cfg
	w := startWriter(ctx, s.t, cfg.WriterRate, s.seed, nil, s.c.log)
	defer func() { s.r.note("%s", w.summary()) }()
	defer w.stop()
	if err := s.midDrain(ctx); err != nil {
		return err
	}

	s.c.log.Info("stopping the broker", "outage", cfg.Outage)
	if err := s.c.broker.stop(); err != nil {
		return err
	}
	s.mon.startWindow()
	s.r.fault = cfg.Outage.String() + " outage"
	end := time.Now().Add(cfg.Outage)
	for time.Now().Before(end) {
		if !sleepCtx(ctx, min(time.Second, time.Until(end))) {
			_ = s.c.broker.start(context.WithoutCancel(ctx)) // so that the deferred stop finds it
			return ctx.Err()
		}
		if crashes := s.fl.crashed(); len(crashes) > 0 {
			s.r.fail("during the outage: %s", crashes[0])
		}
	}
	// The transaction age is checked over the whole scenario, once it is
	// over: a claim begun as the broker went away and still open as it
	// came back was open for the whole outage, though at no sample during
	// it was it older than the outage.
	txAge, rssMax := s.mon.windowMax()
	s.r.note("during the outage: oldest pg2kafka transaction %s, most resident memory of a replica %s", txAge.Round(time.Millisecond), mib(rssMax))
	if limit := int64(cfg.MaxRSSMiB) << 20; rssMax > limit {
		s.r.fail("during the outage a replica's resident memory reached %s, over -max-rss %d MiB", mib(rssMax), cfg.MaxRSSMiB)
	}

	s.c.log.Info("starting the broker again")
	if err := s.c.broker.start(ctx); err != nil {
		return err
	}
	return nil
}

// postgresFaults terminates every pg2kafka session mid-drain, -terminations
// times a second apart, then restarts the Postgres server, while a writer
// keeps adding events. The replicas must reconnect and resume on their own.
func (s *scene) postgresFaults(ctx context.Context) error {
	cfg := s.c.cfg
	w := startWriter(ctx, s.t, cfg.WriterRate, s.seed, nil, s.c.log)
	defer func() { s.r.note("%s", w.summary()) }()
	defer w.stop()
	if err := s.midDrain(ctx); err != nil {
		return err
	}
	sessions := 0
	for i := range cfg.Terminations {
		if i > 0 && !sleepCtx(ctx, time.Second) {
			return ctx.Err()
		}
		n, err := terminateSessions(ctx, s.c.pool)
		if err != nil {
			return fmt.Errorf("terminate pg2kafka's sessions: %w", err)
		}
		sessions += n
	}
	s.r.fault = fmt.Sprintf("%d terminations (%d sessions)", cfg.Terminations, sessions)
	s.c.log.Info("terminated pg2kafka's sessions", "rounds", cfg.Terminations, "sessions", sessions)
	if !sleepCtx(ctx, time.Second) {
		return ctx.Err()
	}

	s.c.log.Info("restarting Postgres")
	skipped, err := restartServer(ctx, s.c.pool)
	if err != nil {
		return err
	}
	if skipped != "" {
		s.c.log.Warn(skipped)
		s.r.note("%s", skipped)
		s.r.fault += ", no restart"
		return nil
	}
	if err := waitPostgres(ctx, s.c.pool, 2*time.Minute); err != nil {
		return err
	}
	// Every connection chaos held died with the server.
	s.c.pool.Reset()
	s.r.fault += " + server restart"
	s.c.log.Info("Postgres is back")
	return nil
}

// sigterm stops every replica with SIGTERM under load, -sigterm-rounds
// times, and restarts them. Each must exit 0 within SHUTDOWN_TIMEOUT + 5s,
// and a clean stop must send nothing twice.
func (s *scene) sigterm(ctx context.Context) error {
	cfg := s.c.cfg
	w := startWriter(ctx, s.t, cfg.HeavyRate, s.seed, nil, s.c.log)
	defer func() { s.r.note("%s", w.summary()) }()
	defer w.stop()
	limit := shutdownTimeout + 5*time.Second
	var slowest time.Duration
	for round := range cfg.SigtermRounds {
		// Let the restarted replicas get going: records must be flowing.
		before, _ := endOffsets(ctx, s.c.kafka, s.topic)
		if !sleepCtx(ctx, 2*time.Second) {
			return ctx.Err()
		}
		for deadline := time.Now().Add(time.Minute); ; {
			n, err := endOffsets(ctx, s.c.kafka, s.topic)
			if err == nil && n > before {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("round %d: no records flowed within a minute of starting the replicas (last error: %v)", round+1, err)
			}
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return ctx.Err()
			}
		}
		queued, _ := s.t.queued(ctx)
		s.c.log.Info("SIGTERM to every replica", "round", round+1, "queued", queued)
		for _, res := range s.fl.terminateAll(limit) {
			slowest = max(slowest, res.took)
			switch {
			case res.err != nil:
				s.r.fail("round %d: %v", round+1, res.err)
			case res.exitErr != nil:
				s.r.fail("round %d: replica %d exited with %v after SIGTERM (log: %s)", round+1, res.replica, res.exitErr, s.fl.logPaths[res.replica])
			case res.took > limit:
				s.r.fail("round %d: replica %d took %s to exit, over SHUTDOWN_TIMEOUT + 5s = %s", round+1, res.replica, res.took.Round(time.Millisecond), limit)
			}
		}
		if err := s.fl.startAll(); err != nil {
			return err
		}
	}
	s.r.fault = fmt.Sprintf("%d SIGTERM rounds", cfg.SigtermRounds)
	s.r.note("slowest exit after SIGTERM: %s (limit %s)", slowest.Round(time.Millisecond), limit)
	return nil
}

// monitor samples, every second, the replicas' resident memory and the age
// of the oldest transaction a pg2kafka session holds open. It keeps the
// maxima over the whole scenario and over a window that startWindow opens.
type monitor struct {
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	mu        sync.Mutex
	maxTx     time.Duration
	maxTxWhat string // what the session of the oldest transaction was doing
	maxRSS    int64
	windowTx  time.Duration
	windowRSS int64
}

func startMonitor(ctx context.Context, c *chaos, fl *fleet) *monitor {
	ctx, cancel := context.WithCancel(ctx)
	m := &monitor{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			var highRSS int64
			for _, pid := range fl.pids() {
				if n, err := rss(pid); err == nil {
					highRSS = max(highRSS, n)
				}
			}
			qctx, cancelQuery := context.WithTimeout(ctx, 900*time.Millisecond)
			age, what, err := oldestTransaction(qctx, c.pool)
			cancelQuery()
			m.mu.Lock()
			m.maxRSS, m.windowRSS = max(m.maxRSS, highRSS), max(m.windowRSS, highRSS)
			if err == nil {
				if age > m.maxTx {
					m.maxTx, m.maxTxWhat = age, what
				}
				m.windowTx = max(m.windowTx, age)
			}
			m.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return m
}

func (m *monitor) stop() {
	m.once.Do(func() {
		m.cancel()
		<-m.done
	})
}

func (m *monitor) max() (time.Duration, string, int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.maxTx, m.maxTxWhat, m.maxRSS
}

func (m *monitor) startWindow() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.windowTx, m.windowRSS = 0, 0
}

func (m *monitor) windowMax() (time.Duration, int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.windowTx, m.windowRSS
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
