package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/pg2kafka/pg2kafka/script/internal/devenv"
	"github.com/twmb/franz-go/pkg/kerr"
)

// drainParams is one drain through pg2kafka.
type drainParams struct {
	Events      int    `json:"events"`
	EventBytes  int    `json:"event_bytes"`
	BatchSize   int    `json:"batch_size"`
	Compression string `json:"compression,omitempty"` // ENV=codec, if varied
}

// drainResult is what one drain measured.
type drainResult struct {
	drainParams
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_sec"`
	MBPerSec     float64 `json:"mb_per_sec"` // of event data
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
	// CPUSeconds is the CPU time pg2kafka used, user and system.
	CPUSeconds float64 `json:"cpu_seconds"`
}

// drainSection is section 2.
type drainSection struct {
	drainResult
	// VsRawDrain is the drain's rate over the single-worker raw drain's.
	VsRawDrain  float64       `json:"vs_raw_drain,omitempty"`
	Compression []drainResult `json:"compression,omitempty"`
	// CompressionNote says why Compression is empty.
	CompressionNote string `json:"compression_note,omitempty"`
}

// runDrain drains the full queue through pg2kafka, then again per
// compression codec if pg2kafka has such a setting, and profiles it if asked.
func (b *bench) runDrain(ctx context.Context) error {
	p := drainParams{Events: b.cfg.Events, EventBytes: 200, BatchSize: b.cfg.BatchSize}
	r, err := b.drain(ctx, p)
	if err != nil {
		return err
	}
	s := &drainSection{drainResult: r}
	b.report.Drain = s
	if len(b.report.Raw) > 0 {
		s.VsRawDrain = r.EventsPerSec / b.report.Raw[0].EventsPerSec
	}

	env, err := b.compressionSetting(ctx)
	if err != nil {
		return err
	}
	if env == "" {
		s.CompressionNote = "skipped: pg2kafka -help lists no compression setting"
		b.log.Info("compression variants " + s.CompressionNote)
	} else {
		for _, codec := range b.cfg.Compression {
			c, err := b.drain(ctx, drainParams{Events: p.Events, EventBytes: p.EventBytes, BatchSize: p.BatchSize, Compression: env + "=" + codec})
			if err != nil {
				return err
			}
			s.Compression = append(s.Compression, c)
		}
	}

	if b.cfg.CPUProfile != "" {
		return b.profileDrain(ctx, r.Seconds)
	}
	return nil
}

// runScaling drains across batch sizes and event sizes.
func (b *bench) runScaling(ctx context.Context) error {
	var runs []drainParams
	for _, size := range b.cfg.Scaling.BatchSizes {
		runs = append(runs, drainParams{Events: b.cfg.Events, EventBytes: 200, BatchSize: size})
	}
	maxBytes := b.cfg.Scaling.MaxMB << 20
	for _, size := range b.cfg.Scaling.EventSizes {
		n := max(1, min(b.cfg.Events, maxBytes/size))
		p := drainParams{Events: n, EventBytes: size, BatchSize: b.cfg.BatchSize}
		if !slices.Contains(runs, p) { // 200 B at the default batch size is in both sweeps
			runs = append(runs, p)
		}
	}
	for _, p := range runs {
		r, err := b.drain(ctx, p)
		if err != nil {
			return err
		}
		b.report.Scaling = append(b.report.Scaling, r)
	}
	return nil
}

// drain measures one drain through pg2kafka. Runs already measured, in this
// or another section, are not repeated.
func (b *bench) drain(ctx context.Context, p drainParams) (drainResult, error) {
	if r, ok := b.drains[p]; ok {
		return r, nil
	}
	var env []string
	if p.Compression != "" {
		env = append(env, p.Compression)
	}
	elapsed, state, err := b.drainOnce(ctx, b.bin.pg2kafka, p, nil, env...)
	if err != nil {
		return drainResult{}, err
	}
	r := drainResult{
		drainParams:  p,
		Seconds:      elapsed.Seconds(),
		EventsPerSec: float64(p.Events) / elapsed.Seconds(),
		MBPerSec:     float64(p.Events) * float64(p.EventBytes) / elapsed.Seconds() / 1e6,
		PeakRSSBytes: devenv.PeakRSS(state),
		CPUSeconds:   (state.UserTime() + state.SystemTime()).Seconds(),
	}
	b.log.Info("drained through pg2kafka", "events", p.Events, "event_bytes", p.EventBytes, "batch_size", p.BatchSize,
		"compression", p.Compression, "events_per_sec", int(r.EventsPerSec), "peak_rss_mb", r.PeakRSSBytes>>20, "cpu_seconds", r.CPUSeconds)
	b.drains[p] = r
	return r, nil
}

// drainOnce fills the queue, starts binary and times it from its start
// until the queue is empty and every event is on the topic, counted by the
// broker's end offsets; then stops it and returns its final state. If
// alongside is given, it runs once binary has started, before the wait.
func (b *bench) drainOnce(ctx context.Context, binary string, p drainParams, alongside func(context.Context) error, env ...string) (time.Duration, *os.ProcessState, error) {
	took, err := fillQueue(ctx, b.pool, p.Events, p.EventBytes)
	if err != nil {
		return 0, nil, err
	}
	b.log.Info("queue filled", "events", p.Events, "event_bytes", p.EventBytes, "took", took.Round(time.Millisecond))

	topic := b.topic(eventsTable)
	// Earlier runs' topics are deleted, but a deletion may fail; counting
	// from the offsets already there keeps this run's count right anyway.
	base, err := b.recordsOn(ctx, topic)
	if err != nil {
		return 0, nil, err
	}
	start := time.Now()
	shipper, err := b.startShipper(binary, p.BatchSize, env...)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _, _ = shipper.Stop(stopTimeout) }() // for early returns; the normal path checks it
	if alongside != nil {
		if err := alongside(ctx); err != nil {
			return 0, nil, err
		}
	}
	if err := b.waitDrained(ctx, shipper, topic, base+int64(p.Events)); err != nil {
		return 0, nil, err
	}
	elapsed := time.Since(start)
	state, err := shipper.Stop(stopTimeout)
	if err != nil {
		return 0, nil, err
	}
	b.deleteTopic(ctx, topic)
	return elapsed, state, nil
}

// startShipper starts a pg2kafka binary on the benchmark database and the
// dev broker. Its environment is only what is given here, so that settings
// of the caller's shell (TOPIC_NAMESPACE, say) cannot skew the run.
func (b *bench) startShipper(binary string, batchSize int, extraEnv ...string) (*process, error) {
	cmd := b.shipperCmd(binary, batchSize, extraEnv...)
	cmd.Stdout, cmd.Stderr = b.stderr, b.stderr
	return startProcess("pg2kafka", cmd)
}

// shipperCmd is startShipper's command, not started and without its output.
func (b *bench) shipperCmd(binary string, batchSize int, extraEnv ...string) *exec.Cmd {
	cmd := exec.Command(binary)
	cmd.Env = []string{
		"DATABASE_URL=" + b.dbURL,
		"KAFKA_PRODUCER_URL=" + b.broker,
		"KAFKA_CREATE_TOPICS=true",
		"BATCH_SIZE=" + strconv.Itoa(batchSize),
		"LOG_LEVEL=warn",
	}
	// Later entries win: -shipper-env over the defaults above, a run's own
	// settings over -shipper-env.
	cmd.Env = append(cmd.Env, b.cfg.ShipperEnv...)
	cmd.Env = append(cmd.Env, extraEnv...)
	return cmd
}

// waitDrained waits until topic holds want records and the queue is empty,
// or fails if pg2kafka exits or -timeout passes first.
func (b *bench) waitDrained(ctx context.Context, shipper *process, topic string, want int64) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(b.cfg.Timeout))
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var have int64
	var lastErr error
	for {
		select {
		case <-ctx.Done():
			cause := ctx.Err()
			if lastErr != nil {
				cause = lastErr
			}
			return fmt.Errorf("drain not finished within %s: %d of %d records on %s: %w", time.Duration(b.cfg.Timeout), have, want, topic, cause)
		case <-shipper.Exited():
			return fmt.Errorf("pg2kafka exited during the drain: %v", shipper.err)
		case <-tick.C:
		}
		var err error
		if have, err = b.recordsOn(ctx, topic); err != nil {
			lastErr = err // the topic may be being created; look again
			continue
		}
		lastErr = nil
		if have < want {
			continue
		}
		// The queue empties once the last batch's deletion commits, just
		// after its records were acknowledged.
		empty, err := queueEmpty(ctx, b.pool)
		if err != nil {
			return err
		}
		if empty {
			return nil
		}
	}
}

// topic is the topic of a table's events.
func (b *bench) topic(table string) string { return "pg2kafka." + b.cfg.Database + "." + table }

// recordsOn counts the records on topic by its partitions' end offsets; a
// topic that does not exist holds none.
func (b *bench) recordsOn(ctx context.Context, topic string) (int64, error) {
	offsets, err := b.kafka.ListEndOffsets(ctx, topic)
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return 0, nil // deleted since the client last saw it
	}
	if err != nil {
		return 0, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	var n int64
	for _, partitions := range offsets {
		for _, o := range partitions {
			if o.Err == nil {
				n += o.Offset
			}
		}
	}
	return n, nil
}

// deleteTopic deletes a drained topic, so that the in-memory broker does not
// grow run after run; failing that costs memory, not correctness.
func (b *bench) deleteTopic(ctx context.Context, topic string) {
	resp, err := b.kafka.DeleteTopics(ctx, topic)
	if err == nil {
		err = resp.Error()
	}
	if err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
		b.log.Warn("could not delete a drained topic", "topic", topic, "error", err)
	}
}

// compressionEnv finds the name of a compression setting in pg2kafka -help.
var compressionEnv = regexp.MustCompile(`\b[A-Z][A-Z0-9_]*COMPRESSION[A-Z0-9_]*\b`)

// compressionSetting returns the environment variable that sets pg2kafka's
// compression, or "" if it has none.
func (b *bench) compressionSetting(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.bin.pg2kafka, "-help")
	cmd.Env = []string{}
	help, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("pg2kafka -help: %w", err)
	}
	return compressionEnv.FindString(string(help)), nil
}

// profileDrain drains the queue once more through a pg2kafka built with a
// pprof endpoint, and writes its CPU profile over the drain to -cpuprofile.
// The run is not reported: only its profile is wanted.
func (b *bench) profileDrain(ctx context.Context, expectSeconds float64) error {
	binary, err := b.bin.buildProfiled(ctx, b.stderr)
	if err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	seconds := max(1, int(math.Ceil(expectSeconds*1.2)))
	url := "http://" + addr + "/debug/pprof/profile?seconds=" + strconv.Itoa(seconds)
	var profile []byte
	fetch := func(ctx context.Context) error {
		b.log.Info("profiling pg2kafka over a drain", "seconds", seconds)
		profile, err = fetchProfile(ctx, url, time.Duration(seconds)*time.Second+time.Minute)
		return err
	}
	p := drainParams{Events: b.cfg.Events, EventBytes: 200, BatchSize: b.cfg.BatchSize}
	if _, _, err := b.drainOnce(ctx, binary, p, fetch, "PG2KAFKA_BENCH_PPROF_ADDR="+addr); err != nil {
		return err
	}
	if err := os.WriteFile(b.cfg.CPUProfile, profile, 0o644); err != nil {
		return err
	}
	b.log.Info("CPU profile written; read it with go tool pprof -top "+b.cfg.CPUProfile, "file", b.cfg.CPUProfile)
	return nil
}

// fetchProfile GETs a pprof profile, retrying while the server is not yet
// listening, within timeout.
func fetchProfile(ctx context.Context, url string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
			}
			return io.ReadAll(resp.Body)
		}
		var opErr *net.OpError
		if !errors.As(err, &opErr) || opErr.Op != "dial" {
			return nil, fmt.Errorf("GET %s: %w", url, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("GET %s: %w", url, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// freeAddr returns a loopback address with a port nothing listens on.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
