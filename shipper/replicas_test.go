package shipper_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

// writeVersions has keys rows, each updated versions times, one transaction
// per update and the keys interleaved, so every key's events are spread over
// the whole queue. Each event's data carries the row's version.
func (b *bundle) writeVersions(keys, versions int) {
	b.t.Helper()
	b.exec(
		`CREATE TABLE counters (id text PRIMARY KEY, version int)`,
		`SELECT pg2kafka.setup('counters', 'id')`,
		fmt.Sprintf(`INSERT INTO counters SELECT 'key-' || i, 0 FROM generate_series(1, %d) i`, keys),
	)
	for v := 1; v < versions; v++ {
		b.exec(`UPDATE counters SET version = version + 1`)
	}
}

// requireVersionsInOrder reads every record of the counters topic and checks
// that each key's versions arrive as 0, 1, 2, … with nothing missing; it
// returns how many records were duplicates, replays of a version already
// seen, which at-least-once delivery allows after a crash.
func (b *bundle) requireVersionsInOrder(keys, versions int) (duplicates int) {
	b.t.Helper()
	topic := b.topic("counters")
	b.waitQueueEmpty()
	records := b.consume(int(b.recordCount(topic)), topic)
	seen := make(map[string]int) // key → next version expected
	for _, r := range byKey(records) {
		for _, rec := range r {
			var event struct {
				Data struct {
					Version *int `json:"version"`
				} `json:"data"`
			}
			if err := json.Unmarshal([]byte(rec.Value), &event); err != nil || event.Data.Version == nil {
				b.t.Fatalf("record %s: no version: %v", rec.Value, err)
			}
			key, v := *rec.Key, *event.Data.Version
			switch next := seen[key]; {
			case v == next:
				seen[key]++
			case v < next:
				duplicates++
			default:
				b.t.Fatalf("key %s: version %d arrived before version %d", key, v, next)
			}
		}
	}
	for i := 1; i <= keys; i++ {
		if key := "key-" + strconv.Itoa(i); seen[key] != versions {
			b.t.Errorf("key %s: %d versions arrived, want %d", key, seen[key], versions)
		}
	}
	return duplicates
}

func TestReplicasShareTheQueueWithoutDuplicatesOrReordering(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const keys, versions = 50, 20
	b.writeVersions(keys, versions)
	b.createTopics(b.topic("counters"))

	// Three replicas of two workers each, claiming small batches so that
	// each key's events are spread over many batches and workers.
	for range 3 {
		b.start(shipper.Config{BatchSize: 25, Workers: 2}, kafka.Config{})
	}
	if dups := b.requireVersionsInOrder(keys, versions); dups != 0 {
		t.Fatalf("%d events shipped twice with no replica failing", dups)
	}
}

func TestReplicaStoppingHandsOverItsLanes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const keys, versions = 50, 40
	b.writeVersions(keys, versions)
	topic := b.topic("counters")
	b.createTopics(topic)

	leaving := b.start(shipper.Config{BatchSize: 10, Workers: 2}, kafka.Config{})
	b.start(shipper.Config{BatchSize: 10, Workers: 2}, kafka.Config{})
	// Stop one replica while the queue is still being drained.
	b.waitFor("some records to flow", func() bool { return b.recordCount(topic) >= 200 })
	leaving()
	if dups := b.requireVersionsInOrder(keys, versions); dups != 0 {
		t.Fatalf("%d events shipped twice after a clean stop", dups)
	}
}
