package httpserver_test

import (
	"net/http"
	"strings"
	"testing"
)

// waitReady waits until /readyz answers status, and returns its checks.
func (b *bundle) waitReady(status int, what string) map[string]string {
	b.t.Helper()
	var checks map[string]string
	b.waitFor(what, func() bool {
		var got int
		got, checks = b.readyz()
		return got == status
	})
	return checks
}

func TestReadyzFollowsPostgresAndTheBroker(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Before pg2kafka has connected, it is alive but not ready.
	if status, body := b.get("/healthz"); status != http.StatusOK || !strings.Contains(body, "starting") {
		t.Errorf("/healthz while starting: %d %s", status, body)
	}
	if status, checks := b.readyz(); status != http.StatusServiceUnavailable || !strings.Contains(checks["postgres"], "not connected to Postgres yet") {
		t.Errorf("/readyz while starting: %d %v", status, checks)
	}

	b.run()
	checks := b.waitReady(http.StatusOK, "ready")
	if want := map[string]string{"postgres": "ok", "destination": "ok", "shipper": "ok"}; !equal(checks, want) {
		t.Errorf("ready checks %v, want %v", checks, want)
	}

	// Postgres unreachable: not ready, and the body says so; alive all the
	// same, since the loop keeps trying.
	b.proxy.cut()
	checks = b.waitReady(http.StatusServiceUnavailable, "not ready without Postgres")
	if checks["postgres"] == "ok" || checks["destination"] != "ok" {
		t.Errorf("without Postgres, checks %v; want postgres failing and the destination fine", checks)
	}
	if status, _ := b.get("/healthz"); status != http.StatusOK {
		t.Errorf("/healthz without Postgres: %d, want 200", status)
	}
	b.proxy.restore()
	b.waitReady(http.StatusOK, "ready again once Postgres is back")

	// The broker stopped, then started again on its port.
	b.cluster.Close()
	checks = b.waitReady(http.StatusServiceUnavailable, "not ready without the broker")
	if !strings.HasPrefix(checks["destination"], "no Kafka broker answers: ") || checks["postgres"] != "ok" {
		t.Errorf("without the broker, checks %v; want the destination failing and Postgres fine", checks)
	}
	b.startKafka(b.port)
	b.waitReady(http.StatusOK, "ready again once the broker is back")
}

func equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
