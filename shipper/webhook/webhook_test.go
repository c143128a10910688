package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/sinktest"
	"github.com/pg2kafka/pg2kafka/shipper/webhook"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// request is one request as the receiver got it.
type request struct {
	Path   string
	Proto  int
	Header http.Header
	Body   []byte
}

// receiver is a real HTTP endpoint that records what it is sent, and can be
// made to fail, refuse or stall, as sinktest asks.
type receiver struct {
	srv   *httptest.Server
	batch bool // bodies are arrays

	mu       sync.Mutex
	requests []request // answered 2xx, in arrival order
	all      []request // every request, whatever the answer
	answer   func(r *request) int
	failing  bool
	failKey  map[string]int
	refuse   map[string]bool
	stalls   map[string]chan struct{}
	conns    atomic.Int64
}

func newReceiver(t testing.TB, batch bool) *receiver {
	r := &receiver{batch: batch, failKey: map[string]int{}, refuse: map[string]bool{}, stalls: map[string]chan struct{}{}}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			r.conns.Add(1)
		}
	}
	r.srv.Start()
	t.Cleanup(r.srv.Close)
	return r
}

// events splits a body into its events and their external IDs.
func (r *receiver) events(t testing.TB, body []byte) (values [][]byte, keys [][]byte) {
	values = [][]byte{body}
	if r.batch {
		var raw []json.RawMessage
		if err := json.Unmarshal(body, &raw); err != nil {
			t.Errorf("body is not a JSON array: %v: %s", err, body)
			return nil, nil
		}
		values = values[:0]
		for _, v := range raw {
			values = append(values, v)
		}
	}
	for _, v := range values {
		var e struct {
			ExternalID *string `json:"external_id"`
		}
		if err := json.Unmarshal(v, &e); err != nil {
			t.Errorf("event is not JSON: %v: %s", err, v)
		}
		var k []byte
		if e.ExternalID != nil {
			k = []byte(*e.ExternalID)
		}
		keys = append(keys, k)
	}
	return values, keys
}

func (r *receiver) serve(w http.ResponseWriter, hr *http.Request) {
	body, err := io.ReadAll(hr.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	req := request{Path: hr.URL.Path, Proto: hr.ProtoMajor, Header: hr.Header.Clone(), Body: body}
	values, keys := r.events(testingT{}, body)

	r.mu.Lock()
	r.all = append(r.all, req)
	var stall chan struct{}
	for _, k := range keys {
		if c := r.stalls[string(k)]; c != nil && k != nil {
			stall = c
		}
	}
	r.mu.Unlock()
	if stall != nil {
		select {
		case <-stall:
		case <-hr.Context().Done():
			return // the client gave up: nothing kept
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	status := http.StatusNoContent
	if r.answer != nil {
		status = r.answer(&req)
	}
	for i, k := range keys {
		if r.refuse[string(values[i])] {
			status = http.StatusUnprocessableEntity
		}
		if n := r.failKey[string(k)]; n > 0 && k != nil && status < 300 {
			r.failKey[string(k)] = n - 1
			status = http.StatusServiceUnavailable
		}
	}
	if r.failing {
		status = http.StatusServiceUnavailable
	}
	if status < 300 {
		r.requests = append(r.requests, req)
	}
	w.WriteHeader(status)
	if status >= 300 {
		io.WriteString(w, "not today")
	}
}

// testingT swallows the receiver's complaints about a body; the suite's
// checks of what was received report them.
type testingT struct{ testing.TB }

func (testingT) Errorf(string, ...any) {}

func (r *receiver) Received(t testing.TB) []sinktest.Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	var got []sinktest.Delivery
	for _, req := range r.requests {
		values, keys := r.events(t, req.Body)
		for i := range values {
			got = append(got, sinktest.Delivery{Key: keys[i], Value: values[i]})
		}
	}
	return got
}

func (r *receiver) Fail(testing.TB) func() {
	r.mu.Lock()
	r.failing = true
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		r.failing = false
		r.mu.Unlock()
	}
}

func (r *receiver) FailKey(_ testing.TB, key []byte, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failKey[string(key)] = n
}

func (r *receiver) Refuse(_ testing.TB, m *shipper.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refuse[string(m.Value)] = true
}

func (r *receiver) Stall(_ testing.TB, key []byte) func() {
	c := make(chan struct{})
	r.mu.Lock()
	r.stalls[string(key)] = c
	r.mu.Unlock()
	return sync.OnceFunc(func() {
		r.mu.Lock()
		delete(r.stalls, string(key))
		r.mu.Unlock()
		close(c)
	})
}

func (r *receiver) answered() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]request(nil), r.requests...)
}

func newSink(t testing.TB, cfg webhook.Config) *webhook.Sink {
	t.Helper()
	s, err := webhook.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	for _, batch := range []int{1, 7} {
		t.Run("batch"+strconv.Itoa(batch), func(t *testing.T) {
			t.Parallel()
			sinktest.Run(t, func(t *testing.T) (shipper.Sink, sinktest.Receiver) {
				r := newReceiver(t, batch > 1)
				s, err := webhook.New(webhook.Config{URL: r.srv.URL + "/{table}", BatchSize: batch, Concurrency: 4})
				if err != nil {
					t.Fatal(err)
				}
				return s, r
			})
		})
	}
}

// The signature of the Standard Webhooks specification's own example.
func TestSignMatchesTheSpecificationsExample(t *testing.T) {
	t.Parallel()
	key, err := webhook.SigningKey("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := webhook.Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Errorf("Sign = %s; want %s", got, want)
	}
	raw, err := webhook.SigningKey("plain text secret")
	if err != nil || string(raw) != "plain text secret" {
		t.Errorf("a secret without whsec_ is its own key; got %q, %v", raw, err)
	}
}

func TestRequestsCarryTheEventAndItsHeaders(t *testing.T) {
	t.Parallel()
	r := newReceiver(t, false)
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	headers, err := webhook.ParseHeaders("Authorization: Bearer s3cret-token\nX-Tenant: shop")
	if err != nil {
		t.Fatal(err)
	}
	s := newSink(t, webhook.Config{URL: r.srv.URL + "/hooks/{schema}/{table}?topic={topic}", Headers: headers, Secret: secret})
	msgs := sinktest.Messages("products", 3, []byte("CM01-R"))
	before := time.Now().Unix()
	for i, err := range s.Send(context.Background(), msgs) {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	got := r.answered()
	if len(got) != 3 {
		t.Fatalf("receiver got %d requests; want 3, one per event", len(got))
	}
	key, _ := webhook.SigningKey(secret)
	for i, req := range got {
		m := msgs[i]
		if !bytes.Equal(req.Body, m.Value) {
			t.Errorf("request %d body %s; want the event exactly: %s", i, req.Body, m.Value)
		}
		if req.Path != "/hooks/suite/products" {
			t.Errorf("request %d path %q; want /hooks/suite/products", i, req.Path)
		}
		h := req.Header
		want := map[string]string{
			"Content-Type":       "application/json",
			"Authorization":      "Bearer s3cret-token",
			"X-Tenant":           "shop",
			"Pg2kafka-Event-Id":  string(m.Headers[0].Value),
			"Pg2kafka-Statement": "INSERT",
			"Pg2kafka-Table":     "suite.products",
			"Webhook-Id":         string(m.Headers[0].Value),
		}
		for name, v := range want {
			if h.Get(name) != v {
				t.Errorf("request %d header %s = %q; want %q", i, name, h.Get(name), v)
			}
		}
		ts, err := strconv.ParseInt(h.Get("Webhook-Timestamp"), 10, 64)
		if err != nil || ts < before || ts > time.Now().Unix() {
			t.Errorf("request %d webhook-timestamp %q; want the Unix seconds of the attempt", i, h.Get("Webhook-Timestamp"))
		}
		if sig := webhook.Sign(key, h.Get("Webhook-Id"), h.Get("Webhook-Timestamp"), req.Body); h.Get("Webhook-Signature") != sig {
			t.Errorf("request %d webhook-signature %q; want %q", i, h.Get("Webhook-Signature"), sig)
		}
	}
	if got[0].Header.Get("Webhook-Id") == got[1].Header.Get("Webhook-Id") {
		t.Error("two events share a webhook-id")
	}
}

func TestRetryKeepsTheWebhookID(t *testing.T) {
	t.Parallel()
	r := newReceiver(t, false)
	s := newSink(t, webhook.Config{URL: r.srv.URL})
	msgs := sinktest.Messages("retry", 1)
	restore := r.Fail(t)
	if err := s.Send(context.Background(), msgs)[0]; err == nil {
		t.Fatal("acknowledged while the endpoint answered 503")
	}
	restore()
	if err := s.Send(context.Background(), msgs)[0]; err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.all) != 2 || r.all[0].Header.Get("Webhook-Id") != r.all[1].Header.Get("Webhook-Id") || r.all[0].Header.Get("Webhook-Id") == "" {
		t.Errorf("webhook-ids of the attempt and its retry: %q, %q; want the same, so receivers can deduplicate",
			r.all[0].Header.Get("Webhook-Id"), r.all[len(r.all)-1].Header.Get("Webhook-Id"))
	}
}

// With a batch size, each endpoint gets arrays of its own events, in queue
// order.
func TestBatchesAreArraysPerEndpointInQueueOrder(t *testing.T) {
	t.Parallel()
	r := newReceiver(t, true)
	s := newSink(t, webhook.Config{URL: r.srv.URL + "/{table}", BatchSize: 4, Concurrency: 1})
	a := sinktest.Messages("a", 6, []byte("1"), []byte("2"))
	b := sinktest.Messages("b", 3, []byte("1"))
	msgs := []shipper.Message{a[0], b[0], a[1], a[2], b[1], a[3], a[4], b[2], a[5]}
	for i, err := range s.Send(context.Background(), msgs) {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	join := func(ms ...shipper.Message) string {
		var parts []string
		for _, m := range ms {
			parts = append(parts, string(m.Value))
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	want := map[string][]string{
		"/a": {join(a[0], a[1], a[2], a[3]), join(a[4], a[5])},
		"/b": {join(b[0], b[1], b[2])},
	}
	got := map[string][]string{}
	for _, req := range r.answered() {
		got[req.Path] = append(got[req.Path], string(req.Body))
		if id := req.Header.Get("Webhook-Id"); !strings.HasPrefix(id, "batch_") {
			t.Errorf("array's webhook-id %q; want batch_…", id)
		}
	}
	for path, bodies := range want {
		if strings.Join(got[path], "\n") != strings.Join(bodies, "\n") {
			t.Errorf("%s got\n%s\nwant\n%s", path, strings.Join(got[path], "\n"), strings.Join(bodies, "\n"))
		}
	}
}

// Each answer's outcome: acknowledged, refused for good (dead letter), or
// failed to be retried, with the endpoint's Retry-After.
func TestOutcomes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		status     int
		retryAfter string
		want       string // "ack", "rejected" or "retry"
		wantAfter  time.Duration
		mention    string
	}{
		{200, "", "ack", 0, ""},
		{202, "", "ack", 0, ""},
		{204, "", "ack", 0, ""},
		{400, "", "rejected", 0, "400 Bad Request"},
		{413, "", "rejected", 0, "413"},
		{422, "", "rejected", 0, "422"},
		{408, "", "retry", 0, "408"},
		{429, "7", "retry", 7 * time.Second, "429"},
		{500, "", "retry", 0, "500"},
		{502, "", "retry", 0, "502"},
		{503, "date", "retry", 90 * time.Second, "503"},
		{401, "", "retry", 0, "WEBHOOK_HEADERS"},
		{403, "", "retry", 0, "WEBHOOK_HEADERS"},
		{404, "", "retry", 0, "WEBHOOK_URL"},
		{405, "", "retry", 0, "WEBHOOK_URL"},
		{308, "", "retry", 0, "redirects"},
		{409, "", "retry", 0, "409"},
	}
	for _, c := range cases {
		t.Run(strconv.Itoa(c.status), func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				switch c.retryAfter {
				case "":
				case "date":
					w.Header().Set("Retry-After", time.Now().Add(90*time.Second).UTC().Format(http.TimeFormat))
				default:
					w.Header().Set("Retry-After", c.retryAfter)
				}
				if c.status == 308 {
					w.Header().Set("Location", "https://elsewhere.example/hook")
				}
				w.WriteHeader(c.status)
			}))
			t.Cleanup(srv.Close)
			s := newSink(t, webhook.Config{URL: srv.URL})
			err := s.Send(context.Background(), sinktest.Messages("outcome", 1))[0]
			rej, isRejected := errors.AsType[*shipper.RejectedError](err)
			werr, isRetry := errors.AsType[*webhook.Error](err)
			unavailable, isUnavailable := errors.AsType[*shipper.UnavailableError](err)
			switch {
			case c.want == "ack" && err != nil:
				t.Fatalf("%v; want acknowledged", err)
			case c.want == "rejected" && !isRejected:
				t.Fatalf("%v; want a *shipper.RejectedError (dead letter)", err)
			case c.want == "rejected" && rej.Attempts != 1:
				t.Errorf("attempts %d; want 1", rej.Attempts)
			case c.want == "retry" && (!isRetry || isRejected):
				t.Fatalf("%v (%T); want a *webhook.Error, retried and never dead-lettered", err, err)
			case c.want == "retry" && (werr.Status != c.status || werr.RetryAfter < c.wantAfter-2*time.Second || werr.RetryAfter > c.wantAfter):
				t.Errorf("status %d, retry after %v; want %d, %v", werr.Status, werr.RetryAfter, c.status, c.wantAfter)
			case c.want == "retry" && (!isUnavailable || unavailable.RetryAfter != werr.RetryAfter || unavailable.Target != srv.URL):
				t.Errorf("%v; want a *shipper.UnavailableError for %s, so that the table pauses, with the endpoint's Retry-After", err, srv.URL)
			}
			if err != nil && !strings.Contains(err.Error(), c.mention) {
				t.Errorf("error %q does not mention %q", err, c.mention)
			}
		})
	}
}

// In an array refused with 422, only the event the receiver refuses is
// dead-lettered: the array is halved until it stands alone.
func TestRefusedArrayNarrowedToTheEvent(t *testing.T) {
	t.Parallel()
	r := newReceiver(t, true)
	s := newSink(t, webhook.Config{URL: r.srv.URL, BatchSize: 8})
	msgs := sinktest.Messages("narrow", 8, []byte("a"), []byte("b"))
	r.Refuse(t, &msgs[5])
	errs := s.Send(context.Background(), msgs)
	for i, err := range errs {
		_, rejected := errors.AsType[*shipper.RejectedError](err)
		switch {
		case i == 5 && !rejected:
			t.Errorf("message 5: %v; want it refused", err)
		case i != 5 && err != nil:
			t.Errorf("message %d: %v; want it acknowledged", i, err)
		}
	}
	if got := len(r.Received(t)); got != 7 {
		t.Errorf("received %d events; want the 7 not refused", got)
	}
}

func TestHTTPSVerifiedWithCAFileOverHTTP2(t *testing.T) {
	t.Parallel()
	var proto atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proto.Store(int64(r.ProtoMajor))
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)

	// Without the CA the certificate is refused: there is no way to skip
	// verification.
	s := newSink(t, webhook.Config{URL: srv.URL})
	err := s.Send(context.Background(), sinktest.Messages("tls", 1))[0]
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("%v; want the unknown certificate authority refused", err)
	}

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	s = newSink(t, webhook.Config{URL: srv.URL, CAFile: caFile})
	if err := s.Send(context.Background(), sinktest.Messages("tls", 1))[0]; err != nil {
		t.Fatal(err)
	}
	if proto.Load() != 2 {
		t.Errorf("request over HTTP/%d; want HTTP/2, which the server offers", proto.Load())
	}
}

func TestConnectionsReused(t *testing.T) {
	t.Parallel()
	r := newReceiver(t, false)
	s := newSink(t, webhook.Config{URL: r.srv.URL, Concurrency: 4})
	for range 5 {
		for i, err := range s.Send(context.Background(), sinktest.Messages("reuse", 40, []byte("a"), []byte("b"), []byte("c"), []byte("d"))) {
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
		}
	}
	// A request may start just before another's connection is back in the
	// pool, and dial; but not one connection a request.
	if n := r.conns.Load(); n > 8 {
		t.Errorf("%d connections for 200 requests at concurrency 4; want them kept alive and reused", n)
	}
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	r := newReceiver(t, false)
	s := newSink(t, webhook.Config{URL: r.srv.URL, Timeout: 100 * time.Millisecond})
	release := r.Stall(t, []byte("k"))
	defer release()
	err := s.Send(context.Background(), sinktest.Messages("timeout", 1))[0]
	if _, ok := errors.AsType[*webhook.Error](err); !ok || !strings.Contains(err.Error(), "WEBHOOK_TIMEOUT (100ms)") {
		t.Fatalf("%v; want a retried *webhook.Error naming WEBHOOK_TIMEOUT", err)
	}
}

func TestSecretsNeverInErrors(t *testing.T) {
	t.Parallel()
	addr := refusedAddr(t)
	headers, _ := webhook.ParseHeaders("Authorization: Bearer top-secret-token")
	s := newSink(t, webhook.Config{URL: "http://user:hunter2@" + addr + "/hook", Headers: headers, Secret: "signing-secret"})
	err := s.Send(context.Background(), sinktest.Messages("secret", 1))[0]
	if err == nil {
		t.Fatal("acknowledged by nothing")
	}
	for _, secret := range []string{"hunter2", "top-secret-token", "signing-secret"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q shows a secret", err)
		}
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q does not name the endpoint", err)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		cfg  webhook.Config
		want string
	}{
		{webhook.Config{}, "WEBHOOK_URL is not set"},
		{webhook.Config{URL: "ftp://x/y"}, "not an http:// or https:// URL"},
		{webhook.Config{URL: "https://x/{tabel}"}, "unknown placeholder {tabel}"},
		{webhook.Config{URL: "https://x/{table"}, "a { without its }"},
		{webhook.Config{URL: "https://u:pw@/x"}, `WEBHOOK_URL="https://u:xxxxx@/x"`},
		{webhook.Config{URL: "https://x", BatchSize: 5000}, "WEBHOOK_BATCH_SIZE=5000: must be a whole number from 1 to 1000"},
		{webhook.Config{URL: "https://x", Concurrency: 5000}, "WEBHOOK_CONCURRENCY=5000"},
		{webhook.Config{URL: "https://x", Secret: "whsec_!!!"}, "not base64"},
		{webhook.Config{URL: "https://x", Headers: http.Header{"Webhook-Id": {"x"}}}, "WEBHOOK_HEADERS sets Webhook-Id"},
		{webhook.Config{URL: "https://x", CAFile: "/nonexistent/ca.pem"}, `WEBHOOK_CA_FILE="/nonexistent/ca.pem": cannot read the file`},
	}
	for _, c := range cases {
		_, err := webhook.New(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v; want an error containing %q", c.cfg, err, c.want)
		}
	}
	if err := (webhook.Config{URL: "https://example.com/{schema}/{table}/{topic}"}).Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
	if _, err := webhook.ParseHeaders("Authorization Bearer secret"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("malformed header line: %v; want an error that does not repeat it", err)
	}
}

// One key never has two requests in flight; different keys go in parallel,
// and a key whose request times out holds back only its own events.
func TestOneRequestInFlightPerKey(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	inFlight := map[string]int{}
	total, maxTotal := 0, 0
	var received []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var e struct {
			ExternalID string `json:"external_id"`
		}
		_ = json.Unmarshal(body, &e)
		mu.Lock()
		inFlight[e.ExternalID]++
		total++
		maxTotal = max(maxTotal, total)
		if inFlight[e.ExternalID] > 1 {
			t.Errorf("key %q has %d requests in flight", e.ExternalID, inFlight[e.ExternalID])
		}
		received = append(received, e.ExternalID)
		mu.Unlock()
		if e.ExternalID == "bad" {
			<-r.Context().Done() // no answer: the request times out
		} else {
			time.Sleep(2 * time.Millisecond) // the receiver's work
		}
		mu.Lock()
		inFlight[e.ExternalID]--
		total--
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	// Long enough for the other keys' requests on a loaded machine; the
	// failing key waits it out once.
	s := newSink(t, webhook.Config{URL: srv.URL, Concurrency: 8, Timeout: 2 * time.Second})
	msgs := sinktest.Messages("inflight", 100, []byte("a"), []byte("b"), []byte("c"), []byte("d"), []byte("bad"))
	errs := s.Send(context.Background(), msgs)
	for i, err := range errs {
		switch k := string(msgs[i].Key); {
		case k == "bad" && err == nil:
			t.Errorf("message %d of the failing key acknowledged", i)
		case k != "bad" && err != nil:
			t.Errorf("message %d of key %q: %v; only key bad fails", i, k, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if maxTotal < 2 {
		t.Errorf("at most %d request in flight; want different keys in parallel", maxTotal)
	}
	bad := 0
	for _, k := range received {
		if k == "bad" {
			bad++
		}
	}
	if bad != 1 {
		t.Errorf("the failing key was sent %d times; want once, its later events held back", bad)
	}
}

// An endpoint answering 503 is unusable for now: the Send's events for it
// that are not yet sent fail at once, without a request each, while another
// endpoint's go through.
func TestUnavailableEndpointFailsAtOnce(t *testing.T) {
	t.Parallel()
	var down, up atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/down" {
			down.Add(1)
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		up.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	s := newSink(t, webhook.Config{URL: srv.URL + "/{table}", Concurrency: 1})
	msgs := append(sinktest.Messages("down", 20, []byte("a"), []byte("b"), []byte("c"), []byte("d")), sinktest.Messages("up", 20, []byte("a"))...)
	errs := s.Send(context.Background(), msgs)
	for i, err := range errs {
		u, ok := errors.AsType[*shipper.UnavailableError](err)
		switch {
		case i < 20 && (!ok || u.Target != srv.URL+"/down" || u.RetryAfter != 5*time.Second):
			t.Errorf("message %d to the failing endpoint: %v; want a *shipper.UnavailableError for it, retry after 5s", i, err)
		case i >= 20 && err != nil:
			t.Errorf("message %d to the other endpoint: %v", i, err)
		}
	}
	if n := down.Load(); n != 1 {
		t.Errorf("the failing endpoint got %d requests; want 1, the rest failed at once", n)
	}
	if n := up.Load(); n != 20 {
		t.Errorf("the other endpoint got %d requests; want its 20", n)
	}
}
