package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pg2kafka/pg2kafka/internal/httpserver"
)

func TestHTTPAddrTakenStopsWithStatus2(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	var stdout, stderr bytes.Buffer
	err = run(t.Context(), nil, configEnv(map[string]string{
		"DATABASE_URL": "postgres://u@127.0.0.1:1/none", "DRY_RUN": "true", "HTTP_ADDR": addr,
	}), &stdout, &stderr)
	if code := exitCode(err, &stderr); code != 2 {
		t.Errorf("exit status %d, want 2", code)
	}
	want := `pg2kafka: HTTP_ADDR="` + addr + `": cannot listen there: bind: address already in use; choose a free address, or HTTP_ADDR=off` + "\n"
	if got := stderr.String(); !strings.HasSuffix(got, want) {
		t.Errorf("stderr %q, want it to end with %q", got, want)
	}
}

// TestDefaultHTTPAddrTakenOnlyWarns: a second replica on one host finds the
// default port taken and ships without the listener.
func TestDefaultHTTPAddrTakenOnlyWarns(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	var logs bytes.Buffer
	cfg := Config{HTTPAddr: taken.Addr().String()} // as if defaulted
	srv, addr, err := startHTTP(t.Context(), cfg, httpserver.NewStats(nil), nil, slog.New(slog.NewTextHandler(&logs, nil)))
	if srv != nil || addr != "off" || err != nil {
		t.Fatalf("startHTTP = %v, %q, %v; want neither a server nor an error", srv, addr, err)
	}
	if !strings.Contains(logs.String(), `level=WARN msg="running without the HTTP listener (metrics, health probes, status page): its default address is taken`) ||
		!strings.Contains(logs.String(), "error=\"bind: address already in use\"") {
		t.Errorf("logs %q, want a warning saying the default address is taken", logs.String())
	}
}

var httpAddrLog = regexp.MustCompile(`msg="pg2kafka shipping" .* http_addr=(\S+)`)

// TestStreamOnlyShowsEventsToViewersAndDrainsTheQueue runs pg2kafka with the
// stream as its destination, watches a table over a real WebSocket, and
// stops pg2kafka under the viewer.
func TestStreamOnlyShowsEventsToViewersAndDrainsTheQueue(t *testing.T) {
	t.Parallel()
	pool, url := migratedDatabase(t)
	mustExec(t, pool, `CREATE TABLE products (sku text PRIMARY KEY, price numeric)`, `SELECT pg2kafka.setup('products', 'sku')`)
	env := map[string]string{"DATABASE_URL": url, "STREAM_ONLY": "true", "STREAM_TOKEN": "t0ken", "HTTP_ADDR": "127.0.0.1:0", "POLL_INTERVAL": "10ms"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, configEnv(env), stdout, stderr) }()

	var base string
	waitFor(t, "the listener", func() bool {
		m := httpAddrLog.FindStringSubmatch(stderr.String())
		if m != nil {
			base = "http://" + m[1]
		}
		return m != nil
	})
	waitFor(t, "/readyz to answer 200", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	wsURL := "ws" + strings.TrimPrefix(base, "http") + "/ws?query=" + "update:products:price.gt.10"
	conn, _, err := websocket.Dial(t.Context(), wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer t0ken"}}})
	if err != nil {
		t.Fatalf("dial: %v\n%s", err, stderr)
	}
	defer conn.CloseNow()
	waitFor(t, "the viewer to be counted", func() bool {
		resp, err := http.Get(base + "/status.json")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct{ Stream struct{ Viewers int } }
		_ = json.NewDecoder(resp.Body).Decode(&st)
		return st.Stream.Viewers == 1
	})
	mustExec(t, pool,
		`INSERT INTO products VALUES ('A1', 5), ('B2', 20)`,
		`UPDATE products SET price = 9 WHERE sku = 'A1'`,
		`UPDATE products SET price = 30 WHERE sku = 'A1'`,
		`UPDATE products SET price = 40 WHERE sku = 'B2'`)

	var got []string
	for range 2 {
		rctx, rcancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, msg, err := conn.Read(rctx)
		rcancel()
		if err != nil {
			t.Fatalf("read: %v (got %q)\n%s", err, got, stderr)
		}
		var e struct {
			ExternalID string          `json:"external_id"`
			Statement  string          `json:"statement"`
			Data       json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(msg, &e); err != nil {
			t.Fatalf("frame %q is not an event: %v", msg, err)
		}
		got = append(got, e.Statement+" "+e.ExternalID+" "+string(e.Data))
	}
	slices.Sort(got) // order is promised per key, and these are two keys
	if want := []string{`UPDATE A1 {"price":30}`, `UPDATE B2 {"price":40}`}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("frames %q, want %q", got, want)
	}
	waitFor(t, "the queue to drain", func() bool { return queueLength(t, pool) == 0 })

	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `pg2kafka_events_shipped_total{table="public.products"} 5`) {
		t.Errorf("/metrics lacks 5 shipped events of public.products:\n%s", body)
	}

	cancel()
	_, _, err = conn.Read(t.Context())
	if websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("the viewer's read after shutdown: %v, want close 1001", err)
	}
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}
