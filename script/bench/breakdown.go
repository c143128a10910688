package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pg2kafka/pg2kafka/shipper"
)

// stageResult is one stage of the latency breakdown, over the events
// whose batch the shipper timed.
type stageResult struct {
	Stage string  `json:"stage"`
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// The breakdown's stages, in an event's order. The claim's query is part of
// commit → claimed; acknowledged → consumer runs beside acknowledged →
// delete committed, not after it.
var breakdownStages = []string{
	"commit → claimed",
	"  of which the claim's query",
	"claimed → sent (encode)",
	"sent → acknowledged",
	"acknowledged → delete committed",
	"acknowledged → consumer",
	"commit → consumer",
}

// batchTimes holds, by event uuid, the instants pg2kafka logged of the
// event's batch (shipper.TimingMessage): claim, claimed, sent, acknowledged,
// committed, as durations since the run's base.
type batchTimes struct {
	mu   sync.Mutex
	by   map[string][5]time.Duration
	done chan struct{}
	// lines counts every line pg2kafka has written to stderr.
	lines atomic.Int64
}

// startTimedShipper starts pg2kafka with debug logs in JSON, keeps the
// timing lines and passes on those of level WARN and above.
func (b *bench) startTimedShipper(base time.Time, env ...string) (*process, *batchTimes, error) {
	cmd := b.shipperCmd(b.bin.pg2kafka, b.cfg.BatchSize, append(env, "LOG_LEVEL=debug", "LOG_FORMAT=json")...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = b.stderr, pw
	p, err := startProcess("pg2kafka", cmd)
	if err != nil {
		return nil, nil, err
	}
	t := &batchTimes{by: make(map[string][5]time.Duration), done: make(chan struct{})}
	go func() {
		<-p.Exited() // Wait has copied the last of its output
		_ = pw.Close()
	}()
	go t.read(pr, b.stderr, base)
	return p, t, nil
}

func (t *batchTimes) read(r io.Reader, passOn io.Writer, base time.Time) {
	defer close(t.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	marker := []byte(`"msg":"` + shipper.TimingMessage + `"`)
	for sc.Scan() {
		t.lines.Add(1)
		line := sc.Bytes()
		if !bytes.Contains(line, marker) {
			if bytes.Contains(line, []byte(`"level":"WARN"`)) || bytes.Contains(line, []byte(`"level":"ERROR"`)) || !bytes.HasPrefix(line, []byte("{")) {
				_, _ = passOn.Write(append(line, '\n'))
			}
			continue
		}
		var l struct {
			Claim        int64  `json:"claim"`
			Claimed      int64  `json:"claimed"`
			Sent         int64  `json:"sent"`
			Acknowledged int64  `json:"acknowledged"`
			Committed    int64  `json:"committed"`
			UUIDs        string `json:"uuids"`
		}
		if json.Unmarshal(line, &l) != nil {
			continue
		}
		at := func(us int64) time.Duration { return time.UnixMicro(us).Sub(base) }
		times := [5]time.Duration{at(l.Claim), at(l.Claimed), at(l.Sent), at(l.Acknowledged), at(l.Committed)}
		t.mu.Lock()
		for _, u := range strings.Fields(l.UUIDs) {
			t.by[u] = times
		}
		t.mu.Unlock()
	}
}

// wait returns once pg2kafka has exited and its output is read.
func (t *batchTimes) wait(ctx context.Context) error {
	select {
	case <-t.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return fmt.Errorf("pg2kafka's output was not read to its end within 10s of its exit")
	}
}

// breakdown splits the time of each row that arrived, whose uuid the
// consumer saw and whose batch pg2kafka timed, into breakdownStages.
func (t *batchTimes) breakdown(commits, arrivals []time.Duration, uuids []string) (stages []stageResult, timed int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	per := make([][]time.Duration, len(breakdownStages))
	for id := 1; id < len(commits); id++ {
		if arrivals[id] == 0 || uuids[id] == "" {
			continue
		}
		s, ok := t.by[uuids[id]]
		if !ok {
			continue
		}
		timed++
		claim, claimed, sent, acked, committed := s[0], s[1], s[2], s[3], s[4]
		for i, d := range []time.Duration{
			claimed - commits[id],
			claimed - max(claim, commits[id]),
			sent - claimed,
			acked - sent,
			committed - acked,
			arrivals[id] - acked,
			arrivals[id] - commits[id],
		} {
			// The clocks of two processes: a claim that began just before
			// the writer saw its commit return may have read the row.
			per[i] = append(per[i], max(0, d))
		}
	}
	for i, name := range breakdownStages {
		stages = append(stages, stageResult{Stage: name, P50Ms: percentileMs(per[i], 50), P99Ms: percentileMs(per[i], 99), MaxMs: percentileMs(per[i], 100)})
	}
	return stages, timed
}
