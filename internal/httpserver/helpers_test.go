package httpserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/pg2kafka/pg2kafka/internal/httpserver"
	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/internal/stream"
	"github.com/pg2kafka/pg2kafka/internal/syncbuf"
	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 30 * time.Second

// streamToken is the STREAM_TOKEN of the tests' servers.
const streamToken = "test-stream-token"

// bundle is one test's pg2kafka: its own database, reached through a proxy
// the test can cut; an in-process Kafka; a shipper between them; and the
// HTTP server, on a free port.
type bundle struct {
	t        *testing.T
	admin    *pgxpool.Pool // straight to Postgres
	pool     *pgxpool.Pool // the shipper's, through proxy
	proxy    *proxy
	database string
	cluster  *kfake.Cluster
	port     int // Kafka's
	sink     *kafka.Sink
	stats    *httpserver.Stats
	hub      *stream.Hub
	shipper  *shipper.Shipper
	server   *httpserver.Server
	url      string // http://127.0.0.1:port
	logs     *syncBuffer
}

// options change a bundle from its defaults.
type options struct {
	// ownTopics leaves the topics to the test, rather than to the sink
	// (KAFKA_CREATE_TOPICS): a table whose topic the test does not create
	// is paused. The sink looks again at a missing topic every 50ms.
	ownTopics bool
}

func setup(t *testing.T, sql ...string) *bundle {
	t.Helper()
	return setupWith(t, options{}, sql...)
}

func setupWith(t *testing.T, o options, sql ...string) *bundle {
	t.Helper()
	ctx := context.Background()
	admin, connString := pgtest.NewPool(t)
	if err := outbox.Migrate(ctx, admin, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	b := &bundle{t: t, admin: admin, logs: &syncBuffer{}}
	b.exec(sql...)
	var err error
	if b.database, err = outbox.CurrentDatabase(ctx, admin); err != nil {
		t.Fatal(err)
	}

	u, _ := url.Parse(connString)
	b.proxy = newProxy(t, u.Host)
	u.Host = b.proxy.addr
	if b.pool, err = pgxpool.New(ctx, u.String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.pool.Close)

	b.startKafka(0)
	b.hub = stream.NewHub(0)
	b.stats = httpserver.NewStats(b.hub)
	kcfg := kafka.Config{Brokers: b.cluster.ListenAddrs(), CreateTopics: true, TopicPartitions: 3, TopicReplicationFactor: 1}
	if o.ownTopics {
		kcfg.CreateTopics, kcfg.CheckInterval = false, 50*time.Millisecond
	}
	if b.sink, err = kafka.New(kcfg,
		kgo.WithHooks(b.stats.KafkaHooks()),
		kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond })); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.sink.Close)
	logger := slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b.shipper = shipper.New(shipper.Config{
		Database: b.database, Workers: 2, PollInterval: 10 * time.Millisecond, RebalanceInterval: 20 * time.Millisecond,
		SendTimeout: 5 * time.Second, Logger: logger, OnSettled: b.stats.Settled,
	}, outbox.NewQueue(b.pool), b.sink)

	b.server = httpserver.New(httpserver.Config{
		Stats: b.stats, Hub: b.hub, StreamToken: streamToken,
		BacklogInterval: time.Millisecond, Logger: logger,
	})
	b.server.SetDatabase(b.database)
	ln, err := httpserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.url = "http://" + ln.Addr().String()
	serveCtx, stopServing := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- b.server.Serve(serveCtx, ln) }()
	t.Cleanup(func() {
		stopServing()
		b.server.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return b
}

// attach tells the server about the shipper, as pg2kafka does once
// connected.
func (b *bundle) attach() {
	b.server.Attach(httpserver.Parts{Pool: b.pool, Shipper: b.shipper, Destination: b.sink.Reachable})
}

// run attaches and starts the shipper until the test ends.
func (b *bundle) run() {
	b.t.Helper()
	b.attach()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.shipper.Run(ctx) }()
	b.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.t.Errorf("shipper: %v", err)
		}
	})
}

// startKafka starts the in-process Kafka, on port (0: any free one).
func (b *bundle) startKafka(port int) {
	b.t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DefaultNumPartitions(3))
	if err != nil {
		b.t.Fatal(err)
	}
	b.cluster = c
	b.t.Cleanup(c.Close)
	_, p, _ := net.SplitHostPort(c.ListenAddrs()[0])
	b.port = atoi(p)
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = 10*n + int(c-'0')
	}
	return n
}

func (b *bundle) exec(sql ...string) {
	b.t.Helper()
	for _, s := range sql {
		if _, err := b.admin.Exec(context.Background(), s); err != nil {
			b.t.Fatalf("%s: %v", s, err)
		}
	}
}

// get fetches path from the server and returns the status and body.
func (b *bundle) get(path string) (int, string) {
	b.t.Helper()
	resp, err := http.Get(b.url + path)
	if err != nil {
		b.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// scrape fetches /metrics and parses it.
func (b *bundle) scrape() map[string]*dto.MetricFamily {
	b.t.Helper()
	status, body := b.get("/metrics")
	if status != http.StatusOK {
		b.t.Fatalf("/metrics: %d %s", status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		b.t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return mfs
}

// value returns the value of the metric of family name whose labels are
// labels (name=value pairs), and whether there is one.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// readyz returns /readyz's status and checks.
func (b *bundle) readyz() (int, map[string]string) {
	b.t.Helper()
	status, body := b.get("/readyz")
	var r struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		b.t.Fatalf("/readyz body %q: %v", body, err)
	}
	return status, r.Checks
}

func (b *bundle) waitFor(what string, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out waiting for %s\nlogs:\n%s", what, b.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// proxy forwards TCP connections to a server until cut, which closes them
// all and refuses new ones until restore.
type proxy struct {
	t      *testing.T
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	p := &proxy{t: t, target: target, conns: make(map[net.Conn]struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() { p.cut(); p.wg.Wait() })
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[up] = struct{}{}, struct{}{}
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				dst.Close()
				src.Close()
			}
			p.wg.Go(func() { pipe(up, c) })
			p.wg.Go(func() { pipe(c, up) })
		}
	})
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *proxy) restore() {
	p.t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}

type syncBuffer = syncbuf.Buffer

var errNotYet = errors.New("not yet")
