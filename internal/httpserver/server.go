// Package httpserver is pg2kafka's one HTTP listener: Prometheus metrics
// (/metrics), health probes (/healthz, /readyz), a status page for people
// (/, /status.json) and the live stream (/ws, /stream). It reads the
// shipper's state and never drives it.
package httpserver

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pg2kafka/pg2kafka/internal/stream"
	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
)

// Config is what a Server serves. Zero values take the defaults stated.
type Config struct {
	// Stats are the counters /metrics exports. Required.
	Stats *Stats
	// Hub is the live stream's; nil serves no stream.
	Hub *stream.Hub
	// StreamToken is what stream viewers present; empty turns the stream
	// off. Default: off.
	StreamToken string
	// BacklogInterval is how old the queue's counts may be before a scrape
	// or the status page counts again: counting reads the whole queue.
	// Default 5s.
	BacklogInterval time.Duration
	// CheckTimeout bounds each readiness check. Default 1s.
	CheckTimeout time.Duration
	// Logger receives the server's logs. Default: discard.
	Logger *slog.Logger
}

// Parts are the parts of pg2kafka the server reports on, known once
// pg2kafka has connected to Postgres and built its destination.
type Parts struct {
	// Pool is the shipper's connection pool.
	Pool *pgxpool.Pool
	// Shipper is the shipper, running or about to.
	Shipper *shipper.Shipper
	// Destination returns nil when the destination is reachable, and why
	// not otherwise; nil when the destination has nothing to check.
	Destination func(context.Context) error
}

// Server serves pg2kafka's HTTP endpoints.
type Server struct {
	cfg      Config
	database atomic.Pointer[string]
	parts    atomic.Pointer[Parts]
	stopping atomic.Bool
	mux      *http.ServeMux
	http     *http.Server

	backlogMu sync.Mutex
	backlog   *backlogSnapshot

	readyMu sync.Mutex
	ready   *readiness
}

// New returns a server; until Attach, it reports pg2kafka as starting.
func New(cfg Config) *Server {
	if cfg.BacklogInterval <= 0 {
		cfg.BacklogInterval = 5 * time.Second
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux()}
	cfg.Stats.registry.MustRegister(&stateCollector{s: s})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Stats.registry, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}))
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /status.json", s.statusJSON)
	s.mux.Handle("GET /{$}", page("index.html"))
	s.mux.Handle("GET /stream", page("stream.html"))
	hub := cfg.Hub
	if hub == nil {
		hub = stream.NewHub(1)
		hub.Close()
	}
	s.mux.Handle("GET /ws", &stream.Handler{Hub: hub, Token: cfg.StreamToken, Tables: s.trackedTables, Logger: cfg.Logger})
	s.http = &http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug)}
	return s
}

// SetDatabase names the database on the status page.
func (s *Server) SetDatabase(name string) { s.database.Store(&name) }

// Attach tells the server what to report on.
func (s *Server) Attach(p Parts) { s.parts.Store(&p) }

// Handler returns the server's routes.
func (s *Server) Handler() http.Handler { return s.mux }

// Listen listens on addr, as HTTP_ADDR gives it (host:port, or :port for
// every interface).
func Listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// Serve serves on ln until Close. Once ctx ends, /readyz answers 503, so
// that traffic moves elsewhere while the shipper finishes its batch.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { s.stopping.Store(true) })
	defer stop()
	err := s.http.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close disconnects the stream's viewers and stops serving, waiting a few
// seconds for requests in progress.
func (s *Server) Close() {
	if s.cfg.Hub != nil {
		s.cfg.Hub.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.http.Shutdown(ctx)
}

func (s *Server) trackedTables(ctx context.Context) ([]outbox.Table, error) {
	p := s.parts.Load()
	if p == nil {
		return nil, errors.New("pg2kafka has not connected to Postgres yet")
	}
	return outbox.TrackedTables(ctx, p.Pool)
}

// healthz is the liveness probe: 200 unless the shipper's loop has ended,
// which a pg2kafka still serving does only while it stops.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	p := s.parts.Load()
	switch {
	case p == nil:
		writeJSON(w, http.StatusOK, map[string]string{"status": "starting"})
	case p.Shipper.State().Running || !s.stopping.Load():
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	default:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "stopped"})
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
