package outbox_test

import (
	"fmt"
	"log/slog"
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

func TestTrackedTablesAsTheShipperRole(t *testing.T) {
	t.Parallel()
	b := setup(t, productsSQL, `CREATE TABLE notes (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('products', 'sku')`, `SELECT pg2kafka.setup('notes', 'id')`)
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
