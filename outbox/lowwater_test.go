package outbox_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// holdSnapshot opens a read-only REPEATABLE READ transaction, as pg_dump
// does, and keeps it open until the test ends: no row deleted after it
// began can be vacuumed away meanwhile.
func (b *bundle) holdSnapshot(t *testing.T) {
	t.Helper()
	conn, _ := b.connect(t)
	if _, err := conn.Exec(b.ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(b.ctx, `SELECT count(*) FROM pg2kafka.outbound_event_queue`).Scan(&n); err != nil {
		t.Fatal(err)
	}
}

// planAsALargeQueue makes the claimers' sessions, which connect after it,
// plan as Postgres plans the claim of a queue large enough for its cost to
// matter: by the id index. A test's queue is small enough that scanning it
// whole looks cheaper, which would hide what the index walk costs.
func (b *bundle) planAsALargeQueue(t *testing.T) {
	t.Helper()
	b.exec(t, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET enable_seqscan = off', current_database()); END $$`)
}

// explain returns the shared buffers the claimer's next claim touches.
func explain(t *testing.T, c *outbox.Claimer, limit int, except []outbox.Table, fromHead bool) int64 {
	t.Helper()
	n, err := c.ExplainClaim(t.Context(), limit, except, fromHead)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// shipper claims and acknowledges events as a shipper would, recording
// every event it shipped in order.
type shipper struct {
	c       *outbox.Claimer
	shipped []outbox.Event
}

// drain claims batches of at most limit until a claim finds nothing,
// acknowledging every event.
func (s *shipper) drain(t *testing.T, limit int, except ...outbox.Table) {
	t.Helper()
	for {
		batch, err := s.c.Claim(t.Context(), limit, except)
		if err != nil {
			t.Fatal(err)
		}
		if len(batch.Events) == 0 {
			if err := batch.Rollback(t.Context()); err != nil {
				t.Fatal(err)
			}
			return
		}
		for _, e := range batch.Events {
			e.Data = nil // the claimer reuses its memory
			s.shipped = append(s.shipped, e)
		}
		if err := batch.Complete(t.Context(), ids(batch.Events)); err != nil {
			t.Fatal(err)
		}
	}
}

// settle claims the empty queue until its claim costs at most want
// buffers, as the idle poll of a shipper would, and fails the test if that
// takes longer than a few seconds.
func (s *shipper) settle(t *testing.T, want int64, except ...outbox.Table) int64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.drain(t, 1000, except...)
		got := explain(t, s.c, 1000, except, false)
		if got <= want {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("an empty claim costs %d buffers after idling, want at most %d", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// boundedClaimBuffers is what a claim of an empty queue may cost, in shared
// buffers, whatever has been shipped before: the index pages down to the
// low-water id and a few heap pages around it.
const boundedClaimBuffers = 20

func TestClaimCostStaysBoundedWhileASnapshotIsHeld(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY, n int)`,
		`SELECT pg2kafka.setup('items', 'id')`,
	)
	b.planAsALargeQueue(t)
	b.holdSnapshot(t)
	// Two claimers, so that each also walks past the rows the other shipped.
	s1, s2 := &shipper{c: b.claimer(t)}, &shipper{c: b.claimer(t)}
	for _, s := range []*shipper{s1, s2} {
		s.c.SetProbeInterval(time.Millisecond)
	}
	converge(t, s1.c, s2.c)

	// A writer begins, writes one row, and stays open while thousands of
	// later events ship; it touches its row again much later, and commits
	// last.
	slow, _ := b.connect(t)
	if _, err := slow.Exec(b.ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	const rounds, perRound = 20, 1000
	next := 1
	var slowFirst, slowLast int64
	for round := range rounds {
		if round == 3 {
			slowFirst = writeAlone(t, slow, `INSERT INTO items VALUES (0, 0)`)
		}
		if round == 10 {
			slowLast = writeAlone(t, slow, `UPDATE items SET n = 1 WHERE id = 0`)
			if _, err := slow.Exec(b.ctx, `COMMIT`); err != nil {
				t.Fatal(err)
			}
		}
		b.exec(t, fmt.Sprintf(`INSERT INTO items SELECT i, 0 FROM generate_series(%d, %d) i`, next, next+perRound-1))
		next += perRound
		s1.drain(t, 300)
		s2.drain(t, 300)
		if round < 3 || round > 10 {
			s1.settle(t, boundedClaimBuffers)
			s2.settle(t, boundedClaimBuffers)
		}
	}

	// The head of the queue holds every row shipped, kept by the snapshot:
	// a claim from there would walk them all.
	head := explain(t, s1.c, 1000, nil, true)
	low := explain(t, s1.c, 1000, nil, false)
	t.Logf("an empty claim costs %d buffers; from the head of the queue, %d", low, head)
	if head < 10*boundedClaimBuffers {
		t.Fatalf("a claim from the head of the queue costs only %d buffers; the snapshot does not keep the shipped rows", head)
	}

	// Nothing skipped, nothing twice, the slow writer's events in their
	// order.
	var all []int64
	var slowSeen []int64
	for _, s := range []*shipper{s1, s2} {
		for _, e := range s.shipped {
			all = append(all, e.ID)
			if *e.ExternalID == "0" {
				slowSeen = append(slowSeen, e.ID)
			}
		}
	}
	slices.Sort(all)
	if want := rounds*perRound + 2; len(all) != want || len(slices.Compact(slices.Clone(all))) != want {
		t.Fatalf("shipped %d events (%d distinct), want %d", len(all), len(slices.Compact(slices.Clone(all))), want)
	}
	if want := []int64{slowFirst, slowLast}; !slices.Equal(slowSeen, want) {
		t.Fatalf("the slow writer's events shipped as %v, want %v in that order", slowSeen, want)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue`); n != 0 {
		t.Fatalf("%d events left in the queue", n)
	}
}

// writeAlone runs a statement that queues one event, while no other writer
// runs, and returns the event's id.
func writeAlone(t *testing.T, conn *pgx.Conn, sql string) int64 {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := conn.QueryRow(t.Context(), `SELECT last_value FROM pg2kafka.outbound_event_queue_id_seq`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestPausedBacklogCostsAFlowingTableNothing(t *testing.T) {
	t.Parallel()
	const backlog = 20_000
	b := setup(t,
		`CREATE TABLE stuck (id int PRIMARY KEY)`,
		`CREATE TABLE flowing (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('stuck', 'id')`,
		`SELECT pg2kafka.setup('flowing', 'id')`,
		fmt.Sprintf(`INSERT INTO stuck SELECT generate_series(1, %d)`, backlog),
	)
	b.planAsALargeQueue(t)
	s := &shipper{c: b.claimer(t)}
	s.c.SetProbeInterval(time.Millisecond)
	rebalance(t, s.c)
	stuck := []outbox.Table{{Schema: "public", Name: "stuck"}}

	next := 1
	var costs []int64
	for range 10 {
		b.exec(t, fmt.Sprintf(`INSERT INTO flowing SELECT generate_series(%d, %d)`, next, next+499))
		next += 500
		s.drain(t, 1000, stuck...)
		costs = append(costs, explain(t, s.c, 1000, stuck, false))
	}
	head := explain(t, s.c, 1000, stuck, true)
	t.Logf("claims of the flowing table cost %v buffers; from the head, past the paused backlog, %d", costs, head)
	if head < 10*boundedClaimBuffers {
		t.Fatalf("a claim from the head past %d paused events costs only %d buffers", backlog, head)
	}
	// The first claims walk the backlog once; then they go straight to the
	// flowing table's events, past at most the last batch's dead rows.
	for i, c := range costs[2:] {
		if c > 3*boundedClaimBuffers {
			t.Fatalf("claim %d of the flowing table costs %d buffers, want at most %d: it walks the paused backlog", i+2, c, 3*boundedClaimBuffers)
		}
	}
	if got := len(s.shipped); got != next-1 {
		t.Fatalf("shipped %d flowing events, want %d", got, next-1)
	}

	// Resumed, the paused table's events all ship, from its first.
	s.shipped = nil
	s.drain(t, 5000)
	if len(s.shipped) != backlog || s.shipped[0].TableName != "stuck" || *s.shipped[0].ExternalID != "1" {
		t.Fatalf("after resuming shipped %d events starting with %s %s, want all %d of stuck from its first", len(s.shipped), s.shipped[0].TableName, *s.shipped[0].ExternalID, backlog)
	}
}

func TestEventsSentBackAreClaimedAgainAfterLaterOnesShipped(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`CREATE TABLE other (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		`SELECT pg2kafka.setup('other', 'id')`,
		`INSERT INTO items SELECT generate_series(1, 5)`,
	)
	c := b.claimer(t)
	rebalance(t, c)
	claim := func(except ...outbox.Table) *outbox.Batch {
		t.Helper()
		batch, err := c.Claim(t.Context(), 100, except)
		if err != nil {
			t.Fatal(err)
		}
		return batch
	}
	complete := func(batch *outbox.Batch, acked ...int64) {
		t.Helper()
		if err := batch.Complete(t.Context(), acked); err != nil {
			t.Fatal(err)
		}
	}
	first := claim()
	complete(first, ids(first.Events)...)

	// Of the next five, three fail and go back.
	b.exec(t, `INSERT INTO items SELECT generate_series(6, 10)`)
	second := claim()
	got := ids(second.Events)
	complete(second, got[0], got[2])
	back := []int64{got[1], got[3], got[4]}

	// While items is paused, other's events ship, twice, moving the
	// claimer well past the events sent back.
	items := outbox.Table{Schema: "public", Name: "items"}
	for i := range 2 {
		b.exec(t, fmt.Sprintf(`INSERT INTO other SELECT generate_series(%d, %d)`, 5*i+1, 5*i+5))
		batch := claim(items)
		if len(batch.Events) != 5 || batch.Events[0].TableName != "other" {
			t.Fatalf("claimed %d events while items is paused, want other's 5", len(batch.Events))
		}
		complete(batch, ids(batch.Events)...)
	}
	// A rolled-back claim sends its events back too.
	b.exec(t, `INSERT INTO items SELECT generate_series(11, 12)`)
	b.exec(t, `INSERT INTO other SELECT generate_series(11, 12)`)
	rolled := claim()
	want := ids(rolled.Events)
	if len(want) != 7 || !slices.Equal(want[:3], back) {
		t.Fatalf("claimed %v, want the events sent back %v and 4 new ones", want, back)
	}
	if err := rolled.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	resumed := claim(items)
	if got := ids(resumed.Events); !slices.Equal(got, want[5:]) {
		t.Fatalf("with items paused, claimed %v, want the rolled-back events of other %v", got, want[5:])
	}
	complete(resumed, ids(resumed.Events)...)
	resumed = claim()
	if got := ids(resumed.Events); !slices.Equal(got, want[:5]) {
		t.Fatalf("resumed, claimed %v, want the events of items sent back %v", got, want[:5])
	}
}

func TestTheFirstEventsOfANewQueueAreClaimed(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
	)
	s := b.soleShipper(t)
	// Idle polls of a queue that has never held an event, probes included.
	for range 5 {
		s.drain(t, 100)
		time.Sleep(2 * time.Millisecond)
	}
	b.exec(t, `INSERT INTO items SELECT generate_series(1, 3)`)
	s.drain(t, 100)
	if got := ids(s.shipped); !slices.Equal(got, []int64{1, 2, 3}) {
		t.Fatalf("claimed %v, want the queue's first events [1 2 3]", got)
	}
}

func TestGainedLanesAreClaimedFromTheHead(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
	)
	a, other := b.claimer(t), b.claimer(t)
	a.SetProbeInterval(time.Millisecond)
	converge(t, a, other)

	// a ships its lanes' events while other's wait, and moves past them.
	sa := &shipper{c: a}
	for i := range 3 {
		b.exec(t, fmt.Sprintf(`INSERT INTO items SELECT generate_series(%d, %d)`, 100*i+1, 100*i+100))
		sa.drain(t, 1000)
	}
	waiting := b.idsInLanes(t, other.Lanes())
	if len(waiting) == 0 {
		t.Fatal("no events in the other claimer's lanes")
	}

	// other leaves; a takes its lanes and must find their events.
	other.Close(t.Context())
	converge(t, a)
	sa.shipped = nil
	sa.drain(t, 1000)
	if got := ids(sa.shipped); !slices.Equal(got, waiting) {
		t.Fatalf("after taking the lanes claimed %d events %v…, want the %d waiting %v…", len(got), head(got), len(waiting), head(waiting))
	}
}

// A shipper's workers' claims are open transactions beside each other's
// snapshots while a queue drains. They only delete, so one worker's open
// claim must not hold back another's low-water id: that worker would walk
// everything shipped since, on every claim, while a snapshot is held.
func TestAnOpenClaimOfTheSameShipperDoesNotHoldItsSiblingsBack(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY, n int)`,
		`SELECT pg2kafka.setup('items', 'id')`,
	)
	b.planAsALargeQueue(t)
	b.holdSnapshot(t)
	queue := outbox.NewQueue(b.pool)
	var claimers []*outbox.Claimer
	for range 2 {
		// Open for the whole test, the holding claim must outlast the
		// default bound on a claim left idle.
		c := queue.NewClaimer(slog.New(slog.DiscardHandler), time.Minute)
		t.Cleanup(func() { c.Close(context.Background()) })
		// Only the claims may move the low-water ids, not a look for the
		// writers in pg_locks.
		c.SetProbeInterval(time.Millisecond)
		outbox.WithoutLooks(c)
		claimers = append(claimers, c)
	}
	converge(t, claimers...)
	flowing, holding := &shipper{c: claimers[0]}, claimers[1]

	const rounds, perRound = 20, 1000
	b.exec(t, fmt.Sprintf(`INSERT INTO items SELECT i, 0 FROM generate_series(1, %d) i`, perRound))
	open, err := holding.Claim(t.Context(), 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(open.Events) == 0 {
		t.Fatal("the holding claimer claimed nothing")
	}
	held := ids(open.Events)
	for round := 1; round < rounds; round++ {
		b.exec(t, fmt.Sprintf(`INSERT INTO items SELECT i, 0 FROM generate_series(%d, %d) i`, round*perRound+1, (round+1)*perRound))
		flowing.drain(t, 100)
	}
	flowing.settle(t, boundedClaimBuffers)
	if head := explain(t, flowing.c, 1000, nil, true); head < 10*boundedClaimBuffers {
		t.Fatalf("a claim from the head of the queue costs only %d buffers; the snapshot does not keep the shipped rows", head)
	}

	if err := open.Complete(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	rest := &shipper{c: holding}
	rest.drain(t, 1000)
	var all []int64
	for _, s := range []*shipper{flowing, rest} {
		all = append(all, ids(s.shipped)...)
	}
	all = append(all, held...)
	slices.Sort(all)
	if want := rounds * perRound; len(all) != want || len(slices.Compact(slices.Clone(all))) != want {
		t.Fatalf("shipped %d events (%d distinct), want %d", len(all), len(slices.Compact(slices.Clone(all))), want)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue`); n != 0 {
		t.Fatalf("%d events left in the queue", n)
	}
}

// A shipper idles on an empty queue for hours, then a bulk load queues a
// backlog. Its claim's prepared statement has long kept a generic plan,
// made while the queue was empty; that plan must still walk the id index
// from the low-water id, not read the whole queue and sort it on every
// claim of the drain.
func TestAClaimPlannedOnAnEmptyQueueStillWalksTheIndexOnceItFills(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY, v text)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		`ANALYZE pg2kafka.outbound_event_queue`,
	)
	c := b.claimer(t)
	rebalance(t, c)
	s := &shipper{c: c}
	for range 10 { // past the five runs after which Postgres may keep a generic plan
		s.drain(t, 10)
	}
	const backlog = 50_000
	b.exec(t, fmt.Sprintf(`INSERT INTO items SELECT i, repeat('x', 150) FROM generate_series(1, %d) i`, backlog))
	var pages int64
	if err := b.pool.QueryRow(t.Context(), `SELECT pg_relation_size('pg2kafka.outbound_event_queue') / current_setting('block_size')::int`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	got, err := c.ExplainPreparedClaim(t.Context(), 10)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a claim of 10 from a queue of %d pages touches %d buffers", pages, got)
	if got > pages/10 {
		t.Fatalf("a claim of 10 events touches %d buffers of a queue of %d pages: its kept plan reads the whole queue", got, pages)
	}
	s.drain(t, 1000)
	if len(s.shipped) != backlog {
		t.Fatalf("shipped %d events, want %d", len(s.shipped), backlog)
	}
}

// soleShipper returns the queue's only shipper, owning every lane, whose
// claimer probes the id sequence without waiting.
func (b *bundle) soleShipper(t *testing.T) *shipper {
	t.Helper()
	s := &shipper{c: b.claimer(t)}
	s.c.SetProbeInterval(time.Millisecond)
	rebalance(t, s.c)
	return s
}

// pending asks the claimer whether a claim could find anything.
func pending(t *testing.T, c *outbox.Claimer) bool {
	t.Helper()
	p, err := c.Pending(t.Context(), nil)
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	return p
}

// idleUntilNothingPending polls the empty queue as an idle shipper does,
// claims included, until Pending says a claim would find nothing, and
// fails the test if that takes longer than a few seconds.
func (s *shipper) idleUntilNothingPending(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for pending(t, s.c) {
		if time.Now().After(deadline) {
			t.Fatal("Pending still says a claim may find events after 5s of claims that found none")
		}
		s.drain(t, 100)
	}
}

// An idle shipper reads the id sequence instead of claiming (Pending): it
// must say "nothing" only when a claim would find nothing, however events
// are written, and it must say it once the queue has been idle a moment,
// or it saves nothing.
func TestPendingSaysNothingOnlyWhenAClaimWouldFindNothing(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
	)
	s := b.soleShipper(t)
	if !pending(t, s.c) {
		t.Fatal("Pending says nothing before the claimer has claimed at all")
	}

	b.exec(t, `INSERT INTO items SELECT generate_series(1, 3)`)
	s.drain(t, 100)
	s.idleUntilNothingPending(t)

	// A writer that has taken its event's id but not committed: a claim
	// finds nothing yet, but one after its commit must be made.
	writer, _ := b.connect(t)
	if _, err := writer.Exec(b.ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	writeAlone(t, writer, `INSERT INTO items VALUES (4)`)
	if !pending(t, s.c) {
		t.Fatal("Pending says nothing while a writer holds an event id it has not committed")
	}
	s.drain(t, 100)
	if _, err := writer.Exec(b.ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if !pending(t, s.c) {
		t.Fatal("Pending says nothing with an event committed and not yet claimed")
	}
	s.drain(t, 100)

	// A rolled-back write leaves a gap in the ids and no event.
	s.idleUntilNothingPending(t)
	writeAlone(t, writer, `BEGIN; INSERT INTO items VALUES (5); ROLLBACK`)
	s.idleUntilNothingPending(t)
	b.exec(t, `INSERT INTO items VALUES (6)`)
	if !pending(t, s.c) {
		t.Fatal("Pending says nothing after a rolled-back write and a committed one")
	}
	s.drain(t, 100)

	var keys []string
	for _, e := range s.shipped {
		keys = append(keys, *e.ExternalID)
	}
	if want := []string{"1", "2", "3", "4", "6"}; !slices.Equal(keys, want) {
		t.Fatalf("shipped the events of items %v, want %v", keys, want)
	}
}
