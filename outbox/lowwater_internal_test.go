package outbox

import (
	"testing"
	"time"
)

// The low-water ids as claims move them, without a database: each step is
// a claim's snapshot and events, then how they were settled.
func TestLowWaterKeepsEventsSentBackBelowIt(t *testing.T) {
	items, other := Table{"public", "items"}, Table{"public", "other"}
	ev := func(id int64, t Table) Event { return Event{ID: id, TableSchema: t.Schema, TableName: t.Name} }
	now := time.Now()
	var w lowWater
	w.begin(nil, nil, now)
	// A probe found ids handed out up to 99; their writers ended before
	// transaction 500.
	w.cand = candidate{id: 100, bound: 500}

	// A claim whose snapshot is past the bound finds two events below 100,
	// a writer's that committed late among them, and one of them fails.
	events := []Event{ev(40, items), ev(41, other)}
	s := w.claimed(nil, 500, 510, len(events), 41, false, now)
	if s.lift != 100 {
		t.Fatalf("lift %d, want the candidate 100", s.lift)
	}
	w.settled(s, events, func(i int) bool { return i == 0 }, true)
	if got := w.from(nil); got != 40 {
		t.Fatalf("the next claim starts at %d, want 40, the event sent back", got)
	}
	if got := w.from([]Table{items}); got != 100 {
		t.Fatalf("with items paused the next claim starts at %d, want 100", got)
	}

	// A claim that hit its limit lets the low-water id move only past what
	// it read.
	w.cand = candidate{id: 300, bound: 600}
	events = []Event{ev(150, other), ev(160, other)}
	s = w.claimed([]Table{items}, 600, 610, len(events), 160, true, now)
	w.settled(s, events, func(int) bool { return false }, true)
	if w.flow != 161 || w.tables[items] != 40 || w.cand.id != 300 {
		t.Fatalf("flow %d, items %d, candidate %d; want 161, 40 and 300 still waiting", w.flow, w.tables[items], w.cand.id)
	}

	// A batch whose settling failed counts as sent back, and its
	// candidate is dropped.
	events = []Event{ev(170, other)}
	s = w.claimed(nil, 0, 0, len(events), 170, false, now)
	w.settled(s, events, func(int) bool { return false }, false)
	if w.tables[other] != 161 || w.cand.id != 0 {
		t.Fatalf("other %d, candidate %d; want 161 and none", w.tables[other], w.cand.id)
	}
}
