package outbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/outbox"
)

func TestOldestHorizonNamesTheSessionHoldingIt(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
	)
	_, pid, began := holdSnapshot(t, b)

	b.exec(t, `INSERT INTO items SELECT generate_series(1, 500)`)
	s := &shipper{c: b.claimer(t)}
	rebalance(t, s.c)
	s.drain(t, 1000)

	deadline := time.Now().Add(20 * time.Second)
	for {
		h, err := outbox.OldestHorizon(b.ctx, b.pool)
		if err != nil {
			t.Fatal(err)
		}
		if h.Holder != "session" || h.PID != pid || h.Name != "nightly-dump" || h.State != "idle in transaction" || !h.Since.Equal(began) {
			t.Fatalf("oldest horizon %+v, want the session %d nightly-dump, idle in transaction since %s", h, pid, began)
		}
		if age := h.Age(time.Now()); age <= 0 || age > time.Minute {
			t.Fatalf("age %s, want the snapshot's, under a minute", age)
		}
		// Postgres counts the dead rows a moment after the deletes.
		if h.DeadRows >= 500 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queue has %d dead rows, want the 500 shipped", h.DeadRows)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestOldestHorizonAsTheShipperRole reads the horizon as pg2kafka_shipper,
// which may not see the state, the start or even the kind of another
// role's session, but may see its snapshot: a pg_dump by the owner is still
// found, without the times the role may not see.
func TestOldestHorizonAsTheShipperRole(t *testing.T) {
	t.Parallel()
	role := pgtest.NewRole(t)
	b := setup(t, `GRANT pg2kafka_shipper TO `+role.Name)
	pool, err := pgxpool.New(b.ctx, role.ConnString(t, b.connString))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	dump, pid, _ := holdSnapshot(t, b)
	b.exec(t, `SELECT txid_current()`) // a transaction after the snapshot
	h, err := outbox.OldestHorizon(b.ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if h.Holder != "session" || h.PID != pid || h.Name != "nightly-dump" || h.XIDAge < 1 || !h.Since.IsZero() || h.State != "" {
		t.Errorf("oldest horizon %+v, want the session %d nightly-dump, at least a transaction old, its start and state unknown", h, pid)
	}
	if _, err := dump.Exec(b.ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if h, err := outbox.OldestHorizon(b.ctx, pool); err != nil || h.Holder != "" {
		t.Errorf("released, oldest horizon %+v, %v; want none", h, err)
	}
}

// holdSnapshot opens a session named nightly-dump, as pg_dump's would be,
// holding a REPEATABLE READ snapshot, and returns it with its pid and when
// its transaction began.
func holdSnapshot(t *testing.T, b *bundle) (dump *pgx.Conn, pid int32, began time.Time) {
	t.Helper()
	cfg, err := pgx.ParseConfig(b.connString)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "nightly-dump"
	dump, err = pgx.ConnectConfig(b.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dump.Close(context.Background()) })
	if _, err := dump.Exec(b.ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`); err != nil {
		t.Fatal(err)
	}
	if err := dump.QueryRow(b.ctx, `SELECT pg_backend_pid(), now()`).Scan(&pid, &began); err != nil {
		t.Fatal(err)
	}
	return dump, pid, began
}
