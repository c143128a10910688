package shipper_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

// freePort returns a port nothing listens on, so that a broker can be
// stopped and started again at the same address.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// longestOpenTransaction is the age of the oldest transaction open in the
// test database, other than the asking one's.
func (b *bundle) longestOpenTransaction() time.Duration {
	b.t.Helper()
	var age time.Duration
	err := b.pool.QueryRow(context.Background(), `
		SELECT coalesce(max(now() - xact_start), '0') FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL`).Scan(&age)
	if err != nil {
		b.t.Fatal(err)
	}
	return age
}

func TestBrokerOutage(t *testing.T) {
	t.Parallel()
	port, dir := freePort(t), t.TempDir()
	brokerOpts := []kfake.Opt{kfake.Ports(port), kfake.DataDir(dir)}
	b := setup(t, brokerOpts...)
	const keys, versions = 20, 30
	b.writeVersions(keys, versions)
	topic := b.topic("counters")
	b.createTopics(topic)
	const sendTimeout = 500 * time.Millisecond
	b.start(shipper.Config{BatchSize: 20, SendTimeout: sendTimeout}, kafka.Config{})
	b.waitFor("some records to flow", func() bool { return b.recordCount(topic) >= 100 })

	b.cluster.Close()
	// Through the outage: batches fail, their events stay queued, and no
	// claim stays open longer than the send timeout allows.
	var longest time.Duration
	b.waitFor("several failed attempts", func() bool {
		longest = max(longest, b.longestOpenTransaction())
		return strings.Count(b.logs.String(), "events not shipped") >= 4
	})
	if limit := sendTimeout + time.Second; longest > limit {
		t.Errorf("a transaction stayed open %s during the outage, want under %s", longest, limit)
	}
	queued := len(b.queued())
	if queued == 0 {
		t.Fatal("the queue emptied while the broker was down")
	}

	restarted, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, brokerOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(restarted.Close)
	b.cluster = restarted
	dups := b.requireVersionsInOrder(keys, versions)
	t.Logf("%d events queued through the outage, %d duplicates after it", queued, dups)
}

func TestDatabaseConnectionsKilled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const keys, versions = 20, 30
	b.writeVersions(keys, versions)
	topic := b.topic("counters")
	b.createTopics(topic)
	b.start(shipper.Config{BatchSize: 10}, kafka.Config{})

	for kill := 1; kill <= 5; kill++ {
		shipped := b.recordCount(topic)
		b.waitFor("more records to flow", func() bool { return b.recordCount(topic) > shipped })
		b.exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	}
	dups := b.requireVersionsInOrder(keys, versions)
	if !b.logs.Contains("lost the connection that owned lanes") && !b.logs.Contains("database error") {
		t.Errorf("no sign in the logs that a connection was lost:\n%s", b.logs)
	}
	t.Logf("%d duplicates after 5 rounds of killed connections", dups)
}
