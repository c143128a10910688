package shipper_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

// sampleOpenTransactions samples the test database's longest open
// transaction every few milliseconds until the returned function is called,
// which returns the longest seen.
func (b *bundle) sampleOpenTransactions() (stop func() time.Duration) {
	var mu sync.Mutex
	var longest time.Duration
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			var age time.Duration
			if err := b.pool.QueryRow(context.Background(), `
				SELECT coalesce(max(now() - xact_start), '0') FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL`).Scan(&age); err != nil {
				continue
			}
			mu.Lock()
			longest = max(longest, age)
			mu.Unlock()
		}
	}()
	return func() time.Duration {
		close(done)
		<-finished
		mu.Lock()
		defer mu.Unlock()
		return longest
	}
}

// logLines returns the lines of the shipper's logs with msg.
func (b *bundle) logLines(msg string) []string {
	var out []string
	for _, line := range strings.Split(b.logs.String(), "\n") {
		if strings.Contains(line, `msg="`+msg) {
			out = append(out, line)
		}
	}
	return out
}

// TestMissingTopicCostsOtherTablesNothing is the scenario of a table whose
// topic does not exist with a backlog, beside a table written to while
// pg2kafka runs: the other table's events all arrive while the first's
// stay queued, no claim is held open waiting for the missing topic, the
// logs tell the story once, and the backlog ships once the topic exists.
func TestMissingTopicCostsOtherTablesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE stuck (id int PRIMARY KEY)`,
		`CREATE TABLE lat (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('stuck', 'id')`,
		`SELECT pg2kafka.setup('lat', 'id')`,
		`INSERT INTO stuck SELECT generate_series(1, 2000)`,
	)
	stuck, lat := b.topic("stuck"), b.topic("lat")
	b.createTopics(lat)
	longest := b.sampleOpenTransactions()
	b.start(shipper.Config{Workers: 2}, kafka.Config{CheckInterval: 100 * time.Millisecond})

	const written = 300
	for i := 1; i <= written; i++ {
		b.exec(fmt.Sprintf(`INSERT INTO lat VALUES (%d)`, i))
		if i%50 == 0 {
			time.Sleep(20 * time.Millisecond) // a writer at a steady pace, not a burst
		}
	}
	got := b.consume(written, lat)
	for i, r := range got {
		if r.Topic != lat {
			t.Fatalf("record %d on %s, want %s", i, r.Topic, lat)
		}
	}
	if n := strings.Count(strings.Join(b.queued(), "\n"), "stuck INSERT"); n != 2000 {
		t.Fatalf("%d events of stuck queued, want all 2000", n)
	}
	if open := longest(); open > 2*time.Second {
		t.Errorf("a claim stayed open %v while stuck's topic was missing; want it short", open)
	}

	paused := b.logLines("table paused")
	if len(paused) != 1 {
		t.Fatalf("%d lines saying stuck paused, want 1:\n%s", len(paused), strings.Join(paused, "\n"))
	}
	for _, want := range []string{"level=ERROR", "table=public.stuck", "topic=" + stuck, "queued=2000", "retry_in=",
		`does not exist: create it (kafka-topics.sh --create --topic ` + stuck + `) or set KAFKA_CREATE_TOPICS=true`} {
		if !strings.Contains(paused[0], want) {
			t.Errorf("the paused line lacks %q:\n%s", want, paused[0])
		}
	}
	if p := b.shipper.Paused(); len(p) != 1 || p[0].Table.Name != "stuck" || p[0].Topic != stuck || p[0].Err == nil {
		t.Errorf("Paused() = %+v, want stuck alone, with its topic and error", p)
	}

	b.createTopics(stuck)
	created := time.Now()
	b.consume(2000, stuck)
	t.Logf("stuck's backlog shipped %v after its topic was created", time.Since(created))
	b.waitQueueEmpty()
	b.waitFor("the flowing again line", func() bool { return len(b.logLines("table flowing again")) > 0 })
	flowing := b.logLines("table flowing again")
	if len(flowing) != 1 || !strings.Contains(flowing[0], "table=public.stuck") || !strings.Contains(flowing[0], "topic="+stuck) {
		t.Errorf("flowing again lines:\n%s\nwant one, naming stuck and its topic", strings.Join(flowing, "\n"))
	}
	if p := b.shipper.Paused(); len(p) != 0 {
		t.Errorf("Paused() = %+v after the topic was created, want none", p)
	}
}

// TestBatchOfTopicsThatExistAndDoNot has one batch hold the events of two
// tables, one whose topic exists and one whose topic does not: the first's
// are shipped and deleted, the second's stay queued, in order.
func TestBatchOfTopicsThatExistAndDoNot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE here (id int PRIMARY KEY)`,
		`CREATE TABLE gone (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('here', 'id')`,
		`SELECT pg2kafka.setup('gone', 'id')`,
	)
	for i := 1; i <= 20; i++ {
		b.exec(fmt.Sprintf(`INSERT INTO here VALUES (%d)`, i), fmt.Sprintf(`INSERT INTO gone VALUES (%d)`, i))
	}
	b.createTopics(b.topic("here"))
	// One worker, one batch of all 40 events.
	b.start(shipper.Config{Workers: 1, BatchSize: 100}, kafka.Config{})
	seen := make(map[string]bool)
	for _, r := range b.consume(20, b.topic("here")) {
		if r.Key == nil || seen[*r.Key] || !strings.Contains(r.Value, `"data":{"id":`+*r.Key+`}`) {
			t.Fatalf("record %+v: want each of here's events once", r)
		}
		seen[*r.Key] = true
	}
	b.waitFor("only gone's events queued", func() bool { return len(b.queued()) == 20 })
	for _, q := range b.queued() {
		if q != "gone INSERT" {
			t.Fatalf("queue holds %q, want gone's events alone", b.queued())
		}
	}
	// The events go back to the queue as the batch settles, a moment before
	// the pause is logged.
	b.waitFor("the paused line", func() bool { return len(b.logLines("table paused")) > 0 })
	if lines := b.logLines("table paused"); len(lines) != 1 || !strings.Contains(lines[0], "table=public.gone") {
		t.Errorf("paused lines:\n%s\nwant one, for gone", strings.Join(lines, "\n"))
	}
}

// TestFailureEpisodeIsOneLine has the broker refuse every produce for a
// while: however many batches and workers fail meanwhile, the table's
// pause is one error line, whose retry_in is the real wait before the next
// attempt, and its end one flowing again line.
func TestFailureEpisodeIsOneLine(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('items', 'id')`,
		`INSERT INTO items SELECT generate_series(1, 40)`,
	)
	topic := b.topic("items")
	b.createTopics(topic)
	fault := b.failProduces()
	b.start(shipper.Config{Workers: 2, BatchSize: 5}, kafka.Config{})
	b.waitFor("four failed attempts", func() bool { return len(b.logLines("events not shipped")) >= 4 })
	fault()
	b.consume(40, topic)
	b.waitQueueEmpty()
	b.waitFor("the flowing again line", func() bool { return len(b.logLines("table flowing again")) > 0 })

	if lines := b.logLines("table paused"); len(lines) != 1 {
		t.Errorf("%d paused lines, want 1:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if lines := b.logLines("table flowing again"); len(lines) != 1 {
		t.Errorf("%d flowing again lines, want 1:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	// The first attempt claimed after the pause began starts no sooner
	// than retry_in said.
	paused := b.logLines("table paused")[0]
	at, retryIn := logTime(t, paused, "time"), logDuration(t, paused, "retry_in")
	var next time.Time
	for _, line := range b.logLines("events not shipped") {
		if claimed := logTime(t, line, "claimed"); claimed.After(at) {
			next = claimed
			break
		}
	}
	if next.IsZero() {
		t.Fatalf("no attempt after the paused line:\n%s", b.logs)
	}
	if gap := next.Sub(at); gap < retryIn-5*time.Millisecond || gap > retryIn+time.Second {
		t.Errorf("next attempt claimed %v after the pause, which said retry_in=%v", gap, retryIn)
	}
}

func logTime(t *testing.T, line, key string) time.Time {
	t.Helper()
	m := regexp.MustCompile(`(?:^| )` + key + `=(\S+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no time in %q", line)
	}
	ts, err := time.Parse(time.RFC3339Nano, m[1])
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func logDuration(t *testing.T, line, key string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(` ` + key + `=(\S+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no %s in %q", key, line)
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// failProduces has the broker answer every produce with an error no retry
// inside franz-go hides, until the returned function is called.
func (b *bundle) failProduces() (restore func()) {
	f := b.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.UnknownServerError, Count: -1})
	return f.Remove
}

// Tables paused together, as an outage pauses them, each log their own
// backlog, counted together in one read of the queue.
func TestTablesPausedTogetherEachLogTheirOwnBacklog(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE few (id int PRIMARY KEY)`,
		`CREATE TABLE many (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('few', 'id')`,
		`SELECT pg2kafka.setup('many', 'id')`,
		`INSERT INTO few SELECT generate_series(1, 300)`,
		`INSERT INTO many SELECT generate_series(1, 700)`,
	)
	b.start(shipper.Config{Workers: 1}, kafka.Config{})
	b.waitFor("both tables paused", func() bool { return len(b.logLines("table paused")) == 2 })
	paused := strings.Join(b.logLines("table paused"), "\n")
	for _, want := range []string{"table=public.few topic=" + b.topic("few"), "table=public.many topic=" + b.topic("many")} {
		if !strings.Contains(paused, want) {
			t.Errorf("the paused lines lack %q:\n%s", want, paused)
		}
	}
	for _, line := range b.logLines("table paused") {
		want := "queued=300"
		if strings.Contains(line, "table=public.many") {
			want = "queued=700"
		}
		if !strings.Contains(line, want) {
			t.Errorf("the paused line lacks %q:\n%s", want, line)
		}
	}
}
