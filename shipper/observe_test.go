package shipper_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
)

// verdictSink acknowledges every message but those whose value holds
// "poison", which it refuses for good, and "flaky", which fail.
type verdictSink struct{}

func (verdictSink) Send(_ context.Context, msgs []shipper.Message) []error {
	errs := make([]error, len(msgs))
	for i, m := range msgs {
		switch {
		case bytes.Contains(m.Value, []byte("poison")):
			errs[i] = &shipper.RejectedError{Err: errors.New("refused"), Attempts: 1, FirstFailedAt: time.Now(), LastFailedAt: time.Now()}
		case bytes.Contains(m.Value, []byte("flaky")):
			errs[i] = errors.New("unavailable")
		}
	}
	return errs
}

func (verdictSink) Close() {}

// outcome is what OnSettled told of one event.
type outcome struct {
	data    string
	verdict string // acknowledged, dead-lettered or failed
}

func TestOnSettledTellsEachEventsOutcomeAfterCommit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE notes (id int PRIMARY KEY, body text)`,
		`SELECT pg2kafka.setup('notes', 'id')`,
		`INSERT INTO notes VALUES (1, 'fine'), (2, 'poison'), (3, 'flaky')`,
	)
	var mu sync.Mutex
	var got []outcome
	var queuedAtAck []string
	settled := func(s *shipper.Settled) {
		// The outcome is committed: what was acknowledged or dead-lettered
		// is gone from the queue already.
		rows, err := b.pool.Query(context.Background(), `SELECT data->>'body' FROM pg2kafka.outbound_event_queue ORDER BY id`)
		if err != nil {
			t.Error(err)
			return
		}
		defer rows.Close()
		var left []string
		for rows.Next() {
			var body string
			_ = rows.Scan(&body)
			left = append(left, body)
		}
		mu.Lock()
		defer mu.Unlock()
		if !s.Claimed.Before(s.Acknowledged) || s.Committed.Before(s.Acknowledged) {
			t.Errorf("times out of order: claimed %v, acknowledged %v, committed %v", s.Claimed, s.Acknowledged, s.Committed)
		}
		for i, e := range s.Events {
			verdict := "acknowledged"
			if _, ok := errors.AsType[*shipper.RejectedError](s.Errs[i]); ok {
				verdict = "dead-lettered"
			} else if s.Errs[i] != nil {
				verdict = "failed"
			}
			if string(s.Messages[i].Key) != *e.ExternalID {
				t.Errorf("message %d has key %q, want event %d's external id %q", i, s.Messages[i].Key, e.ID, *e.ExternalID)
			}
			got = append(got, outcome{string(e.Data), verdict})
		}
		queuedAtAck = left
	}
	b.startWith(shipper.Config{Workers: 1, OnSettled: settled}, verdictSink{})

	b.waitFor("three outcomes", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 3 })
	mu.Lock()
	first := slices.Clone(got[:3])
	left := slices.Clone(queuedAtAck)
	mu.Unlock()
	want := []outcome{
		{`{"id": 1, "body": "fine"}`, "acknowledged"},
		{`{"id": 2, "body": "poison"}`, "dead-lettered"},
		{`{"id": 3, "body": "flaky"}`, "failed"},
	}
	if !slices.Equal(first, want) {
		t.Errorf("outcomes\n got %v\nwant %v", first, want)
	}
	if !slices.Equal(left, []string{"flaky"}) {
		t.Errorf("queue when told of the outcome: %q, want only the failed event", left)
	}
}

func TestStateReportsLanesAndReadiness(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s := shipper.New(shipper.Config{Database: b.database}, outbox.NewQueue(b.pool), verdictSink{})
	if err := s.State().Ready(); err == nil || s.State().Running {
		t.Fatalf("before Run: Ready() = %v, Running = %v; want an error and false", err, s.State().Running)
	}
	b.startWith(shipper.Config{Workers: 2}, verdictSink{})
	b.waitFor("all 64 lanes owned", func() bool { return b.shipper.State().Lanes() == outbox.Lanes })
	st := b.shipper.State()
	if err := st.Ready(); err != nil {
		t.Errorf("Ready() = %v, want nil", err)
	}
	if len(st.Workers) != 2 {
		t.Fatalf("%d workers, want 2", len(st.Workers))
	}
	var lanes []int32
	for _, w := range st.Workers {
		lanes = append(lanes, w.Lanes...)
	}
	slices.Sort(lanes)
	if len(slices.Compact(lanes)) != outbox.Lanes {
		t.Errorf("lanes %v: want each of the %d once", lanes, outbox.Lanes)
	}
}
