package webhook

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// endpoint is where the reachability check dials: the URL's host and port,
// and whether it speaks TLS. It is empty when the host depends on the event
// ({schema}, {table} or {topic} in it), which only a send can tell.
type endpoint struct {
	addr       string // host:port
	serverName string
	tls        bool
}

func endpointOf(raw string) endpoint {
	_, rest, _ := strings.Cut(raw, "://")
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	if strings.Contains(rest, "{") {
		return endpoint{}
	}
	u, err := url.Parse(raw[:strings.Index(raw, "://")+3] + rest)
	if err != nil || u.Host == "" {
		return endpoint{}
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return endpoint{addr: net.JoinHostPort(u.Hostname(), port), serverName: u.Hostname(), tls: u.Scheme == "https"}
}

// How long what the reachability check learnt stands: answers to requests
// show the endpoint reachable for reachableFor, and a probe (by /readyz
// every second, say) dials at most every recheckAfter, so that neither
// costs the endpoint a connection per probe.
const (
	reachableFor = 10 * time.Second
	recheckAfter = 5 * time.Second
)

// Address is the host:port the reachability check dials, "" when the
// endpoint's host depends on the event.
func (s *Sink) Address() string { return s.endpoint.addr }

// Reachable reports whether the endpoint takes connections: a TCP
// connection and, over https, a TLS handshake verified as requests are. It
// sends no request, since an endpoint may answer anything but a POST of an
// event with an error. An endpoint that answered a request lately, whatever
// it answered, is reachable; one whose host depends on the event, or which
// is reached through a proxy, is not checked.
func (s *Sink) Reachable(ctx context.Context) error {
	e := s.endpoint
	if e.addr == "" {
		return nil
	}
	s.mu.Lock()
	now := time.Now()
	if now.Sub(s.answeredAt) < reachableFor {
		s.mu.Unlock()
		return nil
	}
	if !s.checkedAt.IsZero() && now.Sub(s.checkedAt) < recheckAfter {
		err := s.checkErr
		s.mu.Unlock()
		return err
	}
	s.mu.Unlock()
	return s.check(ctx)
}

// check dials the endpoint now and keeps what it found for Reachable.
func (s *Sink) check(ctx context.Context) error {
	err := s.dial(ctx)
	s.mu.Lock()
	s.checkedAt, s.checkErr = time.Now(), err
	s.mu.Unlock()
	return err
}

func (s *Sink) dial(ctx context.Context) error {
	e := s.endpoint
	probe := &http.Request{URL: &url.URL{Scheme: "http", Host: e.addr}}
	if e.tls {
		probe.URL.Scheme = "https"
	}
	if p, err := http.ProxyFromEnvironment(probe); err == nil && p != nil {
		return nil // only the proxy could tell
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	dialer := &net.Dialer{}
	var conn net.Conn
	var err error
	if e.tls {
		cfg := s.tls.Clone()
		cfg.ServerName = e.serverName
		conn, err = (&tls.Dialer{NetDialer: dialer, Config: cfg}).DialContext(ctx, "tcp", e.addr)
	} else {
		conn, err = dialer.DialContext(ctx, "tcp", e.addr)
	}
	if err != nil {
		fix := "is the endpoint up, and WEBHOOK_URL right?"
		if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
			fix = "its certificate is not one pg2kafka trusts: set WEBHOOK_CA_FILE to the CA that signs it"
		}
		return &Error{URL: redact(s.cfg.URL), Err: fmt.Errorf("webhook: cannot connect to %s: %w; %s", e.addr, err, fix)}
	}
	return conn.Close()
}

// noteAnswered records that the endpoint answered a request.
func (s *Sink) noteAnswered() {
	s.mu.Lock()
	s.answeredAt = time.Now()
	s.mu.Unlock()
}

// WatchStartup checks the endpoint when pg2kafka starts and logs what it
// found, so that a wrong address shows while the queue may well be empty;
// while it cannot connect, it looks again every recheckAfter until it can,
// and says so then, or until ctx ends. It returns at once.
func (s *Sink) WatchStartup(ctx context.Context, logger *slog.Logger) {
	if s.endpoint.addr == "" {
		logger.Info("the webhook endpoint's host depends on each event's table; the first send checks it", slog.String("webhook_url", redact(s.cfg.URL)))
		return
	}
	go func() {
		err := s.check(ctx)
		if err != nil {
			logger.Warn("cannot reach the webhook endpoint yet; events stay queued, retrying", slog.String("webhook_address", s.endpoint.addr), slog.Any("error", err))
			t := time.NewTicker(cmp.Or(s.recheck, recheckAfter))
			defer t.Stop()
			for err != nil {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				err = s.check(ctx)
			}
		}
		logger.Info("webhook endpoint reachable", slog.String("webhook_address", s.endpoint.addr))
	}()
}
