package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// takeoverTimeout is the replicas' LANE_TAKEOVER_TIMEOUT in these tests:
// short, for fast tests, but not so short that a replica starved of CPU
// on a loaded machine (the race detector, tests in parallel) goes silent
// for its half of it.
const takeoverTimeout = 3 * time.Second

// Each replica runs BATCH_SIZE=20 with two workers: a frozen replica's batch
// in flight is at most this many events.
const inFlight = 2 * 20

// takeoverWorld is one test's database, Kafka and replicas.
type takeoverWorld struct {
	t        *testing.T
	pool     *pgxpool.Pool
	url      string
	database string
	cluster  *kfake.Cluster
	admin    *kadm.Client
	keys     int
	versions int // written so far, per key
	// holdProduce, while set, keeps every produce request waiting, as a
	// destination that takes its time; release lets them through.
	holdProduce atomic.Bool
	held        atomic.Int32 // produce requests waiting now
	releaseMu   sync.Mutex
	release     chan struct{}
}

func newTakeoverWorld(t *testing.T, keys int) *takeoverWorld {
	t.Helper()
	pool, url := migratedDatabase(t)
	w := &takeoverWorld{t: t, pool: pool, url: url, keys: keys, release: make(chan struct{})}
	if err := pool.QueryRow(context.Background(), `SELECT current_database()`).Scan(&w.database); err != nil {
		t.Fatal(err)
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(3), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	w.cluster = cluster
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if w.holdProduce.Load() {
			w.releaseMu.Lock()
			release := w.release
			w.releaseMu.Unlock()
			w.held.Add(1)
			cluster.SleepControl(func() { <-release })
			w.held.Add(-1)
		}
		return nil, nil, false
	})
	client, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	w.admin = kadm.NewClient(client)
	mustExec(t, pool,
		`CREATE TABLE counters (id text PRIMARY KEY, version int)`,
		`SELECT pg2kafka.setup('counters', 'id')`,
	)
	return w
}

// hold makes the destination keep produce requests waiting until let is
// called.
func (w *takeoverWorld) hold() (let func()) {
	w.holdProduce.Store(true)
	return sync.OnceFunc(func() {
		w.holdProduce.Store(false)
		w.releaseMu.Lock()
		close(w.release)
		w.release = make(chan struct{})
		w.releaseMu.Unlock()
	})
}

// write queues one more version of every key, a transaction per key; the
// first call inserts the rows. Each event's data carries its version.
func (w *takeoverWorld) write() {
	w.t.Helper()
	for i := 1; i <= w.keys; i++ {
		sql := `UPDATE counters SET version = version + 1 WHERE id = $1`
		if w.versions == 0 {
			sql = `INSERT INTO counters VALUES ($1, 0)`
		}
		if _, err := w.pool.Exec(context.Background(), sql, fmt.Sprintf("key-%d", i)); err != nil {
			w.t.Fatal(err)
		}
	}
	w.versions++
}

// replica is a pg2kafka process.
type replica struct {
	name   string
	cmd    *exec.Cmd
	stderr *syncBuffer
	exited chan error
}

// start runs a replica named name (its sessions' application_name),
// reaching Postgres at dbURL.
func (w *takeoverWorld) start(name, dbURL string, env ...string) *replica {
	w.t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		w.t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	cmd, _, stderr := pg2kafkaCommand(w.t, append([]string{
		"DATABASE_URL=" + u.String(),
		"KAFKA_PRODUCER_URL=kafka://" + strings.Join(w.cluster.ListenAddrs(), ","),
		"KAFKA_CREATE_TOPICS=true",
		"BATCH_SIZE=20",
		"WORKERS=2",
		"POLL_INTERVAL=10ms",
		"LANE_TAKEOVER_TIMEOUT=" + takeoverTimeout.String(),
	}, env...)...)
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	r := &replica{name: name, cmd: cmd, stderr: stderr, exited: make(chan error, 1)}
	go func() { r.exited <- cmd.Wait() }()
	w.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-r.exited:
			if err != nil && !w.t.Failed() {
				w.t.Errorf("replica %s exited with %v after SIGTERM\n%s", name, err, stderr)
			}
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			w.t.Errorf("replica %s still running 15s after SIGTERM", name)
		}
		if w.t.Failed() {
			w.t.Logf("replica %s stderr:\n%s", name, stderr)
		}
	})
	return r
}

func (r *replica) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// lanes returns, for each lane owned, the backend pid that owns it and the
// replica (application_name) that session belongs to.
func (w *takeoverWorld) lanes() map[int64]string {
	w.t.Helper()
	rows, err := w.pool.Query(context.Background(), `
		SELECT l.objid::bigint, a.application_name || '/' || l.pid
		FROM pg_locks l JOIN pg_stat_activity a USING (pid)
		WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted AND l.classid = x'70676b01'::int::oid
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	if err != nil {
		w.t.Fatal(err)
	}
	defer rows.Close()
	owners := make(map[int64]string)
	for rows.Next() {
		var lane int64
		var owner string
		if err := rows.Scan(&lane, &owner); err != nil {
			w.t.Fatal(err)
		}
		owners[lane] = owner
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	return owners
}

// lanesOf counts the lanes each replica owns.
func (w *takeoverWorld) lanesOf() map[string]int {
	counts := make(map[string]int)
	for _, owner := range w.lanes() {
		name, _, _ := strings.Cut(owner, "/")
		counts[name]++
	}
	return counts
}

// waitShared waits until every lane is owned, some by each replica, and no
// session owns more than its fair share: the split the replicas converge on.
func (w *takeoverWorld) waitShared(replicas ...*replica) {
	w.t.Helper()
	waitFor(w.t, "the replicas to share the lanes evenly", func() bool {
		var members int
		if err := w.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid = x'70676b00'::int::oid
			  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&members); err != nil {
			w.t.Fatal(err)
		}
		owners := w.lanes()
		perSession := make(map[string]int)
		for _, owner := range owners {
			perSession[owner]++
		}
		for _, n := range perSession {
			if members == 0 || n > (64+members-1)/members {
				return false
			}
		}
		counts := w.lanesOf()
		for _, r := range replicas {
			if counts[r.name] == 0 {
				return false
			}
		}
		return len(owners) == 64
	})
}

// waitTakeover waits until heir owns every lane and returns how long that
// took from since.
func (w *takeoverWorld) waitTakeover(heir *replica, since time.Time) time.Duration {
	w.t.Helper()
	waitFor(w.t, heir.name+" to own every lane", func() bool { return w.lanesOf()[heir.name] == 64 })
	return time.Since(since)
}

func (w *takeoverWorld) queued() int { return queueLength(w.t, w.pool) }

func (w *takeoverWorld) waitDrained() {
	w.t.Helper()
	waitFor(w.t, "the queue to drain", func() bool { return w.queued() == 0 })
}

func (w *takeoverWorld) waitIdleInTransaction(r *replica) {
	w.t.Helper()
	waitFor(w.t, r.name+" to hold a claim open", func() bool {
		var n int
		err := w.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1 AND state = 'idle in transaction'`, r.name).Scan(&n)
		if err != nil {
			w.t.Fatal(err)
		}
		return n > 0
	})
}

func (w *takeoverWorld) waitLogged(r *replica, text string) {
	w.t.Helper()
	waitFor(w.t, fmt.Sprintf("%s to log %q", r.name, text), func() bool { return strings.Contains(r.stderr.String(), text) })
}

// records returns the records of the counters topic; waits for the topic to
// hold at least want.
func (w *takeoverWorld) records(want int) []*kgo.Record {
	w.t.Helper()
	topic := "pg2kafka." + w.database + ".counters"
	var total int64
	waitFor(w.t, fmt.Sprintf("%d records on %s", want, topic), func() bool {
		ends, err := w.admin.ListEndOffsets(context.Background(), topic)
		total = 0
		if err == nil {
			ends.Each(func(o kadm.ListedOffset) { total += max(o.Offset, 0) })
		}
		return total >= int64(want)
	})
	client, err := kgo.NewClient(kgo.SeedBrokers(w.cluster.ListenAddrs()...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		w.t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var records []*kgo.Record
	for int64(len(records)) < total {
		fetches := client.PollFetches(ctx)
		if ctx.Err() != nil {
			w.t.Fatalf("read %d of %d records", len(records), total)
		}
		records = append(records, fetches.Records()...)
	}
	return records
}

// requireEveryVersionInOrder checks that every version of every key is on
// the topic and that each key's versions arrived in order, replays of a
// version already seen aside; it returns how many replays there were.
func (w *takeoverWorld) requireEveryVersionInOrder() (duplicates int) {
	w.t.Helper()
	w.waitDrained()
	next := make(map[string]int) // key → next version expected
	for _, r := range w.records(w.keys * w.versions) {
		var event struct {
			Data struct {
				Version *int `json:"version"`
			} `json:"data"`
		}
		if err := json.Unmarshal(r.Value, &event); err != nil || event.Data.Version == nil {
			w.t.Fatalf("record %s: no version: %v", r.Value, err)
		}
		key, v := string(r.Key), *event.Data.Version
		switch {
		case v == next[key]:
			next[key]++
		case v < next[key]:
			duplicates++
		default:
			w.t.Fatalf("key %s: version %d arrived before version %d", key, v, next[key])
		}
	}
	for i := 1; i <= w.keys; i++ {
		if key := fmt.Sprintf("key-%d", i); next[key] != w.versions {
			w.t.Errorf("key %s: %d versions arrived, want %d", key, next[key], w.versions)
		}
	}
	return duplicates
}

// A replica frozen between batches loses its lanes to the other within the
// takeover timeout, which ships its events meanwhile; woken, it finds its
// sessions gone, says so, and rejoins.
func TestFrozenReplicaBetweenBatchesLosesItsLanes(t *testing.T) {
	t.Parallel()
	w := newTakeoverWorld(t, 40)
	frozen, heir := w.start("frozen", w.url), w.start("heir", w.url)
	w.write()
	w.waitDrained()
	w.waitShared(frozen, heir)

	frozen.signal(t, syscall.SIGSTOP)
	stoppedAt := time.Now()
	w.write()
	w.write()
	took := w.waitTakeover(heir, stoppedAt)
	t.Logf("lanes taken over %s after the freeze", took.Round(time.Millisecond))
	if took > takeoverTimeout {
		t.Errorf("the lanes of the frozen replica changed hands %s after it froze, over LANE_TAKEOVER_TIMEOUT=%s", took, takeoverTimeout)
	}
	w.waitDrained() // by the heir alone: the other is still frozen

	frozen.signal(t, syscall.SIGCONT)
	w.waitLogged(frozen, "lost its lanes")
	w.waitShared(frozen, heir)
	w.write()
	if dups := w.requireEveryVersionInOrder(); dups != 0 {
		t.Errorf("%d events shipped twice, though the replica froze with no batch in flight", dups)
	}
}

// A replica frozen while its claim waits for the destination loses the
// claim (Postgres rolls it back) and its lanes within the takeover timeout;
// the other ships those events, and the woken replica ships nothing more of
// its old claim than what it had already sent.
func TestFrozenReplicaInsideAClaimLosesItsLanes(t *testing.T) {
	t.Parallel()
	w := newTakeoverWorld(t, 40)
	frozen, heir := w.start("frozen", w.url), w.start("heir", w.url)
	w.write()
	w.waitDrained()
	w.waitShared(frozen, heir)

	let := w.hold()
	defer let()
	w.write()
	w.write()
	w.waitIdleInTransaction(frozen)
	// One produce request of each replica at the broker: the frozen one's
	// batch in flight is sent, and lands once the broker answers.
	waitFor(t, "both replicas' produce requests", func() bool { return w.held.Load() >= 2 })
	frozen.signal(t, syscall.SIGSTOP)
	stoppedAt := time.Now()
	let()
	took := w.waitTakeover(heir, stoppedAt)
	t.Logf("lanes taken over %s after the freeze", took.Round(time.Millisecond))
	if took > takeoverTimeout {
		t.Errorf("the lanes of the replica frozen inside a claim changed hands %s after it froze, over LANE_TAKEOVER_TIMEOUT=%s", took, takeoverTimeout)
	}
	w.waitDrained()

	frozen.signal(t, syscall.SIGCONT)
	w.waitLogged(frozen, "lost its lanes")
	w.waitShared(frozen, heir)
	w.write()
	dups := w.requireEveryVersionInOrder()
	t.Logf("%d events shipped twice", dups)
	if dups > inFlight {
		t.Errorf("%d events shipped twice, more than the frozen replica's batches in flight (%d)", dups, inFlight)
	}
}

// cutProxy forwards TCP connections to a server until cut, and then stops
// forwarding without closing anything, as a partition or a dead host does:
// no reset, no FIN, every packet still acknowledged by the kernel. Packets
// sent meanwhile are never delivered.
type cutProxy struct {
	listener net.Listener
	target   string
	cut      atomic.Bool
	done     chan struct{}
	mu       sync.Mutex
	conns    []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{listener: l, target: target, done: make(chan struct{})}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		close(p.done)
		_ = l.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			p.track(client)
			wg.Go(func() {
				if p.cut.Load() {
					<-p.done // accepted, then silence
					return
				}
				server, err := net.Dial("tcp", p.target)
				if err != nil {
					_ = client.Close()
					return
				}
				p.track(server)
				wg.Go(func() { p.forward(server, client) })
				p.forward(client, server)
			})
		}
	})
	return p
}

func (p *cutProxy) track(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns = append(p.conns, c)
}

// forward copies from src to dst until the proxy is cut, then holds both
// open and silent until the test ends.
func (p *cutProxy) forward(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.cut.Load() {
			<-p.done
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tcp, ok := dst.(*net.TCPConn); ok {
					_ = tcp.CloseWrite()
				}
			}
			return
		}
	}
}

// A replica cut off from Postgres by a silent network loses its lanes
// within the takeover timeout: Postgres ends the sessions it no longer
// hears from.
func TestReplicaCutOffFromPostgresLosesItsLanes(t *testing.T) {
	t.Parallel()
	w := newTakeoverWorld(t, 40)
	u, err := url.Parse(w.url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newCutProxy(t, u.Host)
	viaProxy := *u
	viaProxy.Host = proxy.listener.Addr().String()

	cutOff, heir := w.start("cut-off", viaProxy.String()), w.start("heir", w.url)
	w.write()
	w.waitDrained()
	w.waitShared(cutOff, heir)

	let := w.hold() // so that the cut finds claims in flight too
	defer let()
	w.write()
	w.write()
	w.waitIdleInTransaction(cutOff)
	proxy.cut.Store(true)
	cutAt := time.Now()
	let()
	took := w.waitTakeover(heir, cutAt)
	t.Logf("lanes taken over %s after the cut", took.Round(time.Millisecond))
	if took > takeoverTimeout {
		t.Errorf("the lanes of the cut-off replica changed hands %s after the cut, over LANE_TAKEOVER_TIMEOUT=%s", took, takeoverTimeout)
	}
	w.waitDrained()
	// The cut-off replica notices too, by its own deadlines: a round trip
	// unanswered for the takeover timeout is given up.
	w.waitLogged(cutOff, "lost its lanes")
	if dups := w.requireEveryVersionInOrder(); dups > inFlight {
		t.Errorf("%d events shipped twice, more than the cut-off replica's batches in flight (%d)", dups, inFlight)
	}
}

// Replicas that are only waiting keep their lanes however long they wait:
// polling an empty queue less often than the takeover timeout, waiting
// longer than it for their destination with a claim open, or backing off
// after database errors.
func TestWaitingReplicasKeepTheirLanes(t *testing.T) {
	t.Parallel()
	w := newTakeoverWorld(t, 40)
	a := w.start("a", w.url, "POLL_INTERVAL=3s")
	b := w.start("b", w.url, "POLL_INTERVAL=3s")
	w.waitShared(a, b)
	owners := w.lanes()
	unchanged := func(what string, d time.Duration) {
		t.Helper()
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if now := w.lanes(); !maps.Equal(now, owners) {
				t.Fatalf("%s: the lanes changed hands:\nbefore %v\nnow    %v", what, owners, now)
			}
		}
	}
	unchanged("idle with an empty queue", takeoverTimeout+time.Second)

	let := w.hold()
	defer let()
	w.write()
	w.waitIdleInTransaction(a)
	w.waitIdleInTransaction(b)
	unchanged("waiting for the destination", takeoverTimeout)
	let()
	w.waitDrained()

	// The queue out of reach: every claim fails, and the workers back off,
	// for longer and longer (up to 30s), while their sessions live on.
	mustExec(t, w.pool, `ALTER TABLE pg2kafka.outbound_event_queue RENAME TO outbound_event_queue_away`)
	w.waitLogged(a, "shipping stopped by a database error")
	unchanged("backing off after database errors", 2*takeoverTimeout)
	mustExec(t, w.pool, `ALTER TABLE pg2kafka.outbound_event_queue_away RENAME TO outbound_event_queue`)
	w.write()
	w.waitDrained()
	if now := w.lanes(); !maps.Equal(now, owners) {
		t.Fatalf("the lanes changed hands:\nbefore %v\nnow    %v", owners, now)
	}
	for _, r := range []*replica{a, b} {
		if strings.Contains(r.stderr.String(), "lost") {
			t.Errorf("replica %s:\n%s", r.name, r.stderr)
		}
	}
	if dups := w.requireEveryVersionInOrder(); dups != 0 {
		t.Errorf("%d events shipped twice", dups)
	}
}
