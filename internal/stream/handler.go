package stream

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// Handler serves GET /ws?query=…: it checks the token and the query, then
// streams the matching events, one text frame each, the event as its
// destination received it.
type Handler struct {
	// Hub is where the events come from. Required.
	Hub *Hub
	// Token is what viewers must present, as "Authorization: Bearer …" or
	// ?token=…. Empty turns the stream off: every request gets 404.
	Token string
	// Tables returns the tracked tables, against which queries are
	// resolved. Required.
	Tables func(context.Context) ([]outbox.Table, error)
	// Logger receives a line per viewer connecting and leaving. Default:
	// discard.
	Logger *slog.Logger
}

// Close codes and reasons a viewer may see.
const (
	reasonTooSlow  = "too slow: fell more than %d events behind; reconnect to resume from live events"
	reasonShutdown = "pg2kafka is shutting down"
)

func (h *Handler) logger() *slog.Logger {
	if h.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Logger
}

// Authorized reports whether r presents the token, comparing in constant
// time: digests of equal length hide even the token's length.
func (h *Handler) Authorized(r *http.Request) bool {
	if h.Token == "" {
		return false
	}
	got := r.URL.Query().Get("token")
	if auth := r.Header.Get("Authorization"); auth != "" {
		scheme, token, _ := strings.Cut(auth, " ")
		if strings.EqualFold(scheme, "Bearer") {
			got = strings.TrimSpace(token)
		}
	}
	a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(h.Token))
	return got != "" && subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.Token == "" {
		http.Error(w, "the live stream is off: set STREAM_TOKEN to turn it on", http.StatusNotFound)
		return
	}
	if !h.Authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pg2kafka stream"`)
		http.Error(w, "missing or wrong token: present STREAM_TOKEN as \"Authorization: Bearer <token>\" or ?token=<token>", http.StatusUnauthorized)
		return
	}
	q, err := ParseQuery(r.URL.Query().Get("query"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	tables, err := h.Tables(r.Context())
	if err != nil {
		http.Error(w, "cannot list the tracked tables: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	if err := q.Resolve(tables); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	select {
	case <-h.Hub.closed:
		http.Error(w, reasonShutdown, http.StatusServiceUnavailable)
		return
	default:
	}

	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept has answered the request
	}
	defer conn.CloseNow()
	sub := h.Hub.subscribe(q)
	defer h.Hub.unsubscribe(sub)
	query := r.URL.Query().Get("query")
	log := h.logger().With(slog.String("query", query), slog.String("remote_addr", r.RemoteAddr))
	log.Info("stream viewer connected")

	// Viewers only listen; reading keeps pings and the close handshake
	// working, and ends ctx when the viewer goes.
	ctx := conn.CloseRead(r.Context())
	for {
		// A viewer that overflowed is told so at once, not after the
		// backlog that overflowed.
		select {
		case <-sub.overflow:
			sub.events = nil
		default:
		}
		select {
		case v := <-sub.events:
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := conn.Write(wctx, websocket.MessageText, v)
			cancel()
			if err != nil {
				log.Info("stream viewer left", slog.Any("error", err))
				return
			}
		case <-sub.overflow:
			log.Warn("stream viewer disconnected: too slow", slog.Int("buffer", h.Hub.buffer))
			_ = conn.Close(websocket.StatusTryAgainLater, fmt.Sprintf(reasonTooSlow, h.Hub.buffer))
			return
		case <-h.Hub.closed:
			_ = conn.Close(websocket.StatusGoingAway, reasonShutdown)
			return
		case <-ctx.Done():
			log.Info("stream viewer left")
			return
		}
	}
}
