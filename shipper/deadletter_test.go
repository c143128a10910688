package shipper_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

// sizeLimit is the most bytes a record batch may hold in tests about
// records too large: far more than a batch of small events, far less than
// one huge event.
const sizeLimit = 100_000

// hugeSQL is a text of 256,000 random hex digits. Random, so that no
// compression brings it under sizeLimit: at best it halves it.
const hugeSQL = `(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 8000))`

// deadLetter is a row of pg2kafka.dead_letter_events, less its data.
type deadLetter struct {
	ID            int64     `db:"id"`
	UUID          string    `db:"uuid"`
	ExternalID    *string   `db:"external_id"`
	Statement     string    `db:"statement"`
	DataBytes     int       `db:"data_bytes"`
	Error         string    `db:"error"`
	Attempts      int       `db:"attempts"`
	FirstFailedAt time.Time `db:"first_failed_at"`
	LastFailedAt  time.Time `db:"last_failed_at"`
}

// deadLetters returns the dead-letter table, in id order.
func (b *bundle) deadLetters() []deadLetter {
	b.t.Helper()
	rows, _ := b.pool.Query(context.Background(), `
		SELECT id, uuid::text, external_id, statement, octet_length(data::text) AS data_bytes,
		       error, attempts, first_failed_at, last_failed_at
		FROM pg2kafka.dead_letter_events ORDER BY id`)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByName[deadLetter])
	if err != nil {
		b.t.Fatalf("read pg2kafka.dead_letter_events: %v", err)
	}
	return got
}

// without returns want less the records of the events with the given uuids,
// and with each of moved taken out of its group and put at the group's end.
func without(want map[string][]consumed, dropped []string, moved ...string) map[string][]consumed {
	has := func(r consumed, uuids []string) bool {
		return slices.ContainsFunc(uuids, func(u string) bool { return strings.Contains(r.Value, u) })
	}
	out := make(map[string][]consumed)
	for k, group := range want {
		var kept, last []consumed
		for _, r := range group {
			switch {
			case has(r, dropped):
			case has(r, moved):
				last = append(last, r)
			default:
				kept = append(kept, r)
			}
		}
		kept = append(kept, last...)
		for i := range kept {
			kept[i].Offset = int64(i)
		}
		if len(kept) > 0 {
			out[k] = kept
		}
	}
	return out
}

// writePoisonEvents fills the queue with eight events of three keys, two of
// them huge, and returns the changes they are, in order, and the indexes of
// the huge ones.
func (b *bundle) writePoisonEvents() (changes []change, huge []int) {
	b.t.Helper()
	b.exec(
		`CREATE TABLE docs (id int PRIMARY KEY, body text)`,
		`SELECT pg2kafka.setup('docs', 'id')`,
		`INSERT INTO docs VALUES (1, 'a1')`,
		`INSERT INTO docs VALUES (2, 'b1')`,
		`UPDATE docs SET body = `+hugeSQL+` WHERE id = 1`,
		`UPDATE docs SET body = 'a2' WHERE id = 1`,
		`INSERT INTO docs VALUES (3, 'c1')`,
		`UPDATE docs SET body = `+hugeSQL+` WHERE id = 2`,
		`UPDATE docs SET body = 'b2' WHERE id = 2`,
		`UPDATE docs SET body = 'c2' WHERE id = 3`,
	)
	rows, _ := b.pool.Query(context.Background(), `SELECT data->>'body' FROM pg2kafka.outbound_event_queue ORDER BY id`)
	bodies, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.t.Fatal(err)
	}
	topic := b.topic("docs")
	return []change{
		{topic, ptr("1"), "INSERT", `{"id":1,"body":"a1"}`},
		{topic, ptr("2"), "INSERT", `{"id":2,"body":"b1"}`},
		{topic, ptr("1"), "UPDATE", `{"body":"` + bodies[2] + `"}`},
		{topic, ptr("1"), "UPDATE", `{"body":"a2"}`},
		{topic, ptr("3"), "INSERT", `{"id":3,"body":"c1"}`},
		{topic, ptr("2"), "UPDATE", `{"body":"` + bodies[5] + `"}`},
		{topic, ptr("2"), "UPDATE", `{"body":"b2"}`},
		{topic, ptr("3"), "UPDATE", `{"body":"c2"}`},
	}, []int{2, 5}
}

// requireDeadLetters checks that the dead-letter table holds exactly the
// events with the given uuids, each refused as too large, with its story.
func (b *bundle) requireDeadLetters(topic string, uuids ...string) []deadLetter {
	b.t.Helper()
	got := b.deadLetters()
	var gotUUIDs []string
	for _, d := range got {
		gotUUIDs = append(gotUUIDs, d.UUID)
		// Once with its batch, at least once more alone.
		if d.Attempts < 2 {
			b.t.Errorf("dead letter %s: %d attempts, want at least 2", d.UUID, d.Attempts)
		}
		if d.LastFailedAt.Before(d.FirstFailedAt) {
			b.t.Errorf("dead letter %s: last failed at %v, before the first failure at %v", d.UUID, d.LastFailedAt, d.FirstFailedAt)
		}
		if want := fmt.Sprintf(`kafka: produce to %q: MESSAGE_TOO_LARGE`, topic); !strings.HasPrefix(d.Error, want) {
			b.t.Errorf("dead letter %s: error %q, want it to begin with %q", d.UUID, d.Error, want)
		}
		if d.Statement != "UPDATE" || d.DataBytes < 256_000 {
			b.t.Errorf("dead letter %s: %s with %d bytes of data, want the huge UPDATE", d.UUID, d.Statement, d.DataBytes)
		}
	}
	if !slices.Equal(gotUUIDs, uuids) {
		b.t.Fatalf("dead letters %q, want %q", gotUUIDs, uuids)
	}
	return got
}

func TestTooLargeEventIsDeadLetteredWhileOthersShip(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		broker []kfake.Opt
		client []kgo.Opt
	}{
		// The broker refuses the batch holding the huge event, and
		// franz-go fails the rest of that partition's records with it.
		{"broker refuses", []kfake.Opt{kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(sizeLimit)})}, nil},
		// franz-go refuses the huge event before sending anything.
		{"client refuses", nil, []kgo.Opt{kgo.ProducerBatchMaxBytes(sizeLimit)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.broker...)
			changes, huge := b.writePoisonEvents()
			topic := b.topic("docs")
			events := b.queuedEvents()
			refused := []string{events[huge[0]].UUID, events[huge[1]].UUID}
			want := without(b.expect(3, changes...), refused)
			b.createTopics(topic)
			b.start(shipper.Config{}, kafka.Config{}, tt.client...)

			// Events before and after the huge ones, of their keys and
			// others, ship in order; the huge ones never reach the topic.
			assertRecords(t, b.consume(6, topic), want)
			b.waitQueueEmpty()
			dead := b.requireDeadLetters(topic, refused...)
			// Counted and logged once the move is committed.
			b.waitFor("two dead letters counted", func() bool { return b.shipper.DeadLettered() == 2 })
			for i, d := range dead {
				const line = `level=ERROR msg="event moved to the dead-letter table: the destination refuses it" worker=`
				attrs := fmt.Sprintf(` table=public.docs topic=%s event_id=%d event_uuid=%s external_id=%s attempts=%d error="kafka: produce to \"%s\": MESSAGE_TOO_LARGE`,
					topic, d.ID, d.UUID, *changes[huge[i]].key, d.Attempts, topic)
				if !b.logs.Contains(line) || !b.logs.Contains(attrs) {
					t.Errorf("logs do not tell of dead letter %s:\n%s", d.UUID, b.logs)
				}
			}
		})
	}
}

func TestRequeuedEventShipsAfterItsKeysLaterEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(sizeLimit)}))
	changes, huge := b.writePoisonEvents()
	topic := b.topic("docs")
	events := b.queuedEvents()
	refused := []string{events[huge[0]].UUID, events[huge[1]].UUID}
	want := b.expect(3, changes...)
	b.createTopics(topic)
	b.start(shipper.Config{}, kafka.Config{})

	b.consume(6, topic)
	b.waitQueueEmpty()
	dead := b.requireDeadLetters(topic, refused...)

	// The cause fixed: the topic now takes large records.
	resp, err := b.admin.AlterTopicConfigs(context.Background(),
		[]kadm.AlterConfig{{Op: kadm.SetConfig, Name: "max.message.bytes", Value: ptr(strconv.Itoa(4 << 20))}}, topic)
	if err == nil {
		_, err = resp.On(topic, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := b.pool.QueryRow(context.Background(), `SELECT pg2kafka.requeue_dead_letters(ARRAY[$1::bigint])`, dead[1].ID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("requeue_dead_letters(ARRAY[%d]) = %d, %v; want 1", dead[1].ID, n, err)
	}
	if err := b.pool.QueryRow(context.Background(), `SELECT pg2kafka.requeue_dead_letters()`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("requeue_dead_letters() = %d, %v; want 1", n, err)
	}

	// Each requeued event, with its uuid and created_at, comes after the
	// events of its key written after it: its place in its key's order
	// is lost.
	assertRecords(t, b.consume(8, topic), without(want, nil, refused...))
	b.waitQueueEmpty()
	if got := b.deadLetters(); len(got) != 0 {
		t.Errorf("dead letters left after requeueing: %+v", got)
	}
}

// Kafka fails a partition's every record with the error of one, and a batch
// of small records can be too large as a whole: records that failed with a
// refusal only alongside others are sent again, not dead-lettered.
func TestRecordsRefusedAlongsideOthersAreNotDeadLettered(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		broker []kfake.Opt
		client []kgo.Opt
		fault  *kfake.Fault
	}{
		// A partition's batch of some 17 small events is over the broker's
		// limit of 1,000 bytes, which each event alone is well under.
		{
			"batches too large",
			[]kfake.Opt{kfake.BrokerConfigs(map[string]string{"message.max.bytes": "1000"})},
			[]kgo.Opt{kgo.ProducerBatchCompression(kgo.NoCompression())},
			nil,
		},
		// The broker refuses one request with an error that names records.
		{"one refusal", nil, nil, &kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.MessageTooLarge}},
		{"one invalid record", nil, nil, &kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.InvalidRecord}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.broker...)
			b.exec(
				`CREATE TABLE counters (id int PRIMARY KEY, n int)`,
				`SELECT pg2kafka.setup('counters', 'id')`,
				`INSERT INTO counters SELECT i, 0 FROM generate_series(1, 5) i`,
			)
			for v := 1; v <= 9; v++ {
				b.exec(fmt.Sprintf(`UPDATE counters SET n = %d`, v))
			}
			topic := b.topic("counters")
			var changes []change
			for i := 1; i <= 5; i++ {
				changes = append(changes, change{topic, ptr(strconv.Itoa(i)), "INSERT", fmt.Sprintf(`{"n":0,"id":%d}`, i)})
			}
			for v := 1; v <= 9; v++ {
				for i := 1; i <= 5; i++ {
					changes = append(changes, change{topic, ptr(strconv.Itoa(i)), "UPDATE", fmt.Sprintf(`{"n":%d}`, v)})
				}
			}
			want := b.expect(3, changes...)
			b.createTopics(topic)
			if tt.fault != nil {
				b.cluster.Fault(*tt.fault)
			}
			b.start(shipper.Config{BatchSize: 50}, kafka.Config{}, tt.client...)

			assertRecords(t, b.consume(50, topic), want)
			b.waitQueueEmpty()
			if got := b.deadLetters(); len(got) != 0 {
				t.Errorf("dead letters: %+v, want none", got)
			}
		})
	}
}

// A failure that is not the record's own leaves the events queued, however
// long it lasts, and they ship once it clears.
func TestOtherFailuresNeverDeadLetter(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		fault *kfake.Fault // nil: the topic is missing until the failure clears
	}{
		{"missing topic", nil},
		{"not allowed", &kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.TopicAuthorizationFailed, Count: -1}},
		{"corrupt message", &kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.CorruptMessage, Count: -1}},
		{"unknown server error", &kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.UnknownServerError, Count: -1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.exec(
				`CREATE TABLE items (id int PRIMARY KEY)`,
				`SELECT pg2kafka.setup('items', 'id')`,
				`INSERT INTO items SELECT generate_series(1, 6)`,
			)
			topic := b.topic("items")
			var changes []change
			for i := 1; i <= 6; i++ {
				changes = append(changes, change{topic, ptr(strconv.Itoa(i)), "INSERT", fmt.Sprintf(`{"id":%d}`, i)})
			}
			want := b.expect(3, changes...)
			var fault *kfake.FaultHandle
			if tt.fault != nil {
				b.createTopics(topic)
				fault = b.cluster.Fault(*tt.fault)
			}
			// Quick to look again for a missing topic, so that the test
			// sees several attempts fail in well under a second.
			b.start(shipper.Config{}, kafka.Config{}, kgo.MetadataMinAge(10*time.Millisecond))

			if tt.fault != nil {
				b.waitFor("three failed attempts", func() bool {
					return strings.Count(b.logs.String(), "events not shipped; they stay queued") >= 3
				})
			} else {
				// A topic known to be missing costs no attempts: the table
				// waits until the sink finds it.
				b.waitFor("the table paused", func() bool { return b.logs.Contains("table paused") })
			}
			if got := len(b.queued()); got != 6 {
				t.Fatalf("queue holds %d events during the failure, want all 6", got)
			}
			if got := b.deadLetters(); len(got) != 0 {
				t.Fatalf("dead letters during the failure: %+v, want none", got)
			}

			if fault != nil {
				fault.Remove()
			} else {
				b.createTopics(topic)
			}
			assertRecords(t, b.consume(6, topic), want)
			b.waitQueueEmpty()
			if got := b.deadLetters(); len(got) != 0 {
				t.Errorf("dead letters: %+v, want none", got)
			}
			if n := b.shipper.DeadLettered(); n != 0 {
				t.Errorf("DeadLettered() = %d, want 0", n)
			}
		})
	}
}

// With several workers, small batches and huge events among many small ones,
// every event ends up exactly once either on the topic, in its key's order,
// or in the dead-letter table.
func TestEveryEventShippedOrDeadLettered(t *testing.T) {
	t.Parallel()
	b := setup(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(sizeLimit)}))
	const keys, versions = 8, 12
	b.exec(
		`CREATE TABLE counters (id int PRIMARY KEY, n int, blob text)`,
		`SELECT pg2kafka.setup('counters', 'id')`,
		fmt.Sprintf(`INSERT INTO counters SELECT i, 0 FROM generate_series(1, %d) i`, keys),
	)
	for v := 1; v <= versions; v++ {
		// Every fifth version of every third key comes with a huge blob.
		b.exec(fmt.Sprintf(`UPDATE counters SET n = %d, blob = CASE WHEN %d %% 5 = 0 AND id %% 3 = 0 THEN %s END`, v, v, hugeSQL))
	}
	type event struct {
		UUID       string `db:"uuid"`
		ExternalID string `db:"external_id"`
		Huge       bool   `db:"huge"`
	}
	rows, _ := b.pool.Query(context.Background(), `
		SELECT coalesce(uuid, pg2kafka.event_uuid(id, created_at))::text AS uuid, external_id, coalesce(length(data->>'blob') > 1000, false) AS huge
		FROM pg2kafka.outbound_event_queue ORDER BY id`)
	events, err := pgx.CollectRows(rows, pgx.RowToStructByName[event])
	if err != nil {
		t.Fatal(err)
	}
	topic := b.topic("counters")
	b.createTopics(topic)
	b.start(shipper.Config{BatchSize: 7, Workers: 3}, kafka.Config{})

	var wantShipped, wantDead []string
	wantOrder := make(map[string][]string) // external ID → uuids in order
	for _, e := range events {
		if e.Huge {
			wantDead = append(wantDead, e.UUID)
			continue
		}
		wantShipped = append(wantShipped, e.UUID)
		wantOrder[e.ExternalID] = append(wantOrder[e.ExternalID], e.UUID)
	}
	if len(wantDead) != 4 {
		t.Fatalf("the test wrote %d huge events, meant 4", len(wantDead))
	}
	records := b.consume(len(wantShipped), topic)
	b.waitQueueEmpty()

	gotOrder := make(map[string][]string)
	for _, r := range byKey(records) {
		for _, c := range r {
			uuid := c.Value[len(`{"uuid":"`) : len(`{"uuid":"`)+36]
			gotOrder[*c.Key] = append(gotOrder[*c.Key], uuid)
		}
	}
	for k, want := range wantOrder {
		if got := gotOrder[k]; !slices.Equal(got, want) {
			t.Errorf("key %s: shipped %q, want %q", k, got, want)
		}
	}
	var gotDead []string
	for _, d := range b.deadLetters() {
		gotDead = append(gotDead, d.UUID)
	}
	slices.Sort(gotDead)
	slices.Sort(wantDead)
	if !slices.Equal(gotDead, wantDead) {
		t.Errorf("dead letters %q, want the huge events %q", gotDead, wantDead)
	}
}
