package httpserver_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pg2kafka/pg2kafka/internal/httpserver"
	"github.com/pg2kafka/pg2kafka/internal/stream"
	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
)

// batch is a settled batch of n acknowledged events of two tables, as the
// shipper hands it over.
func batch(n int) *shipper.Settled {
	s := &shipper.Settled{Claimed: time.Now(), Acknowledged: time.Now(), Committed: time.Now()}
	for i := range n {
		key := fmt.Sprintf("K%d", i)
		name := "products"
		if i%2 == 1 {
			name = "orders"
		}
		data := fmt.Sprintf(`{"sku": %q, "price": %d}`, key, i%100)
		s.Events = append(s.Events, outbox.Event{TableSchema: "public", TableName: name, Statement: "UPDATE", ExternalID: &key, Data: []byte(data), CreatedAt: time.Now()})
		s.Messages = append(s.Messages, shipper.Message{Key: []byte(key), Value: []byte(data)})
		s.Errs = append(s.Errs, nil)
	}
	return s
}

// BenchmarkSettled is what the shipper pays per batch of 5000 for the
// metrics and the live stream: with no viewer, with viewers of other
// tables, and with viewers whose filters read every event's data and match
// half of them. The viewers read nothing, so that their sockets fill and
// what is measured is the worker's own cost, not the writing of frames,
// which their goroutines do.
//
//	go test -run XXX -bench Settled ./internal/httpserver
func BenchmarkSettled(b *testing.B) {
	for _, bc := range []struct {
		name    string
		viewers int
		query   string
	}{
		{"no viewer", 0, ""},
		{"10 viewers of another table", 10, "*:users"},
		{"10 viewers filtering this table", 10, "update:products:price.gt.50"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			hub := stream.NewHub(1 << 20)
			stats := httpserver.NewStats(hub)
			tables := []outbox.Table{{Schema: "public", Name: "products"}, {Schema: "public", Name: "users"}}
			srv := httptest.NewServer(&stream.Handler{Hub: hub, Token: "t", Tables: func(context.Context) ([]outbox.Table, error) { return tables, nil }})
			defer srv.Close()
			defer hub.Close()
			for range bc.viewers {
				conn, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?token=t&query="+bc.query, nil)
				if err != nil {
					b.Fatal(err)
				}
				defer conn.CloseNow()
			}
			for hub.Viewers() < bc.viewers {
				time.Sleep(time.Millisecond)
			}
			s := batch(5000)
			// CPU time rather than wall time: on a loaded machine the
			// benchmark mostly waits for a core.
			before := cpuTime()
			b.ResetTimer()
			for b.Loop() {
				stats.Settled(s)
			}
			b.ReportMetric(float64((cpuTime()-before).Nanoseconds())/float64(b.N)/5000, "cpu-ns/event")
		})
	}
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
