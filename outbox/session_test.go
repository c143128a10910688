package outbox_test

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// takeover is the lane takeover timeout of these tests' claimers.
const takeover = time.Second

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *bundle) boundedClaimer(t *testing.T, logs *lockedBuffer) *outbox.Claimer {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	if logs != nil {
		logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	c := outbox.NewQueue(b.pool).NewClaimer(logger, takeover)
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
	}{{"between batches", false}, {"inside a claim", true}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t,
				`CREATE TABLE items (id int PRIMARY KEY)`,
				`SELECT pg2kafka.setup('items', 'id')`,
				`INSERT INTO items SELECT generate_series(1, 10)`,
			)
			var logs lockedBuffer
			owner, heir := b.boundedClaimer(t, &logs), b.boundedClaimer(t, nil)
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
			if batch != nil {
				if err := batch.Complete(t.Context(), ids(batch.Events)); err == nil {
					t.Fatal("completing the claim of a session Postgres ended succeeded")
				} else if !strings.Contains(err.Error(), "idle-in-transaction timeout") {
					t.Errorf("completing the lost claim: %v, want Postgres' idle-in-transaction timeout", err)
				}
			} else if _, err := owner.Claim(t.Context(), 100, nil); err == nil {
				t.Fatal("claiming over a session Postgres ended succeeded")
			} else if !strings.Contains(err.Error(), "idle-session timeout") {
				t.Errorf("claiming over the lost session: %v, want Postgres' idle-session timeout", err)
			}
			converge(t, owner, heir)
			if !strings.Contains(logs.String(), "lost its lanes") {
				t.Errorf("the owner did not log that it lost its lanes; its logs:\n%s", logs.String())
			}
		})
	}
}

// A claimer that keeps its session alive while it waits, with a claim open
// and without, keeps its lanes and its claim however long it waits.
func TestClaimerKeptAliveKeepsItsLanes(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		`INSERT INTO items SELECT generate_series(1, 10)`,
	)
	var logs lockedBuffer
	c := b.boundedClaimer(t, &logs)
	rebalance(t, c)
	lanes := c.Lanes()
	pid := func() int {
		return b.count(t, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND classid = x'70676b00'::int::oid
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	}
	before := pid()
	waitKeepingAlive := func() {
		for end := time.Now().Add(2 * takeover); time.Now().Before(end); {
			time.Sleep(c.KeepAliveInterval())
			if err := c.KeepAlive(t.Context()); err != nil {
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
	if _, err := c.Rebalance(t.Context()); err != nil {
		t.Fatal(err)
	}
	if after := pid(); after != before || !slices.Equal(c.Lanes(), lanes) {
		t.Errorf("after waiting: session %d with lanes %v, want session %d with %v", after, c.Lanes(), before, lanes)
	}
	if n := b.count(t, `SELECT count(*) FROM pg2kafka.outbound_event_queue`); n != 0 {
		t.Errorf("%d events queued, want none", n)
	}
	if strings.Contains(logs.String(), "lost") {
		t.Errorf("logs:\n%s", logs.String())
	}
}
