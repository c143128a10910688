package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Every shipped event leaves a dead row behind, and vacuum removes it only
// once no snapshot can still see it. While something holds the horizon back
// (pg_dump, a long report, a standby's feedback) a claim that walks the id
// index from its head visits every one of those rows, and with them the live
// backlog of paused tables, on every claim. So a claimer claims from a
// low-water id instead: every event of its lanes below it is gone for good.
//
// The difficulty is the word "for good". Ids are handed out when a row is
// written, not when it commits: a writer can hold id 100 while 101…200 commit
// and ship, and commit a minute later. A low-water id may therefore pass an
// id only once that id's writer can no longer commit. Writers give us a
// handle on that: an event's writer has its transaction id before it takes
// its event id (the change triggers run AFTER ROW, so the user row was
// written first; setup(), backfill() and requeue_dead_letters() write other
// rows first too, and pg2kafka.emit() takes its transaction id with
// pg_current_xact_id() before its INSERT), and transaction ids are handed
// out in order. A
// candidate low-water id thus comes with a bound: a transaction id above the
// writer of every id below it. Once a claim's snapshot has an xmin at or past
// the bound, every such writer has ended and its events, if any, are visible
// to that claim; if that claim read everything from the low-water id up to
// the candidate, the low-water id may move to it.
//
// Candidates come from claims: one that returned events up to id M yields
// M+1, bounded by the next claim's pg_snapshot_xmax, which is past this
// claim's own transaction id, which is past that of every writer of an id up
// to M (M was visible to the claim, so every lower id had been handed out,
// and its writer's transaction id taken, before the claim began). A claimer
// whose claims find nothing, after a restart or while other claimers' lanes
// are busy, asks the id sequence instead (probe).
//
// The other claims of the same process are always among the transactions
// running while a queue drains, and each holds every claim's xmin back while
// its batch is sent; but a claim only deletes events of its own lanes, never
// writes one, so the xmin a claim reports leaves them out (claimSQL), and
// a candidate clears as soon as the writers proper have ended. A process
// knows its own claims' transaction ids exactly, from the claims themselves;
// the claims of other shippers are left to lookForWriters.
//
// Only a writer holding a transaction id holds pg_snapshot_xmin back, never
// a read-only snapshot (pg_dump, reports, hot_standby_feedback): those pin
// vacuum's horizon but not the low-water id, which is the point. A writer
// that stays open for a minute holds the low-water id back for that minute,
// and the claims walk that minute's dead rows; its events are shipped when
// it commits, in id order within their key.
//
// Events that go back to the queue (their destination failed, or the claim
// was rolled back) keep a low-water id of their table's own, so that the
// other tables' claims move on past a paused table's backlog while its own
// retries start at its first event. Gaining lanes, or a new connection,
// resets everything to the head, whose cost is one walk; and so, now and
// then, does a safety net, for anything that slipped past (a row locked by
// some other session when a claim went by it, a writer that took its event id
// before its transaction id).

// lowWater is what a claimer knows about where its lanes' events begin.
type lowWater struct {
	conn *pgx.Conn // the connection it was learnt over; another means start over
	// flow is the low-water id of every table without its own in tables.
	flow int64
	// tables holds the low-water ids of tables whose events went back to
	// the queue or that a claim skips, each at most flow.
	tables map[Table]int64
	// cand is the next low-water id, id 0 if there is none.
	cand candidate
	// cleared is whether no writer of an id below cand's was left when
	// last looked (writersGone), which lets the next claim move to it
	// whatever holds its snapshot's xmin back.
	cleared  bool
	lookedAt time.Time
	lastXmin int64
	// lastFull is whether the last claim hit its limit: the queue is being
	// drained, and each claim walks what was shipped since the last lift.
	lastFull bool
	// lastEmpty is whether the last claim found nothing; fresh whether the
	// low-water ids were just sent back to the head. Either calls for a
	// probe, if there is no candidate.
	lastEmpty bool
	fresh     bool
	probedAt  time.Time
	probeGap  time.Duration // probeInterval unless a test says otherwise
	lookGap   time.Duration // lookInterval unless a test says otherwise
	noProbe   bool          // the probe is not allowed (an old grant); claims still advance
	noLook    bool          // a test's: only the claims' snapshots clear candidates
	// resetAt is when the next safety-net reset is due; resetCost times the
	// first claim after a reset, which sets how long until the next.
	resetAt   time.Time
	resetCost time.Time
}

// candidate is a low-water id in waiting. bound is a transaction id past the
// writer of every event id below id; 0 until it is known.
type candidate struct {
	id, bound int64
}

const (
	// probeInterval is how often a claimer whose claims find nothing asks
	// the sequence how far ids have got. A probe costs a transaction id.
	probeInterval = 250 * time.Millisecond
	// minResetInterval is the least time between two safety-net resets;
	// they are further apart when one costs more than a thousandth of it.
	minResetInterval = time.Minute
	resetCostFactor  = 1000
)

// scan is what one claim read, kept with its batch until it is settled.
type scan struct {
	except map[Table]bool
	// lift is how far the claim lets the low-water ids of the tables it read
	// move, once its events are settled; 0 if not at all.
	lift int64
}

// begin readies the low-water ids for a claim skipping except: over a new
// connection it starts over, and so it does when the safety net is due;
// skipped tables get low-water ids of their own.
func (w *lowWater) begin(conn *pgx.Conn, except []Table, now time.Time) {
	if w.conn != conn {
		*w = lowWater{conn: conn, probeGap: w.probeGap, lookGap: w.lookGap, noLook: w.noLook, resetAt: now.Add(minResetInterval), fresh: true}
	}
	if now.After(w.resetAt) {
		w.reset()
		w.resetCost = now
	}
	for _, t := range except {
		if _, ok := w.tables[t]; !ok {
			if w.tables == nil {
				w.tables = make(map[Table]int64)
			}
			w.tables[t] = w.flow
		}
	}
}

// from is the lowest low-water id of the tables a claim skipping except reads.
func (w *lowWater) from(except []Table) int64 {
	from := w.flow
	for t, low := range w.tables {
		if low < from && !slices.Contains(except, t) {
			from = low
		}
	}
	return from
}

// reset sends every low-water id back to the head of the queue. The
// candidate stays: it is about ids and transactions, not about lanes.
func (w *lowWater) reset() {
	w.flow, w.fresh = 0, true
	for t := range w.tables {
		w.tables[t] = 0
	}
}

// claimed notes a claim's snapshot and result, and returns what settling it
// may do. last is the highest id claimed, full whether the claim hit its
// limit.
func (w *lowWater) claimed(except []Table, xmin, xmax int64, n int, last int64, full bool, now time.Time) scan {
	if !w.resetCost.IsZero() {
		w.resetAt = now.Add(max(minResetInterval, resetCostFactor*now.Sub(w.resetCost)))
		w.resetCost = time.Time{}
	}
	if w.cand.id != 0 && w.cand.bound == 0 {
		w.cand.bound = xmax
	}
	s := scan{except: make(map[Table]bool, len(except))}
	for _, t := range except {
		s.except[t] = true
	}
	w.lastXmin = xmin
	if w.cand.id != 0 && w.cand.bound != 0 && (xmin >= w.cand.bound || w.cleared) {
		s.lift = w.cand.id
		if full {
			// Past the last event claimed, the claim did not look.
			s.lift = min(s.lift, last+1)
		}
	}
	w.lastEmpty, w.lastFull, w.fresh = n == 0, full, false
	return s
}

// settled moves the low-water ids once a claim's events are settled: failed
// holds those back in the queue; ok is false if how they were settled is not
// known, and so all of them count as back.
func (w *lowWater) settled(s scan, events []Event, failed func(int) bool, ok bool) {
	if s.lift > 0 {
		w.flow = max(w.flow, s.lift)
		for t, low := range w.tables {
			if !s.except[t] {
				w.tables[t] = max(low, s.lift)
			}
		}
		if s.lift == w.cand.id {
			w.cand, w.cleared = candidate{}, false
		}
	}
	var back map[Table]bool
	for i := range events {
		if ok && !failed(i) {
			continue
		}
		t := events[i].Table()
		low, has := w.tables[t]
		if !has {
			low = w.flow
		}
		if w.tables == nil {
			w.tables = make(map[Table]int64)
		}
		w.tables[t] = min(low, events[i].ID)
		if back == nil {
			back = make(map[Table]bool)
		}
		back[t] = true
	}
	for t, low := range w.tables {
		if !s.except[t] && !back[t] && low >= w.flow {
			delete(w.tables, t) // its events are where everyone's are
		}
	}
	if !ok {
		// The claim's transaction may not have ended when the next claim
		// looks, so the next snapshot's xmax would bound nothing.
		w.cand, w.cleared = candidate{}, false
		return
	}
	// A candidate no higher than the low-water id (a probe's, overtaken by
	// the lift it allowed) would hold the next one back until it cleared.
	if w.cand.id <= w.flow && len(events) > 0 {
		w.cand, w.cleared = candidate{id: events[len(events)-1].ID + 1}, false
	}
}

// probeSQL reads how far event ids have been handed out, then takes a
// transaction id, in that order: it is past the writer of every id read.
// The statement ends at once, so the bound is known at once.
const probeSQL = `
SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END, pg_current_xact_id()::text::int8
FROM pg2kafka.outbound_event_queue_id_seq AS s`

// lastIDSQL is the last id handed out; a sequence that has handed out none
// holds the first it will.
const lastIDSQL = `SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM pg2kafka.outbound_event_queue_id_seq`

// pendingSQL is lastIDSQL that also fails, as a claim would, when the
// queue cannot be read: the scalar subquery reads no row, but needs the
// table and the right to read it, so that a queue gone or out of reach is
// reported while the shipper idles, not at its next event.
const pendingSQL = `SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END,
       (SELECT 1 FROM pg2kafka.outbound_event_queue LIMIT 0)
FROM pg2kafka.outbound_event_queue_id_seq`

// Pending reports whether a claim skipping except may find events: false
// only when no event id has been handed out at or past the low-water id the
// claim would read from, so that it would find nothing. One read of the id
// sequence, for a claimer that keeps finding nothing: half the round trips
// of an empty claim, and none of its planning and locking. A read that finds
// ids handed out since the queue's last read wakes its other claimers
// (Advanced).
func (c *Claimer) Pending(ctx context.Context, except []Table) (bool, error) {
	if err := c.connect(ctx); err != nil {
		return false, err
	}
	w := &c.low
	if len(c.lanes) == 0 || w.conn != c.conn || w.noProbe || time.Now().After(w.resetAt) {
		return true, nil // the claim has something to do or learn, or only it can tell
	}
	from := w.from(except)
	if from == 0 {
		return true, nil
	}
	ctx, cancel := c.roundTrip(ctx)
	defer cancel()
	seen := c.queue.readings.get().gen
	var last int64
	var none *int32
	err := c.conn.QueryRow(ctx, pendingSQL).Scan(&last, &none)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "42501" {
		return true, nil // the next claim's probe says what to grant
	}
	if err != nil {
		return false, fmt.Errorf("outbox: read the queue's id sequence: %w", err)
	}
	c.heard()
	// What was read while this read was under way is not known to have
	// been seen by it: only its own news counts as seen.
	if c.queue.readings.note(last) {
		seen++
	}
	c.seen = seen
	return last >= from, nil
}

// Advanced returns a channel that is closed once the queue's watcher (see
// Queue.Watch), or another of its claimers in Pending or in a claim, has
// found that event ids were handed out since this claimer last claimed or
// looked: a claimer waiting in its idle loop is woken by news of events,
// not at its own next look.
func (c *Claimer) Advanced() <-chan struct{} {
	return c.queue.readings.advancedSince(c.seen)
}

// probe gives a claimer whose claims find nothing, or which has just started
// over from the head, a candidate from the id sequence, when ids were handed
// out beyond its low-water id since. A claimer that starts over behind a
// long run of dead rows or of a paused table's events thus walks it once,
// not until its own claims have made a candidate and a later one confirmed
// it.
func (c *Claimer) probe(ctx context.Context, now time.Time) error {
	w := &c.low
	if w.noProbe || w.cand.id != 0 || !(w.lastEmpty || w.fresh) || (!w.fresh && now.Sub(w.probedAt) < cmp.Or(w.probeGap, probeInterval)) {
		return nil
	}
	w.probedAt = now
	ctx, cancel := c.roundTrip(ctx)
	defer cancel()
	var last, xid int64
	err := c.conn.QueryRow(ctx, lastIDSQL).Scan(&last)
	if err == nil && last < w.flow {
		return nil // nothing written since; no transaction id spent
	}
	if err == nil {
		err = c.conn.QueryRow(ctx, probeSQL).Scan(&last, &xid)
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "42501" {
		w.noProbe = true
		c.logger.Warn("cannot read the queue's id sequence, so an idle shipper may walk dead rows while a snapshot is held open",
			slog.String("fix", "as the owner of schema pg2kafka, run: SELECT pg2kafka.grant_shipper_privileges()"), slog.Any("error", err))
		return nil
	}
	if err != nil {
		return fmt.Errorf("outbox: read the queue's id sequence: %w", err)
	}
	c.heard()
	w.cand = candidate{id: last + 1, bound: xid}
	return nil
}

// lookInterval is how often a claimer whose candidate waits on its
// snapshots' xmin looks for the writers themselves; drainLookInterval how
// often while its claims come back full, when each claim would otherwise
// walk up to lookInterval's worth of the batches shipped before it.
const (
	lookInterval      = 100 * time.Millisecond
	drainLookInterval = 10 * time.Millisecond
)

// writersGoneSQL tells whether any session that could still commit an event
// with an id below a candidate's is left. A writer holds RowExclusiveLock on
// the queue from before it takes its event id until it ends, and has a
// transaction id older than the candidate's bound ($1, an xid8); what holds
// a snapshot's xmin back may be anything else with a transaction id, in
// this database or another (a report that wrote a temporary table, a
// session idle in transaction after an UPDATE of an untracked table).
// Claimers, which only delete, are left out; a session with the lock and no
// transaction id yet, or a prepared transaction holding it, counts as a
// writer, to be safe.
const writersGoneSQL = `
SELECT NOT EXISTS (
    SELECT FROM pg_locks AS l
    LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.locktype = 'relation' AND l.mode = 'RowExclusiveLock'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.relation = 'pg2kafka.outbound_event_queue'::regclass
      AND l.pid IS DISTINCT FROM pg_backend_pid()
      AND (l.pid IS NULL OR l.pid NOT IN (
              SELECT m.pid FROM pg_locks AS m
              WHERE m.locktype = 'advisory' AND m.objsubid = 2 AND m.granted AND m.classid = $2::bigint::oid
                AND m.database = l.database))
      AND (a.backend_xid IS NULL OR age(a.backend_xid) > age(($1::int8 % 4294967296)::text::xid))
)`

// lookForWriters clears the candidate if its writers are all gone, when
// the claims' snapshots alone cannot tell.
func (c *Claimer) lookForWriters(ctx context.Context, now time.Time) error {
	w := &c.low
	gap := cmp.Or(w.lookGap, lookInterval)
	if w.lastFull {
		gap = min(gap, drainLookInterval)
	}
	if w.noLook || w.cand.id == 0 || w.cand.bound == 0 || w.cleared || w.lastXmin >= w.cand.bound || now.Sub(w.lookedAt) < gap {
		return nil
	}
	w.lookedAt = now
	ctx, cancel := c.roundTrip(ctx)
	defer cancel()
	if err := c.conn.QueryRow(ctx, writersGoneSQL, w.cand.bound, memberLockKey).Scan(&w.cleared); err != nil {
		return fmt.Errorf("outbox: look for the queue's writers: %w", err)
	}
	c.heard()
	return nil
}
