package outbox_test

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pg2kafka/pg2kafka/internal/syncbuf"
	"github.com/pg2kafka/pg2kafka/outbox"
)

// takeover is the lane takeover timeout of these tests' claimers.
const takeover = 2 * time.Second

func (b *bundle) boundedClaimer(t *testing.T, logs *syncbuf.Buffer, pg13 bool) *outbox.Claimer {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	if logs != nil {
		logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	c := outbox.NewQueue(b.pool).NewClaimer(logger, takeover)
	if pg13 {
		outbox.WithoutIdleSessionTimeout(c)
	}
	t.Cleanup(func() { c.Close(t.Context()) })
	return c
}

// A claimer that says nothing to Postgres, as when its process is frozen,
// loses its session, its open claim and its lanes within the takeover
// timeout, and says so when it comes back.
func TestSilentClaimerLosesItsLanes(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		claim bool
		pg13  bool
		ended string // what Postgres says when the owner speaks again
	}{
		{"between batches", false, false, "idle-session timeout"},
		{"inside a claim", true, false, "idle-in-transaction timeout"},
		// Without idle_session_timeout the heir ends the owner's session.
		{"between batches, Postgres 13", false, true, "administrator command"},
		{"inside a claim, Postgres 13", true, true, "idle-in-transaction timeout"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t,
				`CREATE TABLE items (id int PRIMARY KEY)`,
				`SELECT pg2kafka.setup('items', 'id')`,
				`INSERT INTO items SELECT generate_series(1, 10)`,
			)
			var logs syncbuf.Buffer
			owner, heir := b.boundedClaimer(t, &logs, tt.pg13), b.boundedClaimer(t, nil, tt.pg13)
			rebalance(t, owner)
			var batch *outbox.Batch
			if tt.claim {
				var err error
				if batch, err = owner.Claim(t.Context(), 100, nil); err != nil {
					t.Fatal(err)
				}
			}
			silentSince := time.Now()

			// The heir takes every lane once Postgres has ended the
			// owner's session; the claim is back in the queue by then.
			if err := heir.Join(t.Context()); err != nil {
				t.Fatal(err)
			}
			for len(heir.Lanes()) < outbox.Lanes {
				if time.Since(silentSince) > 5*takeover {
					t.Fatalf("the heir owns %d lanes %s after the owner fell silent", len(heir.Lanes()), time.Since(silentSince))
				}
				rebalance(t, heir)
				time.Sleep(10 * time.Millisecond)
			}
			if took := time.Since(silentSince); took > takeover {
				t.Errorf("the lanes changed hands %s after the owner fell silent, over the takeover timeout %s", took, takeover)
			}
			if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue`); n != 10 {
				t.Fatalf("%d events queued, want all 10 back", n)
			}

			// The owner wakes: its claim cannot be settled, and it rejoins.
			var err error
			if batch != nil {
				err = batch.Complete(t.Context(), ids(batch.Events))
			} else {
				_, err = owner.Claim(t.Context(), 100, nil)
			}
			if err == nil {
				t.Fatal("using a session Postgres ended succeeded")
			} else if !strings.Contains(err.Error(), tt.ended) {
				t.Errorf("using the lost session: %v, want Postgres' %s", err, tt.ended)
			}
			converge(t, owner, heir)
			if !strings.Contains(logs.String(), "lost its lanes") {
				t.Errorf("the owner did not log that it lost its lanes; its logs:\n%s", logs.String())
			}
		})
	}
}

// A claimer that keeps its session alive while it waits, with a claim open
// and without, keeps its lanes and its claim however long it waits; also
// on Postgres 13, beside a peer ending silent sessions.
func TestClaimerKeptAliveKeepsItsLanes(t *testing.T) {
	t.Parallel()
	for _, pg13 := range []bool{false, true} {
		t.Run(fmt.Sprintf("postgres 13: %v", pg13), func(t *testing.T) {
			t.Parallel()
			testClaimerKeptAliveKeepsItsLanes(t, pg13)
		})
	}
}

func testClaimerKeptAliveKeepsItsLanes(t *testing.T, pg13 bool) {
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		`INSERT INTO items SELECT generate_series(1, 10)`,
	)
	var logs syncbuf.Buffer
	c := b.boundedClaimer(t, &logs, pg13)
	rebalance(t, c)
	lanes := c.Lanes()
	// A peer that owns no lanes (it joins after c took them all) and
	// rebalances all along, ending the sessions it finds silent.
	peer := b.boundedClaimer(t, nil, pg13)
	if err := peer.Join(t.Context()); err != nil {
		t.Fatal(err)
	}
	pid := func() int {
		return b.count(t, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND classid = x'70676b01'::int::oid AND objid = 0
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	}
	before := pid()
	waitKeepingAlive := func() {
		for end := time.Now().Add(2 * takeover); time.Now().Before(end); {
			time.Sleep(c.KeepAliveInterval())
			if err := c.KeepAlive(t.Context()); err != nil {
				t.Fatal(err)
			}
			if _, err := peer.Rebalance(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
	}

	batch, err := c.Claim(t.Context(), 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitKeepingAlive() // as while the destination takes its time
	if err := batch.Complete(t.Context(), ids(batch.Events)); err != nil {
		t.Fatalf("completing a claim kept alive: %v", err)
	}
	waitKeepingAlive() // as while backing off, or polling slowly
	if after := pid(); after != before || !slices.Equal(c.Lanes(), lanes) {
		t.Errorf("after waiting: session %d with lanes %v, want session %d with %v", after, c.Lanes(), before, lanes)
	}
	if got := peer.Lanes(); len(got) > 0 {
		t.Errorf("the peer took lanes %v from a claimer that kept its session alive", got)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue`); n != 0 {
		t.Errorf("%d events queued, want none", n)
	}
	if strings.Contains(logs.String(), "lost") {
		t.Errorf("logs:\n%s", logs.String())
	}
}
