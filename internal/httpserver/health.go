package httpserver

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// readiness is the outcome of one round of readiness checks: each check's
// name and "ok" or what is wrong.
type readiness struct {
	at     time.Time
	ready  bool
	checks map[string]string
}

// readyCacheFor is how long one round of checks answers probes: however
// many probes come, Postgres and the destination are asked at most this
// often.
const readyCacheFor = 500 * time.Millisecond

// readyz is the readiness probe: 200 when Postgres answers, the destination
// is reachable and the shipper is counted among the shippers; 503 with a
// JSON body naming what is wrong otherwise.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	rd := s.readiness(r.Context())
	status := http.StatusOK
	if !rd.ready {
		status = http.StatusServiceUnavailable
	}
	word := "ready"
	if !rd.ready {
		word = "not ready"
	}
	writeJSON(w, status, map[string]any{"status": word, "checks": rd.checks})
}

func (s *Server) readiness(ctx context.Context) *readiness {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	if s.ready != nil && time.Since(s.ready.at) < readyCacheFor {
		return s.ready
	}
	rd := &readiness{checks: make(map[string]string)}
	p := s.parts.Load()
	switch {
	case s.stopping.Load():
		rd.checks["shipper"] = "pg2kafka is shutting down"
	case p == nil:
		rd.checks["postgres"] = "pg2kafka is starting: not connected to Postgres yet"
	default:
		checks := map[string]func(context.Context) error{
			"postgres": p.Pool.Ping,
			"shipper":  func(context.Context) error { return p.Shipper.State().Ready() },
		}
		if p.Destination != nil {
			checks["destination"] = p.Destination
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for name, check := range checks {
			wg.Go(func() {
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.CheckTimeout)
				defer cancel()
				result := "ok"
				if err := check(cctx); err != nil {
					result = err.Error()
					if cctx.Err() != nil {
						result = "no answer within " + s.cfg.CheckTimeout.String() + ": " + result
					}
				}
				mu.Lock()
				rd.checks[name] = result
				mu.Unlock()
			})
		}
		wg.Wait()
	}
	rd.ready = len(rd.checks) > 0
	for _, v := range rd.checks {
		if v != "ok" {
			rd.ready = false
		}
	}
	rd.at = time.Now()
	s.ready = rd
	return rd
}
