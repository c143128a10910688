package httpserver_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// createTopic creates a topic in the bundle's Kafka.
func (b *bundle) createTopic(topic string) {
	b.t.Helper()
	client, err := kgo.NewClient(kgo.SeedBrokers(b.cluster.ListenAddrs()...))
	if err != nil {
		b.t.Fatal(err)
	}
	defer client.Close()
	resp, err := kadm.NewClient(client).CreateTopics(context.Background(), 3, 1, nil, topic)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		b.t.Fatal(err)
	}
}

// TestPausedTableIsShown has a table whose Kafka topic does not exist
// beside one whose topic does: the first is paused, and the metrics and the
// status page say so and why, while the pod stays ready; once the topic
// exists, they say it flows again.
func TestPausedTableIsShown(t *testing.T) {
	t.Parallel()
	b := setupWith(t, options{ownTopics: true},
		`CREATE TABLE stuck (id int PRIMARY KEY)`,
		`CREATE TABLE fine (id int PRIMARY KEY)`,
		`SELECT pg2kafka.setup('stuck', 'id')`,
		`SELECT pg2kafka.setup('fine', 'id')`,
		`INSERT INTO stuck SELECT generate_series(1, 50)`,
		`INSERT INTO fine SELECT generate_series(1, 50)`,
	)
	stuckTopic := "pg2kafka." + b.database + ".stuck"
	b.createTopic("pg2kafka." + b.database + ".fine")
	b.run()

	b.waitFor("stuck to be paused and fine to drain", func() bool {
		mfs := b.scrape()
		stuck, _ := value(mfs, "pg2kafka_table_paused", "table", "public.stuck")
		fine, ok := value(mfs, "pg2kafka_table_paused", "table", "public.fine")
		queued, _ := value(mfs, "pg2kafka_queue_events", "table", "public.fine")
		return stuck == 1 && ok && fine == 0 && queued == 0
	})
	if n, _ := value(b.scrape(), "pg2kafka_queue_events", "table", "public.stuck"); n != 50 {
		t.Errorf("stuck has %v events queued, want its 50", n)
	}
	// Paused is not unready: a restart would find the topic as missing.
	if status, checks := b.readyz(); status != http.StatusOK {
		t.Errorf("/readyz answers %d %v while a table is paused, want 200", status, checks)
	}

	p := openChromium(t)
	p.navigate(b.url + "/")
	reason := `document.querySelector('tr.pause-reason[data-paused-table="public.stuck"]')?.textContent ?? ""`
	p.waitFor("the page to mark stuck paused, with why", reason+`.includes(`+quote(`does not exist: create it (kafka-topics.sh --create --topic `+stuckTopic+`) or set KAFKA_CREATE_TOPICS=true`)+`)`)
	if got := p.eval(reason); !strings.Contains(got, "its events are not shipped to "+stuckTopic+" and stay queued") {
		t.Errorf("the reason row says %s, want the topic named", got)
	}
	if got := p.eval(`[...document.querySelectorAll("#tables tr.paused")].map(r => r.dataset.table + " " + r.querySelector(".badge").textContent).join("|")`); got != `"public.stuck paused"` {
		t.Errorf("rows marked paused: %s, want stuck alone", got)
	}
	if got := p.eval(`document.getElementById("banner").textContent`); !strings.HasPrefix(got, `"Ready`) || !strings.Contains(got, "1 table is paused") {
		t.Errorf("banner %s, want ready, with one table paused", got)
	}
	t.Logf("screenshot: %s", p.screenshot("status-paused.png"))

	b.createTopic(stuckTopic)
	b.waitFor("stuck to flow again", func() bool {
		mfs := b.scrape()
		paused, ok := value(mfs, "pg2kafka_table_paused", "table", "public.stuck")
		queued, _ := value(mfs, "pg2kafka_queue_events", "table", "public.stuck")
		return ok && paused == 0 && queued == 0
	})
	p.waitFor("the page to show stuck flowing", `document.querySelectorAll("#tables tr.paused, #tables tr.pause-reason, #paused").length === 0`)
}
