package outbox_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pg2kafka/pg2kafka/internal/syncbuf"
	"github.com/pg2kafka/pg2kafka/outbox"
)

// watch runs q.Watch, checking every 5ms, until the test ends, logging to
// logs.
func watch(t *testing.T, q *outbox.Queue, logs *syncbuf.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.Watch(ctx, 5*time.Millisecond, slog.New(slog.NewTextHandler(logs, nil)))
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// awaitCondition fails the test unless cond holds within 10s.
func awaitCondition(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// An idle claimer need not poll: the queue's watcher waits in Postgres for
// an event id to be handed out, and wakes it when one is, whoever the
// writer, and only then.
func TestWatchWakesAnIdleClaimerWhenAnEventIsWritten(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
	)
	q := outbox.NewQueue(b.pool)
	c := q.NewClaimer(slog.New(slog.DiscardHandler), 0)
	t.Cleanup(func() { c.Close(context.Background()) })
	c.SetProbeInterval(time.Millisecond)
	rebalance(t, c)
	s := &shipper{c: c}
	var logs syncbuf.Buffer
	watch(t, q, &logs)
	awaitCondition(t, "watching", c.Watched)

	b.exec(t, `INSERT INTO items VALUES (1)`)
	s.drain(t, 100)
	s.idleUntilNothingPending(t)
	woken := c.Advanced()
	// Longer than the watcher's checks by far: it stays quiet while nothing
	// is written.
	time.Sleep(50 * time.Millisecond)
	if closed(woken) {
		t.Fatal("the claimer was woken with no event id handed out since its last look")
	}

	writer, _ := b.connect(t)
	writeAlone(t, writer, `INSERT INTO items VALUES (2)`)
	select {
	case <-woken:
	case <-time.After(10 * time.Second):
		t.Fatalf("the claimer was not woken within 10s of an event's commit; watcher logs:\n%s", &logs)
	}
	if !pending(t, c) {
		t.Fatal("Pending says nothing once the watcher has woken the claimer for an event")
	}
	s.drain(t, 100)

	// A claim covers what was written before it: what the watcher read
	// then wakes nobody.
	s.idleUntilNothingPending(t)
	if closed(c.Advanced()) {
		t.Fatal("the claimer would be woken again by an event it has claimed")
	}
	var keys []string
	for _, e := range s.shipped {
		keys = append(keys, *e.ExternalID)
	}
	if want := []string{"1", "2"}; !slices.Equal(keys, want) {
		t.Fatalf("shipped the events of items %v, want %v", keys, want)
	}
	if logs.String() != "" {
		t.Errorf("the watcher logged, with nothing wrong:\n%s", &logs)
	}
}

// A watcher that cannot wait says why and how to fix it, leaves the
// claimers to poll meanwhile, and waits again once it can.
func TestWatchSaysWhyItCannotWaitAndWaitsAgainOnceItCan(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(t, `ALTER FUNCTION pg2kafka.await_event_ids(bigint, integer, integer) RENAME TO await_event_ids_gone`)
	q := outbox.NewQueue(b.pool)
	q.SetWatchRetry(10 * time.Millisecond)
	c := q.NewClaimer(slog.New(slog.DiscardHandler), 0)
	t.Cleanup(func() { c.Close(context.Background()) })
	var logs syncbuf.Buffer
	watch(t, q, &logs)

	awaitCondition(t, "logged", func() bool { return logs.String() != "" })
	got := logs.String()
	for _, want := range []string{
		"level=WARN",
		`msg="cannot wait in Postgres for new events, so idle shippers poll every POLL_INTERVAL instead; retrying"`,
		"pg2kafka.await_event_ids(bigint, integer, integer) does not exist",
		`fix="the installed schema predates pg2kafka.await_event_ids: run pg2kafka migrate"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("watcher logged %q, want it to contain %q", got, want)
		}
	}
	if c.Watched() {
		t.Fatal("Watched says the watcher waits while it cannot")
	}
	if n := strings.Count(got, "\n"); n != 1 {
		t.Errorf("watcher logged %d lines while failing the same way, want 1:\n%s", n, got)
	}

	b.exec(t, `ALTER FUNCTION pg2kafka.await_event_ids_gone(bigint, integer, integer) RENAME TO await_event_ids`)
	awaitCondition(t, "watching", c.Watched)
	awaitCondition(t, "logged the recovery", func() bool {
		return strings.Contains(logs.String(), `level=INFO msg="waiting in Postgres for new events again"`)
	})
}

// A claim that finds events tells the queue's other claimers that ids were
// handed out: under traffic, one idle in other lanes hears of its own
// events at once, not at the watcher's next check.
func TestAClaimThatFindsEventsWakesTheOtherClaimers(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
	)
	q := outbox.NewQueue(b.pool)
	var claimers []*outbox.Claimer
	for range 2 {
		c := q.NewClaimer(slog.New(slog.DiscardHandler), 0)
		t.Cleanup(func() { c.Close(context.Background()) })
		claimers = append(claimers, c)
	}
	converge(t, claimers...)
	busy, idle := &shipper{c: claimers[0]}, &shipper{c: claimers[1]}
	idle.drain(t, 100)
	woken := idle.c.Advanced()

	// Twenty keys: the busy claimer's half of the lanes holds some of them
	// but for a chance of one in a million.
	b.exec(t, `INSERT INTO items SELECT generate_series(1, 20)`)
	busy.drain(t, 100)
	if len(busy.shipped) == 0 || len(busy.shipped) == 20 {
		t.Fatalf("the busy claimer shipped %d of 20 events, want some but not all", len(busy.shipped))
	}
	if !closed(woken) {
		t.Fatal("a claim that found events did not wake the other claimer")
	}
	idle.drain(t, 100)
	if got := len(busy.shipped) + len(idle.shipped); got != 20 {
		t.Fatalf("the claimers shipped %d events, want 20", got)
	}
	if closed(idle.c.Advanced()) {
		t.Fatal("the claimer would be woken again by events it has claimed")
	}
}
