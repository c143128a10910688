package kafka

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/pg2kafka/pg2kafka/internal/syncbuf"
)

type syncBuffer = syncbuf.Buffer

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestStartupSaysConnected: a sink connects as soon as it is made, and
// says so with the brokers and the cluster's id, before any event exists.
func TestStartupSaysConnected(t *testing.T) {
	t.Parallel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	logs := &syncBuffer{}
	addrs := cluster.ListenAddrs()
	s, err := New(Config{Brokers: addrs, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := `level=INFO msg="connected to Kafka" brokers=` + strings.Join(addrs, ",") + ` cluster_id=kfake`
	waitFor(t, "the connected line", func() bool { return strings.Contains(logs.String(), want) })
	if err := s.Reachable(context.Background()); err != nil {
		t.Errorf("Reachable() = %v, want nil", err)
	}
}

// TestStartupWarnsAtOnce: with nothing listening at the address given, the
// sink warns at once, naming the address and the error, and Reachable says
// the same; once a broker listens there it says it is connected.
func TestStartupWarnsAtOnce(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	logs := &syncBuffer{}
	s, err := New(Config{Brokers: []string{addr}, CheckInterval: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	waitFor(t, "the warning", func() bool { return strings.Contains(logs.String(), "cannot reach Kafka") })
	t.Logf("warned after %v", time.Since(start))
	line := logs.String()
	for _, want := range []string{`level=WARN msg="cannot reach Kafka; events stay queued, retrying" brokers=` + addr, "connection refused", "fix=\"check KAFKA_PRODUCER_URL"} {
		if !strings.Contains(line, want) {
			t.Errorf("logs lack %q:\n%s", want, line)
		}
	}
	if err := s.Reachable(context.Background()); err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Reachable() = %v, want the address and the refusal", err)
	}
	if n := strings.Count(logs.String(), "cannot reach Kafka"); n != 1 {
		t.Errorf("%d warnings within the first 30s, want 1:\n%s", n, logs)
	}

	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	waitFor(t, "the connected line", func() bool { return strings.Contains(logs.String(), `msg="connected to Kafka"`) })
	waitFor(t, "Reachable", func() bool { return s.Reachable(context.Background()) == nil })
}
