package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// webhookResult is the webhook section: pg2kafka draining the queue to a
// local endpoint answering 204, beside a bare Go client posting the same
// bodies to the same endpoint with the same concurrency in the same run;
// and commit→receipt latency at a fixed rate.
type webhookResult struct {
	Events      int            `json:"events"`
	Concurrency int            `json:"concurrency"`
	Runs        []webhookDrain `json:"runs"`
	// Queue is the raw drain of as many events with pg2kafka's default
	// number of workers: how fast Postgres can hand them out at all, which
	// bounds any shipper of this queue whatever its destination.
	Queue   *rawResult     `json:"queue,omitempty"`
	Latency *latencyResult `json:"latency,omitempty"`
}

// webhookDrain is one batch size's drain and its physical line.
type webhookDrain struct {
	BatchSize    int     `json:"batch_size"`
	Requests     int     `json:"requests"`
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_sec"`
	// BareEventsPerSec is the bare client's rate, posting the bodies
	// pg2kafka posted; Ratio is pg2kafka's over it.
	BareEventsPerSec float64 `json:"bare_events_per_sec"`
	Ratio            float64 `json:"ratio"`
}

// The webhook targets.
const (
	targetWebhookRatio = 0.70 // of the bare client, at batch 100
	targetWebhookP99Ms = 10   // at 1,000 events/s
	webhookLatencyRate = 1000
)

// hookReceiver is the endpoint: it answers 204 at once, counts the events
// in each body, keeps the bodies for the bare client to post again, and, if
// asked, the arrival of each bench_latency row by its id.
type hookReceiver struct {
	srv      *http.Server
	url      string
	events   atomic.Int64
	requests atomic.Int64

	mu     sync.Mutex
	keep   bool
	bodies [][]byte
	// first and last are when the first and the last request arrived.
	first, last time.Time
	// at, when set, gets each row's arrival, indexed by id.
	at    []time.Duration
	base  time.Time
	probe chan struct{}
}

func startHookReceiver() (*hookReceiver, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &hookReceiver{url: "http://" + l.Addr().String() + "/hooks/{table}"}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.srv.Serve(l) }()
	return r, nil
}

var eventStart = []byte(`{"uuid":`)

func (r *hookReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	now := time.Now()
	n := bytes.Count(body, eventStart)
	r.mu.Lock()
	if r.first.IsZero() {
		r.first = now
	}
	r.last = now
	if r.keep {
		r.bodies = append(r.bodies, body)
	}
	if r.at != nil {
		r.noteArrivals(body, now.Sub(r.base))
	}
	r.mu.Unlock()
	r.requests.Add(1)
	r.events.Add(int64(n))
	w.WriteHeader(http.StatusNoContent)
}

// noteArrivals records the arrival of each row of body; r.mu is held.
func (r *hookReceiver) noteArrivals(body []byte, at time.Duration) {
	var one struct {
		Data struct {
			ID int64 `json:"id"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &one) != nil {
		return
	}
	switch id := one.Data.ID; {
	case id == probeID && r.probe != nil:
		close(r.probe)
		r.probe = nil
	case id >= 1 && id < int64(len(r.at)) && r.at[id] == 0:
		r.at[id] = at
	}
}

func (r *hookReceiver) reset(keep bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keep, r.bodies = keep, nil
	r.first, r.last = time.Time{}, time.Time{}
	r.events.Store(0)
	r.requests.Store(0)
}

func (r *hookReceiver) close() { _ = r.srv.Close() }

// webhookConcurrency is pg2kafka's default WEBHOOK_CONCURRENCY, which the
// bare client matches.
const webhookConcurrency = 16

// defaultWorkers is pg2kafka's default WORKERS, which the queue's raw drain
// beside a destination's matches.
const defaultWorkers = 2

func (b *bench) runWebhook(ctx context.Context) error {
	recv, err := startHookReceiver()
	if err != nil {
		return err
	}
	defer recv.close()
	res := &webhookResult{Events: b.cfg.Webhook.Events, Concurrency: webhookConcurrency}
	b.report.Webhook = res
	for _, batch := range []int{1, 100} {
		d, err := b.webhookDrain(ctx, recv, batch)
		if err != nil {
			return err
		}
		res.Runs = append(res.Runs, d)
		b.log.Info("webhook drain", "batch", batch, "events_per_sec", int(d.EventsPerSec), "bare_events_per_sec", int(d.BareEventsPerSec), "ratio", fmt.Sprintf("%.2f", d.Ratio))
	}
	queue, err := b.rawDrain(ctx, b.cfg.Webhook.Events, defaultWorkers)
	if err != nil {
		return fmt.Errorf("the queue's raw drain: %w", err)
	}
	res.Queue = &queue
	l, err := b.webhookLatency(ctx, recv)
	if err != nil {
		return err
	}
	res.Latency = l
	b.log.Info("webhook latency", "rate", l.TargetRate, "p50_ms", l.P50Ms, "p99_ms", l.P99Ms, "max_ms", l.MaxMs, "missing", l.Missing)
	return nil
}

// startShipperTo starts pg2kafka shipping to the destination env names,
// with none of the Kafka settings startShipper gives.
func (b *bench) startShipperTo(batchSize int, env ...string) (*process, error) {
	cmd := exec.Command(b.bin.pg2kafka)
	cmd.Env = []string{
		"DATABASE_URL=" + b.dbURL,
		"BATCH_SIZE=" + strconv.Itoa(batchSize),
		"LOG_LEVEL=warn",
	}
	cmd.Env = append(cmd.Env, b.cfg.ShipperEnv...)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = b.stderr, b.stderr
	return startProcess("pg2kafka", cmd)
}

// webhookDrain fills the queue, drains it through pg2kafka to recv with
// WEBHOOK_BATCH_SIZE=batch, then posts the bodies recv got again with a
// bare client.
func (b *bench) webhookDrain(ctx context.Context, recv *hookReceiver, batch int) (webhookDrain, error) {
	n := b.cfg.Webhook.Events
	if _, err := fillQueue(ctx, b.pool, n, 200); err != nil {
		return webhookDrain{}, err
	}
	recv.reset(true)
	shipper, err := b.startShipperTo(b.cfg.BatchSize, "WEBHOOK_URL="+recv.url, "WEBHOOK_BATCH_SIZE="+strconv.Itoa(batch),
		"WEBHOOK_CONCURRENCY="+strconv.Itoa(webhookConcurrency))
	if err != nil {
		return webhookDrain{}, err
	}
	defer func() { _, _ = shipper.Stop(stopTimeout) }()
	if err := b.waitFor(ctx, shipper, func() (bool, error) {
		if recv.events.Load() < int64(n) {
			return false, nil
		}
		return queueEmpty(ctx, b.pool)
	}); err != nil {
		return webhookDrain{}, fmt.Errorf("webhook drain, batch %d: %w (%d of %d events received)", batch, err, recv.events.Load(), n)
	}
	if _, err := shipper.Stop(stopTimeout); err != nil {
		return webhookDrain{}, err
	}
	// Timed from the first request to the last, as the bare client is:
	// pg2kafka's start is not what is compared.
	recv.mu.Lock()
	bodies := recv.bodies
	elapsed := recv.last.Sub(recv.first)
	recv.mu.Unlock()
	recv.reset(false)

	if err := postBare(ctx, recv.url, bodies, webhookConcurrency); err != nil {
		return webhookDrain{}, err
	}
	recv.mu.Lock()
	bare := recv.last.Sub(recv.first)
	recv.mu.Unlock()
	d := webhookDrain{
		BatchSize:        batch,
		Requests:         len(bodies),
		Seconds:          elapsed.Seconds(),
		EventsPerSec:     float64(n) / elapsed.Seconds(),
		BareEventsPerSec: float64(n) / bare.Seconds(),
	}
	d.Ratio = d.EventsPerSec / d.BareEventsPerSec
	return d, nil
}

// postBare posts bodies to url with concurrency goroutines over one
// keep-alive client, as fast as the endpoint answers: the physical line
// pg2kafka is measured against, timed by the receiver as pg2kafka is.
func postBare(ctx context.Context, url string, bodies [][]byte, concurrency int) error {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = concurrency
	client := &http.Client{Transport: transport}
	defer client.CloseIdleConnections()
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range concurrency {
		g.Go(func() error {
			for {
				i := next.Add(1) - 1
				if i >= int64(len(bodies)) {
					return nil
				}
				req, err := http.NewRequestWithContext(gctx, http.MethodPost, url, bytes.NewReader(bodies[i]))
				if err != nil {
					return err
				}
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					return fmt.Errorf("bare client: %s", resp.Status)
				}
			}
		})
	}
	return g.Wait()
}

// webhookLatency commits rows at webhookLatencyRate while pg2kafka ships
// them to recv one request each, and times each from its commit to its
// receipt.
func (b *bench) webhookLatency(ctx context.Context, recv *hookReceiver) (*latencyResult, error) {
	saved := b.cfg.Latency
	defer func() { b.cfg.Latency = saved }()
	b.cfg.Latency.Rate = webhookLatencyRate
	b.cfg.Latency.Duration = b.cfg.Webhook.LatencyDuration
	cfg := b.cfg.Latency
	total := int(float64(cfg.Rate) * time.Duration(cfg.Duration).Seconds())
	if err := truncate(ctx, b.pool, latencyTable, "pg2kafka.outbound_event_queue"); err != nil {
		return nil, err
	}
	base := time.Now()
	probe := make(chan struct{})
	recv.reset(false)
	recv.mu.Lock()
	recv.at, recv.base, recv.probe = make([]time.Duration, total+1), base, probe
	recv.mu.Unlock()
	defer func() {
		recv.mu.Lock()
		recv.at = nil
		recv.mu.Unlock()
	}()

	shipper, err := b.startShipperTo(b.cfg.BatchSize, "WEBHOOK_URL="+recv.url, "WEBHOOK_CONCURRENCY="+strconv.Itoa(webhookConcurrency))
	if err != nil {
		return nil, err
	}
	defer func() { _, _ = shipper.Stop(stopTimeout) }()
	if _, err := b.pool.Exec(ctx, insertLatencySQL, probeID, "probe", "probe"); err != nil {
		return nil, fmt.Errorf("write the probe row: %w", err)
	}
	select {
	case <-probe:
	case <-time.After(30 * time.Second):
		return nil, errors.New("the probe row did not reach the webhook within 30s")
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	sampler := sampleDepth(ctx, b.pool, time.Second)
	defer sampler.stop()
	commits, writeTime, err := b.writeAtRate(ctx, cfg.Rate, total, base)
	if err != nil {
		return nil, err
	}
	endDepth, err := queueDepth(ctx, b.pool)
	if err != nil {
		return nil, err
	}
	// The probe row was received too.
	_ = b.waitFor(ctx, shipper, func() (bool, error) { return recv.events.Load() >= int64(total)+1, nil })
	maxDepth := sampler.stop()
	if _, err := shipper.Stop(stopTimeout); err != nil {
		return nil, err
	}
	recv.mu.Lock()
	at := recv.at
	recv.mu.Unlock()
	r := &latencyResult{
		TargetRate:   cfg.Rate,
		Writers:      cfg.Writers,
		Committed:    total,
		WriteSeconds: writeTime.Seconds(),
		AchievedRate: float64(total) / writeTime.Seconds(),
		MaxDepth:     max(maxDepth, endDepth),
		EndDepth:     endDepth,
	}
	r.addLatencies(commits, at)
	return r, nil
}

// waitFor polls done every 10ms until it holds, or fails if shipper exits
// or -timeout passes first.
func (b *bench) waitFor(ctx context.Context, shipper *process, done func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(b.cfg.Timeout))
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := done()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-shipper.Exited():
			return fmt.Errorf("pg2kafka exited early: %w", errors.New("see its log above"))
		case <-tick.C:
		}
	}
}
