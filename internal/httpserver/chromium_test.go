package httpserver_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// chromiumPath is Debian's chromium, which script/test installs.
const chromiumPath = "/usr/bin/chromium"

// page is a tab of a headless Chromium, driven over the DevTools protocol.
type page struct {
	t    *testing.T
	conn *websocket.Conn
	id   atomic.Int64
}

// removeProfile removes a Chromium profile directory, trying again while a
// process of the killed group that has not yet exited still adds to it.
func removeProfile(t *testing.T, dir string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := os.RemoveAll(dir)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("remove the Chromium profile %s: %v", dir, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// openChromium starts a headless Chromium for the test and returns its
// first tab.
func openChromium(t *testing.T) *page {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("headless Chromium is not installed at %s (script/test installs it: apt-get install chromium): %v", chromiumPath, err)
	}
	// Not t.TempDir: Chromium's helper processes may still be writing to
	// the profile when the test ends, so it is removed once they are gone.
	dir, err := os.MkdirTemp("", "pg2kafka-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(chromiumPath, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-dev-shm-usage", "--remote-debugging-port=0", "--user-data-dir="+dir,
		"--window-size=1280,900", "about:blank")
	// Its own process group, so that its renderer and utility processes
	// end with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		removeProfile(t, dir)
	})
	// Chromium writes the port it chose to DevToolsActivePort.
	var port string
	deadline := time.Now().Add(30 * time.Second)
	for port == "" {
		if f, err := os.Open(filepath.Join(dir, "DevToolsActivePort")); err == nil {
			s := bufio.NewScanner(f)
			if s.Scan() {
				port = strings.TrimSpace(s.Text())
			}
			f.Close()
		}
		if time.Now().After(deadline) {
			t.Fatal("chromium did not open its DevTools port within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get("http://127.0.0.1:" + port + "/json/list")
	if err != nil {
		t.Fatal(err)
	}
	var targets []struct {
		Type string `json:"type"`
		URL  string `json:"webSocketDebuggerUrl"`
	}
	err = json.NewDecoder(resp.Body).Decode(&targets)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range targets {
		if target.Type == "page" {
			conn, _, err := websocket.Dial(t.Context(), target.URL, nil)
			if err != nil {
				t.Fatal(err)
			}
			conn.SetReadLimit(64 << 20) // screenshots
			t.Cleanup(func() { conn.CloseNow() })
			return &page{t: t, conn: conn}
		}
	}
	t.Fatalf("chromium lists no page: %+v", targets)
	return nil
}

// call sends a DevTools command and returns its result, skipping the
// events that arrive meanwhile.
func (p *page) call(method string, params any) json.RawMessage {
	p.t.Helper()
	id := p.id.Add(1)
	msg, _ := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.conn.Write(ctx, websocket.MessageText, msg); err != nil {
		p.t.Fatalf("%s: %v", method, err)
	}
	for {
		_, data, err := p.conn.Read(ctx)
		if err != nil {
			p.t.Fatalf("%s: %v", method, err)
		}
		var r struct {
			ID     int64           `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(data, &r) != nil || r.ID != id {
			continue
		}
		if r.Error != nil {
			p.t.Fatalf("%s: %s", method, r.Error.Message)
		}
		return r.Result
	}
}

func (p *page) navigate(url string) {
	p.t.Helper()
	p.call("Page.navigate", map[string]any{"url": url})
	p.waitFor("the page to load", `document.readyState === "complete" && location.href === `+quote(url))
}

// eval evaluates a JavaScript expression in the page and returns its
// value, as JSON.
func (p *page) eval(expr string) string {
	p.t.Helper()
	res := p.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true})
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		p.t.Fatal(err)
	}
	if r.Exception != nil {
		p.t.Fatalf("%s: %s", expr, r.Exception.Text)
	}
	return string(r.Result.Value)
}

// waitFor waits until the expression is true in the page.
func (p *page) waitFor(what, expr string) {
	p.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for p.eval("!!("+expr+")") != "true" {
		if time.Now().After(deadline) {
			p.t.Fatalf("timed out waiting for %s (%s)\npage: %s", what, expr, p.eval("document.body.innerText"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// screenshot saves the page as a PNG, in $PG2KAFKA_SCREENSHOTS when set
// (to look at), and in the test's temporary directory otherwise.
func (p *page) screenshot(name string) string {
	p.t.Helper()
	res := p.call("Page.captureScreenshot", map[string]any{"format": "png"})
	var r struct {
		Data string `json:"data"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		p.t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil || len(png) < 1000 {
		p.t.Fatalf("screenshot: %d bytes, %v", len(png), err)
	}
	dir := os.Getenv("PG2KAFKA_SCREENSHOTS")
	if dir == "" {
		dir = p.t.TempDir()
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	return path
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestStatusPageInChromium(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE products (sku text PRIMARY KEY, name text)`,
		`CREATE TABLE notes (id int PRIMARY KEY, body text)`,
		`SELECT pg2kafka.setup('products', 'sku')`,
		`SELECT pg2kafka.setup('notes', 'id')`,
		`INSERT INTO products SELECT 'P' || g, 'product ' || g FROM generate_series(1, 3000) g`,
		`INSERT INTO notes VALUES (1, 'one'), (2, 'two')`,
	)
	b.attach()
	p := openChromium(t)
	p.navigate(b.url + "/")

	// Every table, with what waits in the queue.
	rows := `[...document.querySelectorAll("#tables tbody tr")].map(r => r.dataset.table + " " + r.querySelector(".queued").textContent).join("|")`
	p.waitFor("the tables", rows+` === "public.notes 2|public.products 3,000"`)
	if got := p.eval(`document.getElementById("database").textContent`); !strings.Contains(got, b.database) {
		t.Errorf("the page names database %s, want %s", got, b.database)
	}
	p.screenshot("status-before.png")

	// As events ship, the page follows without a reload.
	b.run()
	p.waitFor("the queue to drain on the page", rows+` === "public.notes 0|public.products 0"`)
	p.waitFor("the chart to show what shipped", `Number(document.querySelector('tr[data-table="public.products"] .chart').dataset.peak) > 0`)
	p.waitFor("the shippers and their lanes",
		`[...document.querySelectorAll("#shippers tbody tr")].map(r => r.children[3].textContent).join(",") === "32,32"`)
	p.waitFor("ready", `document.getElementById("banner").textContent.startsWith("Ready")`)
	if got := p.eval(`document.getElementById("lanes").textContent.endsWith("this process owns 64 of 64 lanes")`); got != "true" {
		t.Errorf("lanes line %s", p.eval(`document.getElementById("lanes").textContent`))
	}
	if dead := p.eval(`[...document.querySelectorAll("#tables .dead")].map(c => c.textContent).join(",")`); dead != `"0,0"` {
		t.Errorf("dead letters %s, want 0,0", dead)
	}
	path := p.screenshot("status-after.png")
	t.Logf("screenshot: %s", path)
}

func TestStreamPageInChromium(t *testing.T) {
	t.Parallel()
	b := setup(t,
		`CREATE TABLE products (sku text PRIMARY KEY, price numeric)`,
		`SELECT pg2kafka.setup('products', 'sku')`,
	)
	b.run()
	p := openChromium(t)
	p.navigate(b.url + "/stream?token=" + streamToken + "&table=public.products&change=update&filter=price.gt.10&autostart=1")
	p.waitFor("the stream to open", `document.getElementById("state").textContent === "Watching update:public.products:price.gt.10"`)
	if got := p.eval(`[...document.querySelectorAll("#table option")].map(o => o.value).join(",")`); got != `"public.products"` {
		t.Errorf("tables offered %s, want public.products", got)
	}
	b.waitFor("the viewer to be counted", func() bool { return b.hub.Viewers() == 1 })

	b.exec(`INSERT INTO products VALUES ('A1', 5)`,
		`UPDATE products SET price = 9 WHERE sku = 'A1'`,
		`UPDATE products SET price = 30 WHERE sku = 'A1'`,
		`UPDATE products SET price = 40 WHERE sku = 'A1'`)
	events := `[...document.querySelectorAll("#events li")].map(li => li.textContent).join("|")`
	// Newest first.
	p.waitFor("the two matching events", events+` === 'UPDATE A1{"price":40}|UPDATE A1{"price":30}'`)
	t.Logf("screenshot: %s", p.screenshot("stream.png"))

	// A wrong token is refused, and the page says why.
	p.navigate(b.url + "/stream?token=wrong&table=public.products&autostart=1")
	p.waitFor("the refusal", `document.getElementById("state").textContent.includes("401: missing or wrong token")`)
}
