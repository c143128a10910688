package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// writeReport prints the results as a markdown table, a row per scenario,
// then each scenario's failures and notes.
func writeReport(w io.Writer, cfg *config, results []*result) {
	fmt.Fprintf(w, "\n## pg2kafka chaos: never lose, never reorder\n\n")
	fmt.Fprintf(w, "%d replicas × %d workers, BATCH_SIZE=%d, SEND_TIMEOUT=%s, SHUTDOWN_TIMEOUT=%s, LANE_TAKEOVER_TIMEOUT=%s; %d keys, -events %d, -writer-rate %d/s, seed %d\n\n",
		replicaCount, workers, batchSize, sendTimeout, shutdownTimeout, laneTakeoverTimeout, cfg.Keys, cfg.Events, cfg.WriterRate, cfg.Seed)
	fmt.Fprintln(w, "| scenario | events | faults | records read | lost | reordered | duplicates | max tx age | max RSS | result |")
	fmt.Fprintln(w, "|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range results {
		v := r.verdict
		fmt.Fprintf(w, "| %s | %d | %s | %d | %d | %d | %d | %s | %s | %s |\n",
			r.name, r.events, dash(r.fault), v.records, v.lost, v.reordered, v.duplicates,
			r.maxTxAge.Round(10*time.Millisecond), mib(r.maxRSS), strings.ToUpper(r.verdictWord()))
	}
	for _, r := range results {
		if len(r.failures)+len(r.notes) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n**%s**\n\n", r.name)
		for _, f := range r.failures {
			fmt.Fprintf(w, "- FAIL: %s\n", f)
		}
		for _, n := range r.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
	fmt.Fprintln(w)
}

func dash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
