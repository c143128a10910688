package webhook_test

import (
	"context"
	"encoding/pem"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pg2kafka/pg2kafka/internal/syncbuf"
	"github.com/pg2kafka/pg2kafka/shipper/webhook"
)

// watch starts a sink's startup check, logging to the returned buffer.
func watch(t *testing.T, cfg webhook.Config) (*webhook.Sink, *syncbuf.Buffer) {
	t.Helper()
	sink, err := webhook.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	webhook.SetRecheckInterval(sink, 10*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var log syncbuf.Buffer
	sink.WatchStartup(ctx, slog.New(slog.NewTextHandler(&log, nil)))
	return sink, &log
}

// refusedAddr is an address where nothing listens, so that connecting to
// it is refused.
func refusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func awaitLog(t *testing.T, log *syncbuf.Buffer, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := true
		for _, w := range want {
			all = all && log.Contains(w)
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log does not say %q:\n%s", want, log)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStartupSaysTheEndpointIsReachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	sink, log := watch(t, webhook.Config{URL: srv.URL + "/hooks/{table}"})
	awaitLog(t, log, `msg="webhook endpoint reachable" webhook_address=`+addr)
	if sink.Address() != addr {
		t.Errorf("Address() = %q, want %q", sink.Address(), addr)
	}
	if err := sink.Reachable(t.Context()); err != nil {
		t.Errorf("Reachable: %v", err)
	}
}

// A wrong address is said at once, while no event waits, and once the
// endpoint comes up, that too.
func TestStartupWarnsOfAnUnreachableEndpointUntilItIsUp(t *testing.T) {
	t.Parallel()
	addr := refusedAddr(t)
	sink, log := watch(t, webhook.Config{URL: "http://" + addr + "/hooks"})
	awaitLog(t, log, `level=WARN msg="cannot reach the webhook endpoint yet; events stay queued, retrying" webhook_address=`+addr,
		"webhook: cannot connect to "+addr, "connection refused; is the endpoint up, and WEBHOOK_URL right?")
	if err := sink.Reachable(t.Context()); err == nil || !strings.Contains(err.Error(), "cannot connect to "+addr) {
		t.Errorf("Reachable while nothing listens: %v", err)
	}
	if strings.Contains(log.String(), "webhook endpoint reachable") {
		t.Fatalf("said reachable while nothing listens:\n%s", log)
	}

	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the port was taken meanwhile: %v", err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	awaitLog(t, log, `msg="webhook endpoint reachable" webhook_address=`+addr)
}

// Over https the check is a verified handshake, as requests are: a
// certificate of a CA not trusted is named, with the fix.
func TestStartupVerifiesTheEndpointsCertificate(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()

	_, log := watch(t, webhook.Config{URL: srv.URL + "/hooks"})
	awaitLog(t, log, "cannot reach the webhook endpoint yet", "its certificate is not one pg2kafka trusts: set WEBHOOK_CA_FILE to the CA that signs it")

	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	_, log = watch(t, webhook.Config{URL: srv.URL + "/hooks", CAFile: ca})
	awaitLog(t, log, `msg="webhook endpoint reachable" webhook_address=`+addr)
}

// A host that depends on the event cannot be checked before one is sent.
func TestStartupLeavesAnEventsHostToTheFirstSend(t *testing.T) {
	t.Parallel()
	sink, log := watch(t, webhook.Config{URL: "https://{table}.hooks.example.com/in"})
	awaitLog(t, log, "the webhook endpoint's host depends on each event's table; the first send checks it")
	if sink.Address() != "" {
		t.Errorf("Address() = %q, want none", sink.Address())
	}
	if err := sink.Reachable(t.Context()); err != nil {
		t.Errorf("Reachable: %v, want nil: nothing to check", err)
	}
}
