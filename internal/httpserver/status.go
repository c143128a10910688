package httpserver

import (
	"embed"
	"net/http"
	"slices"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
)

// status is what /status.json returns, and the status page shows.
type status struct {
	Database    string    `json:"database"`
	GeneratedAt time.Time `json:"generated_at"`
	// CountedAt is when the queue was last counted; Error why that count
	// failed, if it did.
	CountedAt time.Time `json:"counted_at"`
	Error     string    `json:"error,omitempty"`
	// Estimated is true when the queue was too long to count whole: the
	// tables' queued are estimates, and the oldest age is known only for
	// tables among the first events of the queue.
	Estimated bool `json:"estimated"`
	Ready     bool `json:"ready"`
	// Checks are /readyz's.
	Checks   map[string]string `json:"checks"`
	Tables   []tableStatus     `json:"tables"`
	Shippers []shipperStatus   `json:"shippers"`
	// Lanes are those this process owns.
	Lanes  int          `json:"lanes"`
	Stream streamStatus `json:"stream"`
	// RateBucketSeconds is the width of each value of a table's
	// shipped_per_second.
	RateBucketSeconds float64 `json:"rate_bucket_seconds"`
}

type tableStatus struct {
	Table   string `json:"table"`
	Tracked bool   `json:"tracked"`
	Queued  int64  `json:"queued"`
	// OldestAgeSeconds is null when unknown (see status.Estimated).
	OldestAgeSeconds *float64 `json:"oldest_age_seconds"`
	DeadLetters      int64    `json:"dead_letters"`
	// ShippedPerSecond is by this process, oldest first.
	ShippedPerSecond []float64 `json:"shipped_per_second"`
	// Paused is set while this process holds the table's events back.
	Paused *pausedStatus `json:"paused,omitempty"`
}

// pausedStatus is why a table's events wait, as the shipper logs it.
type pausedStatus struct {
	// Target is what failed: the Kafka topic, the webhook endpoint, the
	// RabbitMQ routing key.
	Target string `json:"target"`
	// Since is when its events first failed; RetryAt when they are tried
	// next.
	Since   time.Time `json:"since"`
	RetryAt time.Time `json:"retry_at"`
	// Error is the last failure, naming the fix where the sink knows it.
	Error string `json:"error"`
}

func newPausedStatus(p shipper.PausedTable) *pausedStatus {
	ps := &pausedStatus{Target: p.Topic, Since: p.Since, RetryAt: p.RetryAt}
	if p.Err != nil {
		ps.Error = p.Err.Error()
	}
	return ps
}

type shipperStatus struct {
	PID        int32     `json:"pid"`
	ClientAddr string    `json:"client_addr"`
	Since      time.Time `json:"since"`
	Lanes      []int32   `json:"lanes"`
}

type streamStatus struct {
	Enabled bool `json:"enabled"`
	Viewers int  `json:"viewers"`
}

func (s *Server) statusJSON(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	b := s.currentBacklog(r.Context())
	rd := s.readiness(r.Context())
	st := status{
		GeneratedAt: now, CountedAt: b.at,
		Ready: rd.ready, Checks: rd.checks,
		Tables: []tableStatus{}, Shippers: []shipperStatus{},
		Stream:            streamStatus{Enabled: s.cfg.Hub != nil && s.cfg.StreamToken != ""},
		RateBucketSeconds: rateBucket.Seconds(),
	}
	if name := s.database.Load(); name != nil {
		st.Database = *name
	}
	if b.err != nil {
		st.Error = b.err.Error()
	}
	rates := s.cfg.Stats.shippedPerSecond(now)
	paused := s.pausedTables()
	seen := make(map[string]bool)
	var tables []outbox.TableStatus
	var shippers []outbox.ShipperConn
	if b.status != nil {
		tables, shippers, st.Estimated = b.status.Tables, b.status.Shippers, b.status.Queue.Estimated
	}
	for _, t := range tables {
		label := tableLabel(outbox.Table{Schema: t.Schema, Name: t.Name})
		seen[label] = true
		ts := tableStatus{Table: label, Tracked: t.Tracked, Queued: t.Queued, DeadLetters: t.DeadLetters, ShippedPerSecond: rates[label]}
		if age, ok := oldestAge(t, b.at); ok {
			ts.OldestAgeSeconds = &age
		}
		if p, ok := paused[label]; ok {
			ts.Paused = newPausedStatus(p)
		}
		st.Tables = append(st.Tables, ts)
	}
	// Paused tables the count missed: it failed, or its sample of a long
	// queue did.
	for label, p := range paused {
		if !seen[label] {
			seen[label] = true
			st.Tables = append(st.Tables, tableStatus{Table: label, ShippedPerSecond: rates[label], Paused: newPausedStatus(p)})
		}
	}
	// Tables shipped lately but gone from the count (torn down since).
	for label, r := range rates {
		if !seen[label] && b.err == nil {
			st.Tables = append(st.Tables, tableStatus{Table: label, ShippedPerSecond: r})
		}
	}
	slices.SortFunc(st.Tables, func(a, b tableStatus) int {
		if a.Table < b.Table {
			return -1
		}
		if a.Table > b.Table {
			return 1
		}
		return 0
	})
	for i := range st.Tables {
		if st.Tables[i].ShippedPerSecond == nil {
			st.Tables[i].ShippedPerSecond = make([]float64, rateBuckets)
		}
	}
	for _, c := range shippers {
		st.Shippers = append(st.Shippers, shipperStatus{PID: c.PID, ClientAddr: c.ClientAddr, Since: c.Since, Lanes: c.Lanes})
	}
	if p := s.parts.Load(); p != nil {
		st.Lanes = p.Shipper.State().Lanes()
	}
	if s.cfg.Hub != nil {
		st.Stream.Viewers = s.cfg.Hub.Viewers()
	}
	writeJSON(w, http.StatusOK, st)
}

//go:embed web
var web embed.FS

// page serves one of the embedded pages.
func page(name string) http.Handler {
	body, err := web.ReadFile("web/" + name)
	if err != nil {
		panic(err) // the pages are embedded at build time
	}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
		_, _ = w.Write(body)
	})
}
