// Package webhook is the shipper's HTTP destination: each event POSTed to an
// endpoint as the JSON Kafka would carry, signed the Standard Webhooks way,
// deleted from the queue once the endpoint answered 2xx.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pg2kafka/pg2kafka/shipper"
)

var _ shipper.Sink = (*Sink)(nil)

// Sink POSTs messages to a webhook endpoint. Every request carries, besides
// the configured headers:
//
//	Content-Type: application/json
//	pg2kafka-event-id, pg2kafka-statement, pg2kafka-table   (comma-separated lists for an array)
//	webhook-id: the event's uuid, the same on every retry   (for an array, one derived from its events' uuids)
//	webhook-timestamp: Unix seconds of this attempt
//	webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">   (with a Secret)
//
// Answers: 2xx acknowledges. 400, 413 and 422 refuse the event: a request of
// several events is halved until the refused one is alone, and that one
// fails with a *shipper.RejectedError. Any other answer (408, 429, 5xx, 401,
// 403, 404, 405, redirects) fails the events with a
// *shipper.UnavailableError around an *Error, carrying the endpoint's
// Retry-After: the shipper pauses that table, and the rest of the Send's
// events for the endpoint fail at once. No answer in time, or no
// connection, fails them with an *Error, retried with backoff.
//
// Order: the messages of one key to one endpoint are sent one request after
// the other, and once one fails the rest are not sent; other keys go in
// parallel, up to Concurrency requests per endpoint across all Sends.
type Sink struct {
	cfg    Config
	url    template
	key    []byte
	client *http.Client

	// endpoint and tls are what the reachability check dials, and how.
	endpoint endpoint
	tls      *tls.Config
	recheck  time.Duration // recheckAfter unless a test says otherwise

	mu    sync.Mutex
	slots map[string]chan struct{} // per endpoint, Concurrency of them
	// answeredAt is when the endpoint last answered a request; checkedAt
	// and checkErr when the reachability check last dialled it, and what
	// it found.
	answeredAt time.Time
	checkedAt  time.Time
	checkErr   error
}

// New returns a sink for cfg, which it validates; it reads CAFile.
func New(cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	tmpl, err := parseTemplate(cfg.URL)
	if err != nil {
		return nil, err
	}
	key, err := signingKey(cfg.Secret)
	if err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("WEBHOOK_CA_FILE=%q: cannot read the file: %w", cfg.CAFile, err)
		}
		tlsCfg.RootCAs = x509.NewCertPool()
		if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("WEBHOOK_CA_FILE=%q: holds no PEM certificate; want the CA certificates that sign the endpoint's certificate, in PEM", cfg.CAFile)
		}
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsCfg
	// A TLS config of our own turns HTTP/2 off unless asked for again.
	transport.ForceAttemptHTTP2 = true
	// Every request in flight may leave its connection idle at once; closing
	// the extra ones would make the next batch dial them again.
	transport.MaxIdleConnsPerHost = max(cfg.Concurrency, 2)
	transport.MaxIdleConns = 0
	return &Sink{
		cfg: cfg,
		url: tmpl,
		key: key,
		client: &http.Client{
			Transport: transport,
			// A POST redirected becomes a GET, and a redirect is not an
			// acknowledgement: the answer is reported as it is.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		slots:    make(map[string]chan struct{}),
		endpoint: endpointOf(cfg.URL),
		// A copy of its own: the transport writes to the one it has.
		tls: tlsCfg.Clone(),
	}, nil
}

// Close implements shipper.Sink.
func (s *Sink) Close() { s.client.CloseIdleConnections() }

// Error is a request's failure that sending again may cure: the endpoint's
// answer or the lack of one. It never holds the configured headers.
type Error struct {
	// URL is the endpoint, its password hidden.
	URL string
	// Status is the HTTP status of the answer; 0 when there was none.
	Status int
	// RetryAfter is how long the endpoint asked to wait (Retry-After);
	// 0 when it did not say.
	RetryAfter time.Duration
	// Err says what went wrong, and how to fix it when pg2kafka can tell.
	Err error
}

func (e *Error) Error() string { return e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// maxRetryAfter bounds how long an endpoint's Retry-After can pause its
// events, in case it names a date far away.
const maxRetryAfter = time.Hour

// keyOf is a key's identity within one endpoint's order.
type keyOf struct {
	endpoint string
	key      string
}

// sendState is one Send's shared bookkeeping.
type sendState struct {
	ctx  context.Context
	msgs []shipper.Message
	errs []error

	mu sync.Mutex
	// failed holds the keys whose messages failed in this Send, with the
	// failure, so that later messages of theirs are held back.
	failed map[keyOf]error
	// down holds the endpoints that answered as unable to take events in
	// this Send: their batches not yet sent fail at once, as the contract
	// asks, rather than wait on an endpoint known to be failing.
	down map[string]error
	// attempts and firstFailed count the failed sends of each message, for
	// the RejectedError of one refused.
	attempts    []int
	firstFailed []time.Time
}

// batch is the messages of one request, by index, and the batches that wait
// for it because they share a key with it.
type batch struct {
	endpoint   string
	idx        []int
	pending    int // batches this one waits for
	dependents []*batch
}

// Send implements shipper.Sink.
func (s *Sink) Send(ctx context.Context, msgs []shipper.Message) []error {
	st := &sendState{
		ctx:         ctx,
		msgs:        msgs,
		errs:        make([]error, len(msgs)),
		failed:      make(map[keyOf]error),
		down:        make(map[string]error),
		attempts:    make([]int, len(msgs)),
		firstFailed: make([]time.Time, len(msgs)),
	}
	if len(msgs) == 0 {
		return st.errs
	}
	if err := ctx.Err(); err != nil {
		for i := range st.errs {
			st.errs[i] = fmt.Errorf("webhook: not sent: %w", err)
		}
		return st.errs
	}

	// Batches per endpoint, in queue order; a batch waits for the previous
	// batch holding each of its keys.
	byEndpoint := make(map[string][]*batch)
	var order []string
	open := make(map[string]*batch)
	last := make(map[keyOf]*batch)
	for i := range msgs {
		m := &msgs[i]
		schema, table := schemaTable(m)
		u := s.url.render(schema, table, m.Topic)
		b := open[u]
		if b == nil || len(b.idx) == s.cfg.BatchSize {
			b = &batch{endpoint: u}
			open[u] = b
			if byEndpoint[u] == nil {
				order = append(order, u)
			}
			byEndpoint[u] = append(byEndpoint[u], b)
		}
		b.idx = append(b.idx, i)
		if m.Key == nil {
			continue // no key, no order to keep, as Kafka's sticky partitioner
		}
		k := keyOf{u, string(m.Key)}
		if prev := last[k]; prev != nil && prev != b && !dependsOn(b, prev) {
			prev.dependents = append(prev.dependents, b)
			b.pending++
		}
		last[k] = b
	}

	var wg sync.WaitGroup
	for _, u := range order {
		batches := byEndpoint[u]
		ready := make(chan *batch, len(batches))
		for _, b := range batches {
			if b.pending == 0 {
				ready <- b
			}
		}
		left := len(batches)
		var mu sync.Mutex // guards left and the batches' pending counts
		done := func(b *batch) {
			mu.Lock()
			defer mu.Unlock()
			for _, d := range b.dependents {
				if d.pending--; d.pending == 0 {
					ready <- d
				}
			}
			if left--; left == 0 {
				close(ready)
			}
		}
		slots := s.endpointSlots(u)
		for range min(s.cfg.Concurrency, len(batches)) {
			wg.Go(func() {
				for b := range ready {
					s.deliver(st, slots, u, b.idx)
					done(b)
				}
			})
		}
	}
	wg.Wait()
	return st.errs
}

func dependsOn(b, prev *batch) bool {
	for _, d := range prev.dependents {
		if d == b {
			return true
		}
	}
	return false
}

// schemaTable returns the message's table from its pg2kafka-table header.
func schemaTable(m *shipper.Message) (schema, table string) {
	for _, h := range m.Headers {
		if h.Key == shipper.HeaderTable {
			schema, table, _ = strings.Cut(string(h.Value), ".")
			return schema, table
		}
	}
	return "", ""
}

func (s *Sink) endpointSlots(u string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.slots[u]
	if c == nil {
		c = make(chan struct{}, s.cfg.Concurrency)
		s.slots[u] = c
	}
	return c
}

// deliver sends the messages idx to endpoint u in one request, except those
// held back behind a failure of their key, and settles them. A refusal of
// several is narrowed down by halves.
func (s *Sink) deliver(st *sendState, slots chan struct{}, u string, idx []int) {
	idx = st.holdBack(u, idx)
	if len(idx) == 0 {
		return
	}
	st.mu.Lock()
	down := st.down[u]
	st.mu.Unlock()
	if down != nil {
		st.fail(u, idx, down)
		return
	}
	select {
	case slots <- struct{}{}:
	case <-st.ctx.Done():
		st.fail(u, idx, fmt.Errorf("webhook: not sent before the batch's time ran out: %w", st.ctx.Err()))
		return
	}
	err := s.post(st.ctx, u, st.msgs, idx)
	<-slots
	if err == nil {
		return // acknowledged: errs stay nil
	}
	now := time.Now()
	st.mu.Lock()
	for _, i := range idx {
		st.attempts[i]++
		if st.firstFailed[i].IsZero() {
			st.firstFailed[i] = now
		}
	}
	st.mu.Unlock()
	var refused *refusedError
	if !errors.As(err, &refused) {
		if _, ok := errors.AsType[*shipper.UnavailableError](err); ok {
			st.mu.Lock()
			if st.down[u] == nil {
				st.down[u] = err
			}
			st.mu.Unlock()
		}
		st.fail(u, idx, err)
		return
	}
	if len(idx) == 1 {
		i := idx[0]
		st.mu.Lock()
		st.errs[i] = &shipper.RejectedError{Err: err, Attempts: st.attempts[i], FirstFailedAt: st.firstFailed[i], LastFailedAt: now}
		st.mu.Unlock()
		return
	}
	// The request was refused, not necessarily each of its events: halve it
	// until each refused event is alone. The halves go in order, so a key
	// whose event fails in the first holds back its events in the second.
	mid := len(idx) / 2
	s.deliver(st, slots, u, idx[:mid])
	s.deliver(st, slots, u, idx[mid:])
}

// holdBack fails the messages of idx whose key failed earlier in this Send
// and returns the others.
func (st *sendState) holdBack(u string, idx []int) []int {
	st.mu.Lock()
	defer st.mu.Unlock()
	keep := idx[:0:0]
	for _, i := range idx {
		m := &st.msgs[i]
		if m.Key != nil {
			if err := st.failed[keyOf{u, string(m.Key)}]; err != nil {
				st.errs[i] = fmt.Errorf("webhook: not sent, to keep its key's order: an earlier event of key %q failed: %w", m.Key, err)
				continue
			}
		}
		keep = append(keep, i)
	}
	return keep
}

// fail fails the messages idx with err and holds back the rest of their keys.
func (st *sendState) fail(u string, idx []int, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, i := range idx {
		st.errs[i] = err
		if k := st.msgs[i].Key; k != nil {
			if _, ok := st.failed[keyOf{u, string(k)}]; !ok {
				st.failed[keyOf{u, string(k)}] = err
			}
		}
	}
}

// refusedError is an answer refusing the request's events for what they
// are.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return e.msg }

// post sends msgs[idx] in one request and returns nil once the endpoint
// acknowledged it, a *refusedError if it refused it, or an *Error.
func (s *Sink) post(parent context.Context, u string, msgs []shipper.Message, idx []int) error {
	shown := redact(u)
	body := s.body(msgs, idx)
	ctx, cancel := context.WithTimeout(parent, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return &Error{URL: shown, Err: fmt.Errorf("webhook: POST %s: %w", shown, err)}
	}
	for name, values := range s.cfg.Headers {
		req.Header[name] = values
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "pg2kafka")
	s.setEventHeaders(req.Header, msgs, idx, body)

	resp, err := s.client.Do(req)
	if err != nil {
		// The *url.Error names the URL as given, password and all.
		if uerr, ok := errors.AsType[*url.Error](err); ok {
			err = uerr.Err
		}
		switch {
		case parent.Err() != nil:
			err = fmt.Errorf("webhook: POST %s: no answer before the batch's time ran out: %w", shown, parent.Err())
		case ctx.Err() != nil:
			err = fmt.Errorf("webhook: POST %s: no answer within WEBHOOK_TIMEOUT (%v): %w", shown, s.cfg.Timeout, err)
		default:
			err = fmt.Errorf("webhook: POST %s: %w; is the endpoint up and reachable?", shown, err)
		}
		return &Error{URL: shown, Err: err}
	}
	defer resp.Body.Close()
	s.noteAnswered()
	snippet := make([]byte, 256)
	n, _ := io.ReadFull(resp.Body, snippet)
	snippet = bytes.TrimSpace(snippet[:n])
	// Reading the rest lets the connection carry the next request.
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)

	status := resp.Status
	if len(snippet) > 0 {
		status += ": " + strconv.QuoteToASCII(string(snippet))
	}
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return nil
	case c == http.StatusBadRequest || c == http.StatusRequestEntityTooLarge || c == http.StatusUnprocessableEntity:
		return &refusedError{fmt.Sprintf("webhook: %s refused the event: %s", shown, status)}
	case c == http.StatusUnauthorized || c == http.StatusForbidden:
		return unavailable(&Error{URL: shown, Status: c, Err: fmt.Errorf("webhook: %s refused pg2kafka's credentials: %s; check the Authorization in WEBHOOK_HEADERS", shown, status)})
	case c == http.StatusNotFound || c == http.StatusMethodNotAllowed:
		return unavailable(&Error{URL: shown, Status: c, Err: fmt.Errorf("webhook: %s is not an endpoint accepting POST: %s; check WEBHOOK_URL", shown, status)})
	case c >= 300 && c < 400:
		return unavailable(&Error{URL: shown, Status: c, Err: fmt.Errorf("webhook: %s redirects to %q (%s); set WEBHOOK_URL to where it redirects", shown, redact(resp.Header.Get("Location")), resp.Status)})
	default:
		retryAfter := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		msg := fmt.Sprintf("webhook: %s answered %s", shown, status)
		if retryAfter > 0 {
			msg += fmt.Sprintf(" (retry after %v)", retryAfter)
		}
		return unavailable(&Error{URL: shown, Status: c, RetryAfter: retryAfter, Err: errors.New(msg)})
	}
}

// unavailable wraps the answer of an endpoint that cannot take events now
// (5xx, 429, wrong credentials or address) so that the shipper pauses the
// endpoint's table alone, for the endpoint's Retry-After if it gave one.
func unavailable(e *Error) error {
	return &shipper.UnavailableError{Target: e.URL, Err: e, RetryAfter: e.RetryAfter}
}

// parseRetryAfter reads a Retry-After header: seconds, or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		d = time.Duration(max(n, 0)) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// body is the request body: the event itself, or with a BatchSize above 1 a
// JSON array of the events.
func (s *Sink) body(msgs []shipper.Message, idx []int) []byte {
	if s.cfg.BatchSize == 1 {
		return msgs[idx[0]].Value
	}
	n := 1 + len(idx)
	for _, i := range idx {
		n += len(msgs[i].Value)
	}
	b := make([]byte, 0, n)
	b = append(b, '[')
	for k, i := range idx {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, msgs[i].Value...)
	}
	return append(b, ']')
}

// setEventHeaders sets the pg2kafka and Standard Webhooks headers.
func (s *Sink) setEventHeaders(h http.Header, msgs []shipper.Message, idx []int, body []byte) {
	for _, name := range []string{shipper.HeaderEventID, shipper.HeaderStatement, shipper.HeaderTable} {
		var b strings.Builder
		for k, i := range idx {
			if k > 0 {
				b.WriteByte(',')
			}
			b.Write(header(&msgs[i], name))
		}
		h[name] = []string{b.String()}
	}
	id := string(header(&msgs[idx[0]], shipper.HeaderEventID))
	if s.cfg.BatchSize > 1 {
		// An array's id is its events': the same array sent again has the
		// same id, and another array another.
		sum := sha256.New()
		for _, i := range idx {
			sum.Write(header(&msgs[i], shipper.HeaderEventID))
			sum.Write([]byte{','})
		}
		id = "batch_" + hex.EncodeToString(sum.Sum(nil)[:16])
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	h["webhook-id"] = []string{id}
	h["webhook-timestamp"] = []string{ts}
	if s.key != nil {
		h["webhook-signature"] = []string{Sign(s.key, id, ts, body)}
	}
}

func header(m *shipper.Message, name string) []byte {
	for _, h := range m.Headers {
		if h.Key == name {
			return h.Value
		}
	}
	return nil
}

// Sign returns the Standard Webhooks signature of a request,
// "v1,<base64 HMAC-SHA256 of id.timestamp.body>", with the key a secret
// stands for.
func Sign(key []byte, id, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id))
	mac.Write([]byte{'.'})
	mac.Write([]byte(timestamp))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// SigningKey returns the HMAC key of a WEBHOOK_SECRET, as Sign takes it.
func SigningKey(secret string) ([]byte, error) { return signingKey(secret) }
