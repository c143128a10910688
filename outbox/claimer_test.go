package outbox_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

func (b *bundle) claimer(t *testing.T) *outbox.Claimer {
	t.Helper()
	c := outbox.NewQueue(b.pool).NewClaimer(slog.New(slog.DiscardHandler), 0)
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func rebalance(t *testing.T, claimers ...*outbox.Claimer) {
	t.Helper()
	for _, c := range claimers {
		if _, err := c.Rebalance(t.Context()); err != nil {
			t.Fatalf("Rebalance: %v", err)
		}
	}
}

// converge rebalances the claimers in rounds until they own every lane
// exactly once, in shares no larger than the fair share, and fails the test
// if that takes more than a few rounds. Rounds are needed because a lane is
// taken only once its owner has let it go, and Postgres frees the locks of
// a closed session a moment after the session is gone.
func converge(t *testing.T, claimers ...*outbox.Claimer) {
	t.Helper()
	fair := (outbox.Lanes + len(claimers) - 1) / len(claimers)
	var split string
	for round := 0; round < 50; round++ {
		rebalance(t, claimers...)
		var all []int32
		ok := true
		for _, c := range claimers {
			ok = ok && len(c.Lanes()) <= fair
			all = append(all, c.Lanes()...)
		}
		slices.Sort(all)
		if ok && len(all) == outbox.Lanes && len(slices.Compact(all)) == outbox.Lanes {
			return
		}
		split = ""
		for _, c := range claimers {
			split += fmt.Sprintf(" %v", c.Lanes())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("claimers did not converge on a fair split of %d lanes, at most %d each; they own:%s", outbox.Lanes, fair, split)
}

func TestClaimersShareTheLanes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.claimer(t)
	rebalance(t, first)
	if n := len(first.Lanes()); n != outbox.Lanes {
		t.Fatalf("a lone claimer owns %d lanes, want all %d", n, outbox.Lanes)
	}

	// Two more arrive: the first gives up lanes over its share, the
	// newcomers take the free ones.
	second, third := b.claimer(t), b.claimer(t)
	converge(t, first, second, third)

	// One leaves: its lanes are taken over.
	second.Close(t.Context())
	converge(t, first, third)
}

func TestLostConnectionReleasesLanesAndClaim(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		`INSERT INTO items SELECT generate_series(1, 10)`,
	)
	owner, heir := b.claimer(t), b.claimer(t)
	rebalance(t, owner)
	batch, err := owner.Claim(t.Context(), 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(batch.Events) != 10 {
		t.Fatalf("claimed %d events, want 10", len(batch.Events))
	}

	// The owner's connection dies mid-batch, as when its process is killed.
	b.exec(t, `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND objsubid = 2 AND classid = x'70676b00'::int::oid
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	// The claim is undone once Postgres has ended the session.
	waitForCount(t, b, `SELECT count(*) FROM pg2kafka.outbound_event_queue`, 10)

	converge(t, heir)
	taken, err := heir.Claim(t.Context(), 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(taken.Events), ids(batch.Events); !slices.Equal(got, want) {
		t.Fatalf("heir claimed %v, want the dead owner's %v", got, want)
	}
	if err := taken.Complete(t.Context(), ids(taken.Events)); err != nil {
		t.Fatal(err)
	}

	// The owner comes back on its next use, with no lanes until it asks.
	if err := batch.Complete(t.Context(), ids(batch.Events)); err == nil {
		t.Fatal("completing a batch over a dead connection succeeded")
	}
	converge(t, owner, heir)
}

func TestClaimTakesOnlyOwnLanesInIDOrder(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY, n int)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		`INSERT INTO items SELECT i, 0 FROM generate_series(1, 200) i`,
		`UPDATE items SET n = 1`,
	)
	a, c := b.claimer(t), b.claimer(t)
	converge(t, a, c)
	for _, claimer := range []*outbox.Claimer{a, c} {
		batch, err := claimer.Claim(t.Context(), 1000, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The lanes' events, all of them, in id order: every INSERT before
		// the UPDATE of the same row.
		want := b.idsInLanes(t, claimer.Lanes())
		if got := ids(batch.Events); !slices.Equal(got, want) {
			t.Fatalf("claimed %d events %v…, want %d events %v…", len(got), head(got), len(want), head(want))
		}
		if err := batch.Complete(t.Context(), ids(batch.Events)); err != nil {
			t.Fatal(err)
		}
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue`); n != 0 {
		t.Fatalf("%d events left; the two claimers' lanes should cover all", n)
	}
}

func TestPartialCompleteKeepsUnacknowledgedEvents(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		`INSERT INTO items SELECT generate_series(1, 5)`,
	)
	c := b.claimer(t)
	rebalance(t, c)
	batch, err := c.Claim(t.Context(), 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := ids(batch.Events)
	if err := batch.Complete(t.Context(), []int64{all[0], all[2]}); err != nil {
		t.Fatal(err)
	}
	left := b.idsInLanes(t, c.Lanes())
	if want := []int64{all[1], all[3], all[4]}; !slices.Equal(left, want) {
		t.Fatalf("queue holds %v, want the unacknowledged %v", left, want)
	}
}

// idsInLanes returns the ids of the queued events in lanes, in id order,
// computing each event's lane independently of the claimer.
func (b *bundle) idsInLanes(t *testing.T, lanes []int32) []int64 {
	t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT id FROM pg2kafka.outbound_event_queue
		WHERE (hashtext(coalesce(external_id, '')) & 63) = ANY($1) ORDER BY id`, lanes)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func ids(events []outbox.Event) []int64 {
	out := make([]int64, len(events))
	for i, e := range events {
		out[i] = e.ID
	}
	return out
}

func head(ids []int64) []int64 { return ids[:min(len(ids), 5)] }

// waitForCount polls a count until it is want, for at most 30 seconds.
func waitForCount(t *testing.T, b *bundle, sql string, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for got := b.count(t, sql); got != want; got = b.count(t, sql) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d, want %d", sql, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The claimer's commits, which only delete acknowledged events (or move
// refused ones to the dead-letter table), skip the wait for the disk: one
// lost at a crash of Postgres brings its events back to be shipped again,
// as TestLostConnectionReleasesLanesAndClaim shows of any claim that does
// not commit. The writers' sessions, whose commits queue the events, keep
// waiting for it.
func TestClaimSessionCommitsAsynchronouslyWritersDoNot(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		`INSERT INTO items SELECT generate_series(1, 3)`,
	)
	c := b.claimer(t)
	rebalance(t, c)
	batch, err := c.Claim(t.Context(), 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Setting(t.Context(), "synchronous_commit"); err != nil || got != "off" {
		t.Errorf("the claim's session has synchronous_commit = %q (%v), want off", got, err)
	}
	if err := batch.Complete(t.Context(), ids(batch.Events)); err != nil {
		t.Fatal(err)
	}
	waitForCount(t, b, `SELECT count(*) FROM pg2kafka.outbound_event_queue`, 0)
	var writers string
	if err := b.pool.QueryRow(t.Context(), `SELECT current_setting('synchronous_commit')`).Scan(&writers); err != nil || writers != "on" {
		t.Errorf("a writer's session has synchronous_commit = %q (%v), want on, the server's default", writers, err)
	}
}
