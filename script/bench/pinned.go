package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// pinnedResult is the pinned section: what pg2kafka costs while a snapshot
// is held open beside it (pg_dump, a long report), which keeps every row it
// ships from being vacuumed away. Each phase measures the same four things,
// in one run: with no snapshot held, with one held after PinnedEvents events
// were shipped through it, and once it is released.
type pinnedResult struct {
	PinnedEvents int `json:"pinned_events"`
	// PinnedDrainPerSec is the rate at which those events were shipped, the
	// snapshot held.
	PinnedDrainPerSec float64       `json:"pinned_drain_per_sec"`
	Phases            []pinnedPhase `json:"phases"`
}

type pinnedPhase struct {
	Name string `json:"name"`
	// DeadRows is Postgres' estimate of the queue's dead rows once the
	// phase has shipped its events, and HorizonAge how old the oldest
	// snapshot holding them is then.
	DeadRows   int64   `json:"dead_rows"`
	HorizonAge float64 `json:"horizon_age_seconds"`
	// IdleCore is the CPU pg2kafka and its Postgres sessions use with
	// nothing to ship, as a share of one core.
	IdleCore float64 `json:"idle_core"`
	// EmptyClaimMs is the median time of a claim of the empty queue, from
	// the claimer's low-water id; HeadClaimMs the same claim from the head
	// of the queue, which is what every claim cost before low-water ids.
	EmptyClaimMs float64 `json:"empty_claim_ms"`
	HeadClaimMs  float64 `json:"head_claim_ms"`
	// Latency is commit→consumer at PinnedRate commits per second.
	Latency latencyResult `json:"latency"`
	// DrainPerSec is the drain rate of a backlog of PinnedBacklog events.
	DrainPerSec float64 `json:"drain_per_sec"`
}

// runPinned measures the three phases, each on a queue the one before left.
func (b *bench) runPinned(ctx context.Context) error {
	cfg := b.cfg.Pinned
	r := &pinnedResult{PinnedEvents: cfg.Events}
	b.report.Pinned = r
	if err := truncate(ctx, b.pool, eventsTable, latencyTable, "pg2kafka.outbound_event_queue"); err != nil {
		return err
	}
	if err := settle(ctx, b.pool, "pg2kafka.outbound_event_queue"); err != nil {
		return err
	}
	next := int64(1) // the next bench_events id; the queue is never truncated again, to keep its dead rows
	free, err := b.pinnedPhase(ctx, "no snapshot held", &next)
	if err != nil {
		return err
	}
	r.Phases = append(r.Phases, free)

	// A snapshot as pg_dump's: REPEATABLE READ, read-only, holding no lock
	// on the queue.
	holder, err := b.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer holder.Release()
	if _, err := holder.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`); err != nil {
		return err
	}
	if _, err := holder.Exec(ctx, `SELECT 1`); err != nil {
		return err
	}
	b.log.Info("snapshot held; shipping events through it", "events", cfg.Events)
	rate, err := b.pinnedDrain(ctx, &next, cfg.Events)
	if err != nil {
		return err
	}
	r.PinnedDrainPerSec = rate
	pinned, err := b.pinnedPhase(ctx, fmt.Sprintf("snapshot held, %s events shipped through it", thousands(cfg.Events)), &next)
	if err != nil {
		return err
	}
	r.Phases = append(r.Phases, pinned)

	if _, err := holder.Exec(ctx, `ROLLBACK`); err != nil {
		return err
	}
	released, err := b.pinnedPhase(ctx, "snapshot released, before vacuum", &next)
	if err != nil {
		return err
	}
	r.Phases = append(r.Phases, released)
	return nil
}

// pinnedPhase measures one phase: the drain of a backlog, then, with the
// same pg2kafka, its idle cost and latency, then the claim of the empty
// queue by a claimer of the suite's own.
//
// The backlog arrives at a pg2kafka already running, committed at once, as
// it does in production, where pg2kafka is running when a snapshot is taken
// and when it is released: a pg2kafka started with the dead rows in place
// walks them once, at its first claim, and that walk is timed on its own
// (HeadClaimMs), not counted in the drain.
func (b *bench) pinnedPhase(ctx context.Context, name string, next *int64) (pinnedPhase, error) {
	cfg := b.cfg.Pinned
	p := pinnedPhase{Name: name}
	b.log.Info("pinned phase", "name", name)
	// Every phase starts from a checkpoint, as the first does, so that a
	// later phase's drain does not also carry the checkpoint and the
	// full-page writes that the million events before it brought on.
	if _, err := b.pool.Exec(ctx, "CHECKPOINT"); err != nil {
		return p, err
	}
	topic := b.topic(eventsTable)
	base, err := b.recordsOn(ctx, topic)
	if err != nil {
		return p, err
	}
	shipper, err := b.startShipper(b.bin.pg2kafka, b.cfg.BatchSize)
	if err != nil {
		return p, err
	}
	defer func() { _, _ = shipper.Stop(stopTimeout) }()
	if err := b.waitAllLanesOwned(ctx, shipper); err != nil {
		return p, err
	}
	// A moment for its first claims, which walk from the head of the
	// queue, to have found their low-water ids.
	if err := sleepUntil(ctx, time.Now().Add(time.Second)); err != nil {
		return p, err
	}
	start, err := b.burstFrom(ctx, *next, cfg.Backlog)
	if err != nil {
		return p, err
	}
	*next += int64(cfg.Backlog)
	if err := b.waitDrained(ctx, shipper, topic, base+int64(cfg.Backlog)); err != nil {
		return p, err
	}
	p.DrainPerSec = float64(cfg.Backlog) / time.Since(start).Seconds()

	// Idle: a moment for the polls to reach their longest wait, then the
	// CPU of the process and of its sessions over the window.
	if err := sleepUntil(ctx, time.Now().Add(2*time.Second)); err != nil {
		return p, err
	}
	if p.IdleCore, err = b.idleCore(ctx, shipper, time.Duration(cfg.IdleWindow)); err != nil {
		return p, err
	}

	if p.Latency, err = b.latencyAt(ctx, cfg.Rate); err != nil {
		return p, err
	}
	if _, err := shipper.Stop(stopTimeout); err != nil {
		return p, err
	}

	h, err := outbox.OldestHorizon(ctx, b.pool)
	if err != nil {
		return p, err
	}
	p.DeadRows, p.HorizonAge = h.DeadRows, h.Age(time.Now()).Seconds()
	if p.HeadClaimMs, p.EmptyClaimMs, err = b.emptyClaims(ctx); err != nil {
		return p, err
	}
	b.log.Info("pinned phase measured", "name", name, "dead_rows", p.DeadRows, "idle_core", percent(p.IdleCore),
		"empty_claim_ms", p.EmptyClaimMs, "head_claim_ms", p.HeadClaimMs, "p99_ms", p.Latency.P99Ms, "drain_per_sec", int(p.DrainPerSec))
	return p, nil
}

// burstFrom queues n events as fillFrom does, in one transaction, and
// returns when it committed.
func (b *bench) burstFrom(ctx context.Context, first int64, n int) (time.Time, error) {
	payload := randomText(payloadSpread + payloadLen(200))
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		return time.Time{}, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	for lo := first; lo < first+int64(n); lo += fillChunk {
		hi := min(lo+fillChunk, first+int64(n)) - 1
		if _, err := tx.Exec(ctx, fillSQL, lo, hi, []byte(payload), payloadSpread, payloadLen(200)); err != nil {
			return time.Time{}, fmt.Errorf("fill bench_events: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return time.Time{}, fmt.Errorf("fill bench_events: %w", err)
	}
	return time.Now(), nil
}

// waitAllLanesOwned waits until pg2kafka's claimers own every lane.
func (b *bench) waitAllLanesOwned(ctx context.Context, shipper *process) error {
	return b.waitFor(ctx, shipper, func() (bool, error) {
		conns, err := outbox.Shippers(ctx, b.pool)
		owned := 0
		for _, c := range conns {
			owned += len(c.Lanes)
		}
		return owned == outbox.Lanes, err
	})
}

// pinnedDrain queues n events and ships them with a pg2kafka of their own,
// returning the rate.
func (b *bench) pinnedDrain(ctx context.Context, next *int64, n int) (float64, error) {
	if err := b.fillFrom(ctx, *next, n); err != nil {
		return 0, err
	}
	*next += int64(n)
	topic := b.topic(eventsTable)
	base, err := b.recordsOn(ctx, topic)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	shipper, err := b.startShipper(b.bin.pg2kafka, b.cfg.BatchSize)
	if err != nil {
		return 0, err
	}
	defer func() { _, _ = shipper.Stop(stopTimeout) }()
	if err := b.waitDrained(ctx, shipper, topic, base+int64(n)); err != nil {
		return 0, err
	}
	rate := float64(n) / time.Since(start).Seconds()
	_, err = shipper.Stop(stopTimeout)
	return rate, err
}

// fillFrom queues n events of about 200 bytes, rows first.. of
// bench_events, without emptying the queue first as fillQueue does: the
// queue's dead rows are what is measured.
func (b *bench) fillFrom(ctx context.Context, first int64, n int) error {
	start := time.Now()
	payload := randomText(payloadSpread + payloadLen(200))
	for lo := first; lo < first+int64(n); lo += fillChunk {
		hi := min(lo+fillChunk, first+int64(n)) - 1
		if _, err := b.pool.Exec(ctx, fillSQL, lo, hi, []byte(payload), payloadSpread, payloadLen(200)); err != nil {
			return fmt.Errorf("fill bench_events: %w", err)
		}
	}
	b.log.Info("queue filled", "events", n, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// idleCore returns the CPU shipper and its Postgres sessions used over
// window, as a share of one core.
func (b *bench) idleCore(ctx context.Context, shipper *process, window time.Duration) (float64, error) {
	pids := []int{shipper.cmd.Process.Pid}
	rows, err := b.pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pg2kafka'`)
	if err != nil {
		return 0, err
	}
	sessions, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return 0, err
	}
	if len(sessions) == 0 {
		return 0, errors.New("pg2kafka's sessions are not in pg_stat_activity under application_name pg2kafka")
	}
	for _, pid := range sessions {
		pids = append(pids, int(pid))
	}
	before, err := cpuTicks(pids)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := sleepUntil(ctx, start.Add(window)); err != nil {
		return 0, err
	}
	after, err := cpuTicks(pids)
	if err != nil {
		return 0, err
	}
	return float64(after-before) / clockTicks / time.Since(start).Seconds(), nil
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat's times:
// 100 on every Linux build that matters.
const clockTicks = 100

// cpuTicks sums the user and system time of pids, from /proc/<pid>/stat.
func cpuTicks(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return 0, fmt.Errorf("CPU time of %d (is Postgres on this machine?): %w", pid, err)
		}
		// The command name, in parentheses, may hold spaces; the fields
		// after it start with the state, so utime and stime are the 12th
		// and 13th.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) < 13 {
			return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
		}
		for _, f := range fields[11:13] {
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
			}
			total += n
		}
	}
	return total, nil
}

// latencyAt measures commit→consumer latency at rate commits per second
// for -latency-duration, against the pg2kafka already running.
func (b *bench) latencyAt(ctx context.Context, rate int) (latencyResult, error) {
	saved := b.cfg.Latency
	defer func() { b.cfg.Latency = saved }()
	b.cfg.Latency.Rate = rate
	cfg := b.cfg.Latency
	total := int(float64(rate) * time.Duration(cfg.Duration).Seconds())
	if err := truncate(ctx, b.pool, latencyTable); err != nil {
		return latencyResult{}, err
	}
	topic := b.topic(latencyTable)
	b.deleteTopic(ctx, topic) // the last phase's records would count as this one's
	if err := b.createTopic(ctx, topic); err != nil {
		return latencyResult{}, err
	}
	base := time.Now()
	consumer, err := startArrivals(ctx, b.broker, topic, total, base)
	if err != nil {
		return latencyResult{}, err
	}
	defer consumer.stop()
	if err := b.warmUp(ctx, consumer); err != nil {
		return latencyResult{}, err
	}
	commits, writeTime, err := b.writeAtRate(ctx, rate, total, base)
	if err != nil {
		return latencyResult{}, err
	}
	consumer.waitFor(ctx, total, time.Duration(b.cfg.Timeout))
	r := latencyResult{TargetRate: rate, Writers: cfg.Writers, Committed: total, WriteSeconds: writeTime.Seconds(), AchievedRate: float64(total) / writeTime.Seconds()}
	r.addLatencies(commits, consumer.stop())
	return r, nil
}

// emptyClaims times claims of the empty queue by a claimer of the suite's
// own, holding every lane while no pg2kafka runs: its first claim, from the
// head of the queue, and the median of later ones, once it has found its
// low-water id.
func (b *bench) emptyClaims(ctx context.Context) (headMs, lowMs float64, err error) {
	c := outbox.NewQueue(b.pool).NewClaimer(slog.New(slog.DiscardHandler), 0)
	defer c.Close(context.WithoutCancel(ctx))
	if err := c.Join(ctx); err != nil {
		return 0, 0, err
	}
	for balanced := false; !balanced; {
		if balanced, err = c.Rebalance(ctx); err != nil {
			return 0, 0, err
		}
	}
	claim := func() (time.Duration, error) {
		start := time.Now()
		batch, err := c.Claim(ctx, b.cfg.BatchSize, nil)
		if err != nil {
			return 0, err
		}
		took := time.Since(start)
		if len(batch.Events) > 0 {
			return 0, fmt.Errorf("the queue holds %d events; want it empty", len(batch.Events))
		}
		return took, batch.Rollback(ctx)
	}
	head, err := claim()
	if err != nil {
		return 0, 0, err
	}
	// A claimer finds its low-water id within a few claims and a probe of
	// the id sequence; a second's worth of idle polls is plenty.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		if _, err := claim(); err != nil {
			return 0, 0, err
		}
		if err := sleepUntil(ctx, time.Now().Add(20*time.Millisecond)); err != nil {
			return 0, 0, err
		}
	}
	var times []time.Duration
	for range 51 {
		took, err := claim()
		if err != nil {
			return 0, 0, err
		}
		times = append(times, took)
	}
	slices.Sort(times)
	return ms(head), ms(times[len(times)/2]), nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// pinnedRows are the pinned section's lines of the table: each phase's
// figures, and the held phases against the free one.
func (r *report) pinnedRows() []row {
	p := r.Pinned
	if p == nil || len(p.Phases) == 0 {
		return nil
	}
	var rows []row
	free := p.Phases[0]
	for i, ph := range p.Phases {
		label := "pinned: " + ph.Name
		rows = append(rows,
			row{Measure: label + ": dead rows in the queue", Value: thousands(ph.DeadRows)},
			check(label+": idle CPU, pg2kafka and its sessions", percent(ph.IdleCore), "≤ "+percent(targetPinnedIdleCore)+" of a core", ph.IdleCore <= targetPinnedIdleCore),
			check(label+": claim of the empty queue (from the head of the queue)",
				fmt.Sprintf("%.2f ms (%.2f ms)", ph.EmptyClaimMs, ph.HeadClaimMs), fmt.Sprintf("≤ %d ms", targetPinnedClaimMs), ph.EmptyClaimMs <= targetPinnedClaimMs),
		)
		lat := fmt.Sprintf("%.1f / %.1f / %.1f ms", ph.Latency.P50Ms, ph.Latency.P99Ms, ph.Latency.MaxMs)
		drain := perSec(ph.DrainPerSec, "events")
		if i == 0 {
			rows = append(rows,
				row{Measure: fmt.Sprintf("%s: latency p50 / p99 / max at %s/s", label, thousands(ph.Latency.TargetRate)), Value: lat},
				row{Measure: fmt.Sprintf("%s: drain of a %s backlog", label, thousands(r.Config.Pinned.Backlog)), Value: drain})
			continue
		}
		p99 := ph.Latency.P99Ms / free.Latency.P99Ms
		loss := 1 - ph.DrainPerSec/free.DrainPerSec
		rows = append(rows,
			check(fmt.Sprintf("%s: latency p50 / p99 / max at %s/s (p99 ÷ free)", label, thousands(ph.Latency.TargetRate)),
				fmt.Sprintf("%s (%.2f)", lat, p99), fmt.Sprintf("≤ %d×", targetPinnedP99Ratio), p99 <= targetPinnedP99Ratio && ph.Latency.Missing == 0),
			check(fmt.Sprintf("%s: drain of a %s backlog (÷ free)", label, thousands(r.Config.Pinned.Backlog)),
				fmt.Sprintf("%s (%.2f)", drain, ph.DrainPerSec/free.DrainPerSec), "≥ "+percent(1-targetPinnedDrainLoss), loss <= targetPinnedDrainLoss))
	}
	rows = append(rows, row{Measure: fmt.Sprintf("pinned: drain of %s events with the snapshot held", thousands(p.PinnedEvents)), Value: perSec(p.PinnedDrainPerSec, "events")})
	return rows
}
