package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "s3cret-token"

type bundle struct {
	t   *testing.T
	hub *Hub
	srv *httptest.Server
}

func setup(t *testing.T, buffer int) *bundle {
	t.Helper()
	hub := NewHub(buffer)
	h := &Handler{Hub: hub, Token: token, Tables: func(context.Context) ([]outbox.Table, error) {
		return []outbox.Table{{Schema: "public", Name: "products"}, {Schema: "sales", Name: "orders"}}, nil
	}}
	srv := httptest.NewServer(h)
	t.Cleanup(func() { hub.Close(); srv.Close() })
	return &bundle{t: t, hub: hub, srv: srv}
}

func (b *bundle) url(query string) string {
	return "ws" + strings.TrimPrefix(b.srv.URL, "http") + "/ws?query=" + url.QueryEscape(query)
}

// dial connects as a viewer presenting the token in the Authorization
// header, and waits until the hub counts it.
func (b *bundle) dial(query string) *websocket.Conn {
	b.t.Helper()
	before := b.hub.Viewers()
	conn, _, err := websocket.Dial(b.t.Context(), b.url(query), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + token}},
	})
	if err != nil {
		b.t.Fatalf("dial %s: %v", query, err)
	}
	b.t.Cleanup(func() { conn.CloseNow() })
	waitFor(b.t, "the viewer to be counted", func() bool { return b.hub.Viewers() > before })
	return conn
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// event is a test's shorthand for an acknowledged or failed event.
type event struct {
	table     string // schema.name
	statement string
	key       string
	data      string
	failed    bool
}

// settled is a batch as the shipper hands it to OnSettled; each message's
// value is "<statement> <key> <data>".
func settled(events ...event) *shipper.Settled {
	s := &shipper.Settled{}
	for _, e := range events {
		schema, name, _ := strings.Cut(e.table, ".")
		key := e.key
		s.Events = append(s.Events, outbox.Event{TableSchema: schema, TableName: name, Statement: e.statement, ExternalID: &key, Data: []byte(e.data)})
		s.Messages = append(s.Messages, shipper.Message{Key: []byte(key), Value: []byte(e.statement + " " + key + " " + e.data)})
		var err error
		if e.failed {
			err = errors.New("not acknowledged")
		}
		s.Errs = append(s.Errs, err)
	}
	return s
}

// read returns the next n frames the viewer receives.
func read(t *testing.T, conn *websocket.Conn, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var out []string
	for range n {
		typ, msg, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("read frame %d of %d: %v (got %q)", len(out)+1, n, err, out)
		}
		if typ != websocket.MessageText {
			t.Errorf("frame %q is %v, want text", msg, typ)
		}
		out = append(out, string(msg))
	}
	return out
}

func TestStreamShowsEachViewerTheAcknowledgedEventsItsQueryMatches(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	all := b.dial("*:products")
	updates := b.dial("update:products:price.gt.10")
	orders := b.dial("*:sales.orders:external_id.in.(o1,o3)")

	b.hub.Publish(settled(
		event{"public.products", "INSERT", "A1", `{"sku": "A1", "price": 9}`, false},
		event{"public.products", "UPDATE", "A1", `{"price": 11}`, false},
		event{"public.products", "UPDATE", "A2", `{"price": 12}`, true}, // not acknowledged: never shown
		event{"sales.orders", "INSERT", "o1", `{"id": 1}`, false},
		event{"sales.orders", "INSERT", "o2", `{"id": 2}`, false},
	))
	b.hub.Publish(settled(
		event{"public.products", "UPDATE", "A1", `{"price": 10}`, false},
		event{"public.products", "DELETE", "A1", `{}`, false},
		event{"sales.orders", "UPDATE", "o3", `{"id": 3}`, false},
	))

	for _, tt := range []struct {
		conn *websocket.Conn
		want []string
	}{
		{all, []string{`INSERT A1 {"sku": "A1", "price": 9}`, `UPDATE A1 {"price": 11}`, `UPDATE A1 {"price": 10}`, `DELETE A1 {}`}},
		{updates, []string{`UPDATE A1 {"price": 11}`}},
		{orders, []string{`INSERT o1 {"id": 1}`, `UPDATE o3 {"id": 3}`}},
	} {
		got := read(t, tt.conn, len(tt.want))
		if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
			t.Errorf("frames\n got %q\nwant %q", got, tt.want)
		}
	}
	// Nothing more arrives: the next event a viewer matches comes next.
	b.hub.Publish(settled(event{"public.products", "UPDATE", "Z9", `{"price": 99}`, false}))
	for _, conn := range []*websocket.Conn{all, updates} {
		if got := read(t, conn, 1); got[0] != `UPDATE Z9 {"price": 99}` {
			t.Errorf("next frame %q, want the last event", got[0])
		}
	}
}

func TestStreamRefusesWithoutTheTokenOrAQuery(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	get := func(rawURL string, header http.Header) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, rawURL, nil)
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(body))
	}
	base := b.srv.URL + "/ws?query="
	bearer := http.Header{"Authorization": {"Bearer " + token}}
	for _, tt := range []struct {
		url    string
		header http.Header
		status int
		body   string
	}{
		{base + "*:products", nil, 401, `missing or wrong token: present STREAM_TOKEN as "Authorization: Bearer <token>" or ?token=<token>`},
		{base + "*:products", http.Header{"Authorization": {"Bearer " + token + "x"}}, 401, "missing or wrong token"},
		{base + "*:products&token=wrong", nil, 401, "missing or wrong token"},
		{base + "*:products", http.Header{"Authorization": {"Basic " + token}}, 401, "missing or wrong token"},
		{b.srv.URL + "/ws", bearer, 400, "no query: want query=<change_type>:<table>"},
		{base + "upsert:products", bearer, 400, `query "upsert:products": unknown change_type "upsert": want query=`},
		{base + "*:users", bearer, 400, "table users is not tracked; tracked tables: public.products, sales.orders"},
		{base + "*:users&token=" + token, nil, 400, "table users is not tracked"},
	} {
		status, body := get(tt.url, tt.header)
		if status != tt.status || !strings.HasPrefix(body, tt.body) {
			t.Errorf("GET %s %v: %d %q, want %d %q", tt.url, tt.header, status, body, tt.status, tt.body)
		}
	}

	// ?token= works for browsers, which cannot set headers on WebSockets.
	conn, _, err := websocket.Dial(t.Context(), b.url("*:products")+"&token="+token, nil)
	if err != nil {
		t.Fatalf("dial with ?token=: %v", err)
	}
	conn.CloseNow()

	off := httptest.NewServer(&Handler{Hub: NewHub(0)})
	defer off.Close()
	if status, body := get(off.URL+"/ws?query=*:products", bearer); status != 404 || !strings.Contains(body, "set STREAM_TOKEN") {
		t.Errorf("without STREAM_TOKEN: %d %q, want 404 saying how to turn it on", status, body)
	}
}

func TestSlowViewerIsDisconnectedAndNeverHoldsUpPublishing(t *testing.T) {
	t.Parallel()
	b := setup(t, 4)
	slow := b.dial("*:products")
	fast := b.dial("*:sales.orders")

	// The slow viewer reads nothing while events pour in, far more than its
	// buffer and the sockets hold. Publish must never wait for it.
	big := `{"pad": "` + strings.Repeat("x", 4096) + `"}`
	var sub *subscription
	b.hub.mu.RLock()
	for s := range b.hub.subs {
		if s.query.Table.Name == "products" {
			sub = s
		}
	}
	b.hub.mu.RUnlock()
	published := 0
	start := time.Now()
	for !sub.dropped.Load() {
		b.hub.Publish(settled(event{"public.products", "INSERT", fmt.Sprint(published), big, false}))
		published++
		if time.Since(start) > 10*time.Second {
			t.Fatalf("viewer not dropped after %d events", published)
		}
	}
	b.hub.Publish(settled(event{"sales.orders", "INSERT", "o1", `{}`, false}))

	// Once it reads again, it finds what was sent before the overflow, then
	// the close.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var err error
	frames := 0
	for err == nil {
		_, _, err = slow.Read(ctx)
		frames++
	}
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusTryAgainLater || ce.Reason != "too slow: fell more than 4 events behind; reconnect to resume from live events" {
		t.Fatalf("slow viewer's read ended with %v after %d frames; want close 1013 saying it was too slow", err, frames)
	}
	waitFor(t, "the slow viewer to be forgotten", func() bool { return b.hub.Viewers() == 1 })
	if got := read(t, fast, 1); got[0] != "INSERT o1 {}" {
		t.Errorf("the other viewer got %q", got)
	}
}

func TestShutdownClosesViewersWithGoingAway(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	conn := b.dial("*:products")
	b.hub.Close()
	_, _, err := conn.Read(t.Context())
	if websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("read after shutdown: %v, want close 1001", err)
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) && ce.Reason != "pg2kafka is shutting down" {
		t.Errorf("close reason %q", ce.Reason)
	}
	waitFor(t, "the viewer to be forgotten", func() bool { return b.hub.Viewers() == 0 })
	// New viewers are turned away.
	_, resp, err := websocket.Dial(t.Context(), b.url("*:products"), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after shutdown: %v %v, want 503", err, resp)
	}
}
