package outbox_test

import (
	"slices"
	"testing"

	"github.com/google/uuid"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// An event queued without a uuid is claimed with the one
// pg2kafka.event_uuid() gives it, a version 8 RFC 9562 uuid, the same at
// every claim, different for every event and for every installation; one
// queued with a uuid keeps it.
func TestClaimedEventsCarryTheirDerivedUUID(t *testing.T) {
	t.Parallel()
	const items = `CREATE TABLE items (id int PRIMARY KEY, name text)`
	b := setup(t, items, `SELECT pg2kafka.setup('items', 'name')`,
		`INSERT INTO items SELECT g, 'item-' || g FROM generate_series(1, 20) AS g`,
		`INSERT INTO pg2kafka.outbound_event_queue (uuid, external_id, table_schema, table_name, statement, data)
		 VALUES ('d6521ce5-4068-45e4-a9ad-c0949033a55b', 'CM01-R', 'public', 'items', 'UPDATE', '{"name": "Big Red Coffee Mug"}')`)
	// The same events in a second installation: same ids, and the same
	// created_at, copied over.
	other := setup(t, items)

	want := make(map[int64]uuid.UUID)
	rows, _ := b.pool.Query(b.ctx, `SELECT id, created_at, coalesce(uuid, pg2kafka.event_uuid(id, created_at)) FROM pg2kafka.outbound_event_queue`)
	var id int64
	var createdAt any
	var u uuid.UUID
	var otherUUIDs []uuid.UUID
	for rows.Next() {
		if err := rows.Scan(&id, &createdAt, &u); err != nil {
			t.Fatal(err)
		}
		want[id] = u
		var theirs uuid.UUID
		if err := other.pool.QueryRow(other.ctx, `SELECT pg2kafka.event_uuid($1, $2)`, id, createdAt).Scan(&theirs); err != nil {
			t.Fatal(err)
		}
		otherUUIDs = append(otherUUIDs, theirs)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}

	// Claimed, given back, claimed again: a redelivery carries the same uuids.
	c := b.claimer(t)
	rebalance(t, c)
	var claimed [2][]outbox.Event
	for i := range claimed {
		batch, err := c.Claim(t.Context(), 100, nil)
		if err != nil {
			t.Fatal(err)
		}
		claimed[i] = slices.Clone(batch.Events)
		if err := batch.Rollback(b.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(claimed[0]) != 21 {
		t.Fatalf("claimed %d events, want 21", len(claimed[0]))
	}
	if !slices.EqualFunc(claimed[0], claimed[1], func(a, b outbox.Event) bool { return a.ID == b.ID && a.UUID == b.UUID }) {
		t.Errorf("claimed again, the events have other ids or uuids")
	}
	seen := make(map[uuid.UUID]bool)
	for _, e := range claimed[0] {
		if e.UUID != want[e.ID] {
			t.Errorf("event %d: uuid %s, want %s, as pg2kafka.event_uuid() has it", e.ID, e.UUID, want[e.ID])
		}
		if e.ExternalID != nil && *e.ExternalID == "CM01-R" {
			if e.UUID.String() != "d6521ce5-4068-45e4-a9ad-c0949033a55b" {
				t.Errorf("event queued with uuid d6521ce5-4068-45e4-a9ad-c0949033a55b claimed with %s", e.UUID)
			}
		} else if e.UUID.Version() != 8 || e.UUID.Variant() != uuid.RFC4122 {
			t.Errorf("event %d: uuid %s is version %d, variant %s; want version 8, variant %s", e.ID, e.UUID, e.UUID.Version(), e.UUID.Variant(), uuid.RFC4122)
		}
		seen[e.UUID] = true
	}
	for _, theirs := range otherUUIDs {
		seen[theirs] = true
	}
	if len(seen) != 2*21 {
		t.Errorf("%d distinct uuids among 21 events of one installation and their twins in another, want 42", len(seen))
	}
}
