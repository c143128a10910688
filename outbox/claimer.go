package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Lanes is how many lanes the queue is divided into, by a hash of each
// event's external ID. All events of an external ID share a lane, and a lane
// is owned by one Claimer at a time, so the events of an external ID are
// shipped by one claimer, in order, even with several shippers sharing the
// queue; distinct lanes are shipped in parallel.
const Lanes = 64

// Advisory lock keys, in Postgres' two-int4 form so that they cannot collide
// with an application's single-bigint advisory locks. A claimer holds
// (memberLockKey, its backend pid) for as long as it is connected, which is
// how the others count it, and (laneLockKey, lane) for each lane it owns.
// Both are session locks: they vanish with the connection, so the lanes of a
// shipper that dies are free at once for the others, and those of one that
// freezes or is cut off once Postgres ends its silent session (see
// sessionBounds).
const (
	memberLockKey int32 = 0x70676b00 // "pgk\0"
	laneLockKey   int32 = 0x70676b01
)

// Queue is pg2kafka.outbound_event_queue, seen by the shipper.
type Queue struct {
	pool *pgxpool.Pool
	// noIdleSessionTimeout warns once that the server cannot bound a
	// claimer frozen between batches.
	noIdleSessionTimeout sync.Once
	// destination is the kind of destination the claimers register.
	destination string
	// openClaims holds the transaction id of each of this process's claims
	// still open: they hold every claim's snapshot xmin back, but they only
	// delete, so a claimer of the same process may look past them when it
	// asks whether a candidate's writers have ended (lowwater.go).
	openClaimsMu sync.Mutex
	openClaims   map[*Claimer]int64
	// readings is the newest read of the id sequence by its claimers and
	// its watcher; watched is true while Watch waits in Postgres.
	readings idReadings
	watched  atomic.Bool
	// watchRetry, if set, replaces watchRetry, for tests.
	watchRetry time.Duration
}

// claimOpened notes the transaction id of c's open claim.
func (q *Queue) claimOpened(c *Claimer, xid int64) {
	q.openClaimsMu.Lock()
	defer q.openClaimsMu.Unlock()
	if q.openClaims == nil {
		q.openClaims = make(map[*Claimer]int64)
	}
	q.openClaims[c] = xid
}

// claimSettled forgets c's claim once it has ended.
func (q *Queue) claimSettled(c *Claimer) {
	q.openClaimsMu.Lock()
	defer q.openClaimsMu.Unlock()
	delete(q.openClaims, c)
}

// otherClaims appends to dst the transaction ids of the claims open beside
// c's.
func (q *Queue) otherClaims(c *Claimer, dst []int64) []int64 {
	q.openClaimsMu.Lock()
	defer q.openClaimsMu.Unlock()
	for other, xid := range q.openClaims {
		if other != c {
			dst = append(dst, xid)
		}
	}
	return dst
}

// NewQueue returns the queue of the database pool is connected to.
func NewQueue(pool *pgxpool.Pool) *Queue { return &Queue{pool: pool} }

// Claimer claims events from the lanes it owns, over a connection of its
// own. Owning lanes and claiming their events on one connection ties the two
// together: if the connection dies, the open claim is rolled back and the
// lanes are released in the same instant, so a lane's next owner can never
// overtake a batch still in flight. A Claimer is used by one goroutine.
type Claimer struct {
	queue      *Queue
	connConfig *pgx.ConnConfig
	bounds     sessionBounds
	logger     *slog.Logger
	conn       *pgx.Conn
	// lastHeard is when Postgres last answered on conn.
	lastHeard time.Time
	// sweepsPeers is set on a server without idle_session_timeout: the
	// claimer ends the sessions of silent peers (see silenceLockKey).
	sweepsPeers bool
	lanes       []int32 // owned, ascending
	uuids       eventUUIDs
	scratch     scanScratch
	low         lowWater
	// siblings is reused for the transaction ids of the process's other
	// open claims.
	siblings []int64
	// seen is the generation of the queue's readings of the id sequence as
	// of the claimer's last claim or look (see Advanced).
	seen uint64
}

// NewClaimer returns a claimer for q; it connects on first use. Its lanes
// are taken over by the others once it has gone laneTakeoverTimeout without
// a word to Postgres (frozen, or cut off from it); 0 means
// DefaultLaneTakeoverTimeout. Its user keeps it heard while waiting with
// KeepAlive.
func (q *Queue) NewClaimer(logger *slog.Logger, laneTakeoverTimeout time.Duration) *Claimer {
	bounds := newSessionBounds(laneTakeoverTimeout)
	return &Claimer{queue: q, connConfig: bounds.sessionConfig(q.pool.Config().ConnConfig), bounds: bounds, logger: logger}
}

// Lanes returns the lanes the claimer owns.
func (c *Claimer) Lanes() []int32 { return slices.Clone(c.lanes) }

// Close releases the claimer's lanes by closing its connection.
func (c *Claimer) Close(ctx context.Context) {
	if c.conn != nil {
		_ = c.conn.Close(ctx)
		c.conn, c.lanes = nil, nil
	}
}

// Join connects the claimer and counts it among the shippers, without taking
// lanes yet. Joining all of a process's claimers before the first Rebalance
// lets each take its fair share at once rather than one after another.
func (c *Claimer) Join(ctx context.Context) error { return c.connect(ctx) }

func (c *Claimer) connect(ctx context.Context) error {
	if c.conn != nil && !c.conn.IsClosed() {
		return nil
	}
	if c.conn != nil && len(c.lanes) > 0 {
		// Its claim, if one was open, was rolled back with the session.
		c.logger.Warn("lost its lanes: the Postgres session that owned them has ended, so other shippers take them over; rejoining",
			slog.Any("lanes", c.lanes), slog.Duration("silent_for", time.Since(c.lastHeard).Round(time.Millisecond)))
	}
	c.conn, c.lanes = nil, nil
	conn, err := pgx.ConnectConfig(ctx, c.connConfig.Copy())
	if err != nil {
		return fmt.Errorf("outbox: connect: %w", err)
	}
	if err := c.join(ctx, conn); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return err
	}
	c.conn = conn
	c.heard()
	return nil
}

// join bounds the new session, counts it among the shippers and loads what
// deriving event uuids needs.
func (c *Claimer) join(ctx context.Context, conn *pgx.Conn) error {
	ctx, cancel := c.roundTrip(ctx)
	defer cancel()
	names, values := c.bounds.settings()
	rows, err := conn.Query(ctx, sessionSettingsSQL, names, values)
	if err != nil {
		return fmt.Errorf("outbox: bound the session: %w", err)
	}
	set, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("outbox: bound the session: %w", err)
	}
	c.sweepsPeers = !slices.Contains(set, "idle_session_timeout")
	if c.sweepsPeers {
		c.queue.noIdleSessionTimeout.Do(func() {
			c.logger.Info("this Postgres has no idle_session_timeout (it came in Postgres 14): shippers end the sessions of shippers frozen between batches themselves")
		})
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock_shared($1, $2)`, silenceLockKey, int32(c.bounds.idle.Milliseconds())); err != nil {
			return fmt.Errorf("outbox: join the shippers: %w", err)
		}
	}
	if err := c.queue.registerDestination(ctx, conn); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1, pg_backend_pid())`, memberLockKey); err != nil {
		return fmt.Errorf("outbox: join the shippers: %w", err)
	}
	return c.uuids.load(ctx, conn)
}

// lockCensusSQL counts the live claimers of this database and lists the
// lanes owned by any of them.
const lockCensusSQL = `
SELECT count(*) FILTER (WHERE classid = $1::bigint::oid),
       coalesce(array_agg(objid::bigint::int4) FILTER (WHERE classid = $2::bigint::oid), '{}')
FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`

// Rebalance moves the claimer towards its fair share of the lanes:
// ceil(Lanes / live claimers). Over its share, it releases lanes, which is
// safe here because no claim is open between batches; under it, it takes
// free lanes. Claimers that rebalance now and then converge on an even split
// and take over a departed claimer's lanes within one round. It reports
// whether the claimer now holds its share; one that does not should try
// again soon, as the lanes it lacks are being released by others.
func (c *Claimer) Rebalance(ctx context.Context) (balanced bool, err error) {
	if err := c.connect(ctx); err != nil {
		return false, err
	}
	ctx, cancel := c.roundTrip(ctx)
	defer cancel()
	defer func() {
		if err == nil {
			c.heard()
		}
	}()
	if err := c.endSilentPeers(ctx); err != nil {
		return false, err
	}
	var members int
	var taken []int32
	if err := c.conn.QueryRow(ctx, lockCensusSQL, memberLockKey, laneLockKey).Scan(&members, &taken); err != nil {
		return false, fmt.Errorf("outbox: count shippers: %w", err)
	}
	fair := (Lanes + max(members, 1) - 1) / max(members, 1)
	if len(c.lanes) > fair {
		extra := c.lanes[fair:]
		if _, err := c.conn.Exec(ctx, `SELECT pg_advisory_unlock($1, lane) FROM unnest($2::int4[]) AS lane`, laneLockKey, extra); err != nil {
			return false, fmt.Errorf("outbox: release lanes: %w", err)
		}
		c.logger.Debug("released lanes", slog.Any("lanes", extra), slog.Int("shippers", members))
		c.lanes = c.lanes[:fair]
		return true, nil
	}
	othersHold := len(taken) - len(c.lanes)
	var free []int32
	for lane := range int32(Lanes) {
		if !slices.Contains(taken, lane) {
			free = append(free, lane)
		}
	}
	want := free[:min(len(free), fair-len(c.lanes))]
	if len(want) > 0 {
		// Another claimer may take some of these first; those are skipped,
		// and the next round looks again.
		rows, err := c.conn.Query(ctx, `SELECT lane FROM unnest($2::int4[]) AS lane WHERE pg_try_advisory_lock($1, lane)`, laneLockKey, want)
		if err != nil {
			return false, fmt.Errorf("outbox: take lanes: %w", err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return false, fmt.Errorf("outbox: take lanes: %w", err)
		}
		c.logger.Debug("took lanes", slog.Any("lanes", got), slog.Int("shippers", members))
		if len(got) > 0 {
			// Events of the new lanes may lie anywhere below the low-water ids.
			c.low.reset()
		}
		c.lanes = append(c.lanes, got...)
		slices.Sort(c.lanes)
		free = free[len(got):]
	}
	// Under its share, the claimer is still owed lanes if some are free (it
	// lost a race for them) or others hold more than their shares (they are
	// about to release them). Otherwise its share is simply the remainder.
	owed := len(c.lanes) < fair && (len(free) > 0 || othersHold > (members-1)*fair)
	return !owed, nil
}

// claimSQL claims the oldest events of the given lanes (all lanes when $2 is
// null) from id $5 on, outside the tables in $3/$4, deleting them in the
// claim itself: the delete is undone by a rollback if the destination does
// not acknowledge them, and committed if it does, so each event is written
// once more to be shipped, not twice (lock, then delete). SKIP LOCKED keeps a
// claim from waiting on rows another session has locked. It runs in a
// claimTx, and its DELETE finds its rows by id from the claimed ones, so
// that whatever the planner thinks of the queue's size the claim walks the
// id index from the low-water id and no further. Every row, and the
// one row of an empty claim, carries the xmin and xmax of the snapshot the
// claim read with, which move the low-water id (lowwater.go); the xmin
// leaves out the transactions in $6, this process's other open claims. The
// rows of events carry the claim's own transaction id, which the DELETE
// took before it returned them.
const claimSQL = `
WITH snap AS MATERIALIZED (
    SELECT coalesce((SELECT min(x::text::int8) FROM pg_snapshot_xip(s) AS x WHERE x::text::int8 <> ALL(coalesce($6::int8[], '{}'))),
                    pg_snapshot_xmax(s)::text::int8) AS xmin,
           pg_snapshot_xmax(s)::text::int8 AS xmax
    FROM pg_current_snapshot() AS s
), claimed AS (
    SELECT id FROM pg2kafka.outbound_event_queue
    WHERE id >= $5
      AND ($2::int4[] IS NULL OR (hashtext(coalesce(external_id, '')) & 63) = ANY($2::int4[]))
      AND ($3::text[] IS NULL OR (table_schema, table_name) NOT IN (SELECT * FROM unnest($3::text[], $4::text[])))
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM pg2kafka.outbound_event_queue AS q
    WHERE q.id = ANY (ARRAY(SELECT id FROM claimed))
    RETURNING q.id, q.uuid, q.external_id, q.table_schema, q.table_name, q.statement, q.data, q.created_at, q.old, q.topic
)
SELECT snap.xmin, snap.xmax, CASE WHEN d.id IS NOT NULL THEN pg_current_xact_id_if_assigned()::text::int8 END, d.*
FROM snap LEFT JOIN deleted AS d ON true`

// noSeqScanSQL leaves sequential scans out of the plans of a claim's
// transaction. The claim's prepared statement keeps a generic plan after
// five runs, and one made while the queue was empty, as when a shipper
// idles, scanned the whole table and sorted it; kept once a bulk load had
// queued thousands of events, it read the whole queue again on every claim
// of their drain. Only within the claim's transaction: a plan that cannot
// do without a sequential scan costs so much with them off that Postgres
// compiles it (JIT), every time.
const noSeqScanSQL = "SET LOCAL enable_seqscan = off"

// claimTx begins a transaction planned as a claim's, in one round trip.
var claimTx = pgx.TxOptions{BeginQuery: "BEGIN; " + noSeqScanSQL}

// scanEvent scans a row of claimSQL's result, in its order, and gives an
// event queued without a uuid its derived one; it reports false for the row
// of an empty claim, which carries only the snapshot. It is written out,
// rather than left to pgx.RowToStructByName, because it runs for every event
// and the reflection cost a quarter of the shipper's CPU; it scans into
// reused targets because allocating them cost another tenth.
func (c *Claimer) scanEvent(row pgx.Rows) (Event, bool, error) {
	t := c.scratch.scanTargets()
	if row.RawValues()[3] == nil {
		return Event{}, false, row.Scan(append([]any{&t.xmin, &t.xmax}, make([]any, len(t.dests)-2)...)...)
	}
	if err := row.Scan(t.dests...); err != nil {
		return Event{}, false, err
	}
	e := t.event // every target is overwritten by the next row's scan
	e.TableSchema, e.TableName, e.Statement = c.scratch.intern(t.schema), c.scratch.intern(t.table), c.scratch.intern(t.statement)
	e.Data = c.scratch.keep(t.data)
	if t.uuid.Valid {
		e.UUID = t.uuid.Bytes
	} else {
		e.UUID = c.uuids.derive(e.ID, e.CreatedAt)
	}
	return e, true, nil
}

const deleteSQL = `DELETE FROM pg2kafka.outbound_event_queue WHERE id = ANY($1)`

// Batch is a claimed set of events, in id order. Until Complete or Rollback,
// one of which must be called, its rows are deleted but not committed:
// invisible to other claims, and back in the queue if the claimer dies.
type Batch struct {
	Events []Event
	tx     pgx.Tx
	conn   *pgx.Conn
	// low is where what the batch taught is learnt, once it is settled;
	// nil after that.
	low     *lowWater
	scan    scan
	claimer *Claimer
}

// Claim takes up to limit of the oldest events of the claimer's lanes,
// skipping the tables in except. A claimer without lanes, or an empty queue,
// yields a batch with no events. The batch's Events are the claimer's until
// its next Claim, which reuses them.
func (c *Claimer) Claim(ctx context.Context, limit int, except []Table) (*Batch, error) {
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	if len(c.lanes) == 0 {
		return &Batch{}, nil
	}
	now := time.Now()
	c.seen = c.queue.readings.get().gen
	c.low.begin(c.conn, except, now)
	if err := c.probe(ctx, now); err != nil {
		return nil, err
	}
	if err := c.lookForWriters(ctx, now); err != nil {
		return nil, err
	}
	from := c.low.from(except)
	lanes, schemas, names := c.claimArgs(except)
	qctx, cancel := c.roundTrip(ctx)
	defer cancel()
	c.siblings = c.queue.otherClaims(c, c.siblings[:0])
	// The transaction's BEGIN, its setting and the claim go in one round
	// trip: a worker that waits on each in turn waits three times as long,
	// and an event committed meanwhile with it.
	var claim pgx.Batch
	claim.BeginTx(pgx.TxOptions{})
	claim.Queue(noSeqScanSQL)
	claim.Queue(claimSQL, limit, lanes, schemas, names, from, c.siblings)
	results := c.conn.SendBatch(qctx, &claim)
	tx := results.Tx()
	_, err := results.Exec()
	if err == nil {
		_, err = results.Exec()
	}
	events := c.scratch.events[:0]
	if err == nil {
		var rows pgx.Rows
		rows, err = results.Query()
		for err == nil && rows.Next() {
			var e Event
			var ok bool
			if e, ok, err = c.scanEvent(rows); ok {
				events = append(events, e)
			}
		}
		if rows != nil {
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
	}
	if closeErr := results.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("outbox: claim: %w", err)
	}
	c.heard()
	c.scratch.events = events
	// RETURNING promises no order.
	slices.SortFunc(events, func(a, b Event) int { return cmp.Compare(a.ID, b.ID) })
	var last int64
	if len(events) > 0 {
		last = events[len(events)-1].ID
		// Its ids were handed out: the claimers waiting for news of events
		// in other lanes hear it now, not at the watcher's next check.
		c.queue.readings.note(last)
	}
	t := c.scratch.scanTargets()
	if len(events) > 0 {
		c.queue.claimOpened(c, t.xid)
	}
	s := c.low.claimed(except, t.xmin, t.xmax, len(events), last, len(events) >= limit, time.Now())
	return &Batch{Events: events, tx: tx, conn: c.conn, low: &c.low, scan: s, claimer: c}, nil
}

// claimArgs returns claimSQL's lanes and skipped tables.
func (c *Claimer) claimArgs(except []Table) (lanes []int32, schemas, names []string) {
	if len(c.lanes) < Lanes {
		lanes = c.lanes // nil: every lane, which needs no filter
	}
	for _, t := range except {
		schemas, names = append(schemas, t.Schema), append(names, t.Name)
	}
	return lanes, schemas, names
}

// Complete settles the batch once its destination has answered:
// acknowledged holds the ids of the events it acknowledged, which are
// deleted for good; deadLetters the events it refused for good, which move
// to the dead-letter table in the same transaction; the others go back to
// the queue.
func (b *Batch) Complete(ctx context.Context, acknowledged []int64, deadLetters ...DeadLetter) (err error) {
	if b.tx == nil {
		return nil
	}
	defer func() { b.settle(acknowledged, deadLetters, err == nil) }()
	if len(deadLetters) > 0 {
		return b.completeWithDeadLetters(ctx, acknowledged, deadLetters)
	}
	switch len(acknowledged) {
	case len(b.Events):
		if err := b.tx.Commit(ctx); err != nil {
			return fmt.Errorf("outbox: commit acknowledged events: %w", err)
		}
		return nil
	case 0:
		return b.rollback(ctx)
	}
	// Some failed. The claim deleted them all; undo it and delete only the
	// acknowledged ones. The lanes are still this claimer's, so no other
	// claim can take the released events in between.
	if err := b.rollback(ctx); err != nil {
		return err
	}
	if _, err := b.conn.Exec(ctx, deleteSQL, acknowledged); err != nil {
		return fmt.Errorf("outbox: delete acknowledged events: %w", err)
	}
	return nil
}

// Rollback returns every event of the batch to the queue.
func (b *Batch) Rollback(ctx context.Context) (err error) {
	if b.tx == nil {
		return nil
	}
	defer func() { b.settle(nil, nil, err == nil) }()
	return b.rollback(ctx)
}

func (b *Batch) rollback(ctx context.Context) error {
	if err := b.tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("outbox: release batch: %w", err)
	}
	return nil
}

// settle tells the claimer's low-water ids which of the batch's events are
// gone for good: the acknowledged and the dead-lettered ones, if ok.
func (b *Batch) settle(acknowledged []int64, deadLetters []DeadLetter, ok bool) {
	if b.low == nil {
		return
	}
	low := b.low
	b.low = nil
	b.claimer.queue.claimSettled(b.claimer)
	if len(acknowledged)+len(deadLetters) == len(b.Events) {
		low.settled(b.scan, b.Events, func(int) bool { return false }, ok)
		return
	}
	gone := make(map[int64]bool, len(acknowledged)+len(deadLetters))
	for _, id := range acknowledged {
		gone[id] = true
	}
	for _, l := range deadLetters {
		gone[l.ID] = true
	}
	low.settled(b.scan, b.Events, func(i int) bool { return !gone[b.Events[i].ID] }, ok)
}
