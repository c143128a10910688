package outbox_test

import (
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/outbox"
)

// shipperPool connects as a login role holding nothing but pg2kafka_shipper.
func (b *bundle) shipperPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	role := pgtest.NewRole(t)
	b.exec(t, `GRANT pg2kafka_shipper TO `+role.Name)
	pool, err := pgxpool.New(b.ctx, role.ConnString(t, b.connString))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func TestBacklogsAsTheShipperRole(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `CREATE TABLE notes (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('products', 'sku')`, `SELECT pg2kafka.setup('notes', 'id')`,
		`INSERT INTO products SELECT g, 'S' || g FROM generate_series(1, 4) g`,
		// Left behind by a table no longer tracked.
		`INSERT INTO pg2kafka.outbound_event_queue (table_schema, table_name, statement, data) VALUES ('public', 'gone', 'INSERT', '{}')`)
	batch := b.claimAll(t)
	now := time.Now()
	if err := batch.Complete(b.ctx, nil, outbox.DeadLetter{ID: batch.Events[0].ID, Error: "too large", Attempts: 1, FirstFailedAt: now, LastFailedAt: now}); err != nil {
		t.Fatal(err)
	}
	var oldest time.Time
	if err := b.pool.QueryRow(b.ctx, `SELECT min(created_at) FROM pg2kafka.outbound_event_queue WHERE table_name = 'products'`).Scan(&oldest); err != nil {
		t.Fatal(err)
	}

	got, err := outbox.Backlogs(b.ctx, b.shipperPool(t))
	if err != nil {
		t.Fatalf("Backlogs: %v", err)
	}
	var gone time.Time
	for _, g := range got {
		if g.Name == "gone" {
			gone = g.Oldest
		}
	}
	want := []outbox.Backlog{
		{Table: outbox.Table{Schema: "public", Name: "gone"}, Queued: 1, Oldest: gone},
		{Table: outbox.Table{Schema: "public", Name: "notes"}, Tracked: true},
		{Table: outbox.Table{Schema: "public", Name: "products"}, Tracked: true, Queued: 3, Oldest: oldest, DeadLetters: 1},
	}
	for i := range got {
		got[i].Oldest = got[i].Oldest.UTC()
	}
	for i := range want {
		want[i].Oldest = want[i].Oldest.UTC()
	}
	if gone.IsZero() || !reflect.DeepEqual(got, want) {
		t.Errorf("Backlogs:\n got %+v\nwant %+v", got, want)
	}

	tables, err := outbox.TrackedTables(b.ctx, b.shipperPool(t))
	if err != nil {
		t.Fatalf("TrackedTables: %v", err)
	}
	if want := []outbox.Table{{"public", "notes"}, {"public", "products"}}; !slices.Equal(tables, want) {
		t.Errorf("TrackedTables = %v, want %v", tables, want)
	}
}

func TestShippersListsEachClaimerAndItsLanes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pool := b.shipperPool(t)
	var claimers []*outbox.Claimer
	for range 2 {
		c := outbox.NewQueue(pool).NewClaimer(slog.New(slog.DiscardHandler), 0)
		t.Cleanup(func() { c.Close(b.ctx) })
		if err := c.Join(b.ctx); err != nil {
			t.Fatal(err)
		}
		claimers = append(claimers, c)
	}
	rebalance(t, claimers...)
	rebalance(t, claimers...)

	got, err := outbox.Shippers(b.ctx, pool)
	if err != nil {
		t.Fatalf("Shippers: %v", err)
	}
	if len(got) != 2 {
		t.Fatalf("Shippers = %+v, want the two claimers", got)
	}
	byLanes := map[string]bool{}
	for i, s := range got {
		if s.PID == 0 || s.ClientAddr != "127.0.0.1" || time.Since(s.Since) > time.Minute {
			t.Errorf("shipper %d: %+v, want a pid, 127.0.0.1 and a recent start", i, s)
		}
		byLanes[fmt.Sprint(s.Lanes)] = true
	}
	for _, c := range claimers {
		if !byLanes[fmt.Sprint(c.Lanes())] {
			t.Errorf("no shipper listed with lanes %v; listed %+v", c.Lanes(), got)
		}
	}
}
