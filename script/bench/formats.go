package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pg2kafka/pg2kafka/script/internal/devenv"
)

// The formats section: the drain rate in each EVENT_FORMAT against the
// default format's, drained in rounds that take the formats in turn, so
// that a machine getting slower or faster weighs on all of them alike.
const sectionFormats = "formats"

// eventFormats are EVENT_FORMAT's values, the default first.
var eventFormats = []string{"pg2kafka", "debezium", "hasura", "skor", "pgevents"}

// targetFormatVsDefault is the target: each format drains within
// 15 % of the default format's rate.
const targetFormatVsDefault = 0.85

// formatResult is one format's drains.
type formatResult struct {
	Format       string    `json:"format"`
	Runs         []float64 `json:"runs_events_per_sec"`
	EventsPerSec float64   `json:"median_events_per_sec"`
	CPUSeconds   []float64 `json:"cpu_seconds"`
	// VsDefault is the median rate over the default format's.
	VsDefault float64 `json:"vs_default"`
}

type formatsSection struct {
	Events     int            `json:"events"`
	EventBytes int            `json:"event_bytes"`
	Rounds     int            `json:"rounds"`
	Formats    []formatResult `json:"formats"`
}

func (b *bench) runFormats(ctx context.Context) error {
	p := drainParams{Events: b.cfg.Events, EventBytes: 200, BatchSize: b.cfg.BatchSize}
	s := &formatsSection{Events: p.Events, EventBytes: p.EventBytes, Rounds: b.cfg.Write.Rounds}
	results := make([]formatResult, len(eventFormats))
	for round := 1; round <= s.Rounds; round++ {
		for i, format := range eventFormats {
			elapsed, state, err := b.drainOnce(ctx, b.bin.pg2kafka, p, nil, "EVENT_FORMAT="+format)
			if err != nil {
				return fmt.Errorf("EVENT_FORMAT=%s: %w", format, err)
			}
			rate := float64(p.Events) / elapsed.Seconds()
			r := &results[i]
			r.Format = format
			r.Runs = append(r.Runs, rate)
			r.CPUSeconds = append(r.CPUSeconds, (state.UserTime() + state.SystemTime()).Seconds())
			b.log.Info("drained in a format", "round", round, "event_format", format, "events_per_sec", int(rate),
				"took", elapsed.Round(time.Millisecond), "peak_rss_mb", devenv.PeakRSS(state)>>20)
		}
	}
	for i := range results {
		results[i].EventsPerSec = median(results[i].Runs)
		results[i].VsDefault = results[i].EventsPerSec / results[0].EventsPerSec
	}
	s.Formats = results
	b.report.Formats = s
	return nil
}

func (s *formatsSection) rows() []row {
	var rows []row
	for _, f := range s.Formats {
		measure := fmt.Sprintf("drain EVENT_FORMAT=%s, %s × %s", f.Format, thousands(s.Events), bytesLabel(s.EventBytes))
		value := perSec(f.EventsPerSec, "events") + fmt.Sprintf(" (median of %d)", len(f.Runs))
		if f.Format == eventFormats[0] {
			rows = append(rows, row{Measure: measure, Value: value})
			continue
		}
		rows = append(rows,
			row{Measure: measure, Value: value},
			check(fmt.Sprintf("drain %s ÷ %s", f.Format, eventFormats[0]), percent(f.VsDefault), "≥ "+percent(targetFormatVsDefault), f.VsDefault >= targetFormatVsDefault))
	}
	return rows
}
