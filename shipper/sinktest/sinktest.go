// Package sinktest is the conformance suite every shipper.Sink passes. A
// sink's own test calls Run with a function that makes a fresh sink and a
// Receiver, a view of what its destination received; the suite then checks
// the Sink contract stated in shipper/sink.go from the outside: one result per
// message, each key's messages received in the order given, also across
// retries, a refused message dead-lettered alone, a context that ends failing
// only what is not yet acknowledged, and nothing acknowledged twice.
//
// What a destination can be made to do differs (a webhook receiver can
// refuse one event, a RabbitMQ broker can only lose its bindings), so beyond
// Receiver a receiver implements the optional Failer, KeyFailer, Refuser and
// Staller, and the suite skips, by name, what the destination cannot show.
package sinktest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pg2kafka/pg2kafka/shipper"
)

// Delivery is one message as its destination received it.
type Delivery struct {
	// Key is the message's key, nil for none.
	Key []byte
	// Value is the message's value, byte for byte.
	Value []byte
}

// Receiver is what a destination received.
type Receiver interface {
	// Received returns every message the destination has received and kept
	// so far, in the order it received them; a message received twice is
	// there twice. It is called only after Send has returned, so what Send
	// acknowledged must be there.
	Received(t testing.TB) []Delivery
}

// Failer is a Receiver whose destination can be made to fail every delivery,
// keeping nothing of it, as an endpoint answering 503 does.
type Failer interface {
	// Fail makes every delivery fail until restore is called.
	Fail(t testing.TB) (restore func())
}

// KeyFailer is a Receiver whose destination can be made to fail the
// deliveries of one key, keeping nothing of them, while others succeed.
type KeyFailer interface {
	// FailKey makes the next n deliveries that carry a message of key fail.
	FailKey(t testing.TB, key []byte, n int)
}

// Refuser is a Receiver whose destination can be made to refuse one message
// for good, as a receiver answering 422 does.
type Refuser interface {
	// Refuse changes m, before it is sent, so that the destination refuses
	// it every time it is sent and keeps nothing of it.
	Refuse(t testing.TB, m *shipper.Message)
}

// Staller is a Receiver whose destination can be made to stop answering the
// deliveries of one key while others are answered.
type Staller interface {
	// Stall holds every delivery that carries a message of key unanswered
	// until release is called.
	Stall(t testing.TB, key []byte) (release func())
}

// NewSink makes a sink to a fresh destination, and its receiver. Both are
// the test's until it ends; the suite closes the sink.
type NewSink func(t *testing.T) (shipper.Sink, Receiver)

// Run runs the conformance suite, each case as a subtest with its own sink.
func Run(t *testing.T, newSink NewSink) {
	cases := []struct {
		name string
		run  func(*testing.T, shipper.Sink, Receiver)
	}{
		{"DeliversEveryMessageOnceInOrder", testDelivers},
		{"ConcurrentSends", testConcurrentSends},
		{"EmptySend", testEmptySend},
		{"ContextAlreadyEnded", testContextAlreadyEnded},
		{"FailedDeliveryRetried", testFailedDeliveryRetried},
		{"OrderPerKeyAcrossRetries", testOrderAcrossRetries},
		{"RefusedMessageAlone", testRefusedAlone},
		{"ContextExpiryFailsOnlyUnacknowledged", testContextExpiry},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sink, recv := newSink(t)
			t.Cleanup(sink.Close)
			c.run(t, sink, recv)
		})
	}
}

// sendTimeout bounds a Send the suite expects to succeed.
const sendTimeout = 30 * time.Second

// Messages returns n messages spread over keys in turn, as the shipper makes
// them: the event JSON as Value, its external ID as Key, the three pg2kafka
// headers. A nil key gives messages without a key. Values are distinct, so
// each can be told apart in what the destination received.
func Messages(prefix string, n int, keys ...[]byte) []shipper.Message {
	if len(keys) == 0 {
		keys = [][]byte{[]byte("k")}
	}
	msgs := make([]shipper.Message, n)
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range msgs {
		key := keys[i%len(keys)]
		id := uuid.New().String()
		externalID := "null"
		if key != nil {
			externalID = strconv.Quote(string(key))
		}
		value := fmt.Sprintf(`{"uuid":%q,"external_id":%s,"statement":"INSERT","data":{"seq":%d,"name":%q},"created_at":%q}`,
			id, externalID, i, prefix, created.Add(time.Duration(i)*time.Millisecond).Format(time.RFC3339Nano))
		msgs[i] = shipper.Message{
			Topic: "pg2kafka.suite." + prefix,
			Key:   key,
			Value: []byte(value),
			Headers: []shipper.Header{
				{Key: shipper.HeaderEventID, Value: []byte(id)},
				{Key: shipper.HeaderStatement, Value: []byte("INSERT")},
				{Key: shipper.HeaderTable, Value: []byte("suite." + prefix)},
			},
			Timestamp: created.Add(time.Duration(i) * time.Millisecond),
		}
	}
	return msgs
}

func send(t testing.TB, sink shipper.Sink, msgs []shipper.Message) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
	defer cancel()
	errs := sink.Send(ctx, msgs)
	if len(errs) != len(msgs) {
		t.Fatalf("Send of %d messages returned %d results; want one per message", len(msgs), len(errs))
	}
	return errs
}

// ShipAll sends msgs as the shipper does: again and again, each time the
// messages not yet acknowledged, in their order, until every one is
// acknowledged or refused. It fails the test when a round makes no progress
// ten times. It returns the messages refused, by index.
func ShipAll(t testing.TB, sink shipper.Sink, msgs []shipper.Message) map[int]error {
	t.Helper()
	todo := make([]int, len(msgs))
	for i := range todo {
		todo[i] = i
	}
	refused := make(map[int]error)
	var lastErr error
	for round := 0; len(todo) > 0; round++ {
		if round == 10 {
			t.Fatalf("%d of %d messages still not acknowledged after 10 sends; the first fails with: %v", len(todo), len(msgs), lastErr)
		}
		batch := make([]shipper.Message, len(todo))
		for k, i := range todo {
			batch[k] = msgs[i]
		}
		errs := send(t, sink, batch)
		checkHeldBack(t, batch, errs)
		var left []int
		for k, err := range errs {
			switch {
			case err == nil:
			case isRejected(err):
				refused[todo[k]] = err
			default:
				if len(left) == 0 {
					lastErr = err
				}
				left = append(left, todo[k])
			}
		}
		if len(left) > 0 {
			t.Logf("%d of %d messages not acknowledged, sent again; the first failed with: %v", len(left), len(todo), lastErr)
		}
		todo = left
	}
	return refused
}

func isRejected(err error) bool {
	_, ok := errors.AsType[*shipper.RejectedError](err)
	return ok
}

// checkHeldBack checks the rule that keeps a key in order across retries:
// once a message of a key failed (other than being refused), no later
// message of that key in the same Send was acknowledged, since the retry of
// the failed one would then arrive after it.
func checkHeldBack(t testing.TB, msgs []shipper.Message, errs []error) {
	t.Helper()
	failed := make(map[string]int)
	for i, err := range errs {
		if msgs[i].Key == nil {
			continue
		}
		k := string(msgs[i].Key)
		if err != nil && !isRejected(err) {
			if _, ok := failed[k]; !ok {
				failed[k] = i
			}
			continue
		}
		if first, ok := failed[k]; ok && err == nil {
			t.Errorf("message %d of key %q was acknowledged although message %d of that key failed in the same Send (%v): its retry would arrive after it",
				i, k, first, errs[first])
		}
	}
}

// CheckReceived checks that the destination received exactly want, each
// once, each key's in want's order (messages without a key in any order).
// A message want[i] for which dupesOK(i) holds may be received more than
// once, as at-least-once allows after a delivery whose answer was lost, as
// long as each key's first receipts are in order.
func CheckReceived(t testing.TB, recv Receiver, want []shipper.Message, dupesOK func(i int) bool) {
	t.Helper()
	got := recv.Received(t)
	index := make(map[string]int, len(want))
	for i := range want {
		index[string(want[i].Value)] = i
	}
	seen := make(map[int]int)
	lastOfKey := make(map[string]int)
	for _, d := range got {
		i, ok := index[string(d.Value)]
		if !ok {
			t.Errorf("destination received a message that was not sent, or not as it was sent: key %q value %s", d.Key, d.Value)
			continue
		}
		if !bytes.Equal(d.Key, want[i].Key) {
			t.Errorf("message %d received with key %q; sent with key %q", i, d.Key, want[i].Key)
		}
		seen[i]++
		if seen[i] > 1 {
			if dupesOK == nil || !dupesOK(i) {
				t.Errorf("message %d (key %q) received %d times; want once", i, want[i].Key, seen[i])
			}
			continue
		}
		if want[i].Key == nil {
			continue
		}
		k := string(want[i].Key)
		if last, ok := lastOfKey[k]; ok && last > i {
			t.Errorf("key %q: message %d received after message %d; want the order sent", k, i, last)
		}
		lastOfKey[k] = i
	}
	for i := range want {
		if seen[i] == 0 {
			t.Errorf("message %d (key %q) never received: %s", i, want[i].Key, want[i].Value)
		}
	}
}

func testDelivers(t *testing.T, sink shipper.Sink, recv Receiver) {
	msgs := Messages("delivers", 40, []byte("a"), []byte("b"), []byte("c"), nil, []byte(`q"uote`))
	errs := send(t, sink, msgs)
	for i, err := range errs {
		if err != nil {
			t.Errorf("message %d: %v; want it acknowledged", i, err)
		}
	}
	CheckReceived(t, recv, msgs, nil)
}

func testConcurrentSends(t *testing.T, sink shipper.Sink, recv Receiver) {
	// The shipper's workers share one sink, each with its own keys.
	const senders = 4
	var all []shipper.Message
	batches := make([][]shipper.Message, senders)
	for w := range batches {
		batches[w] = Messages(fmt.Sprintf("concurrent%d", w), 25, []byte(fmt.Sprintf("w%d-a", w)), []byte(fmt.Sprintf("w%d-b", w)))
		all = append(all, batches[w]...)
	}
	var wg sync.WaitGroup
	results := make([][]error, senders)
	for w := range batches {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
			defer cancel()
			results[w] = sink.Send(ctx, batches[w])
		})
	}
	wg.Wait()
	for w, errs := range results {
		if len(errs) != len(batches[w]) {
			t.Fatalf("sender %d: %d results for %d messages", w, len(errs), len(batches[w]))
		}
		for i, err := range errs {
			if err != nil {
				t.Errorf("sender %d message %d: %v", w, i, err)
			}
		}
	}
	CheckReceived(t, recv, all, nil)
}

func testEmptySend(t *testing.T, sink shipper.Sink, recv Receiver) {
	if errs := send(t, sink, nil); len(errs) != 0 {
		t.Errorf("Send(nil) = %v; want no results", errs)
	}
	if got := recv.Received(t); len(got) != 0 {
		t.Errorf("an empty Send delivered %d messages", len(got))
	}
}

func testContextAlreadyEnded(t *testing.T, sink shipper.Sink, recv Receiver) {
	msgs := Messages("ended", 5, []byte("a"), []byte("b"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	errs := sink.Send(ctx, msgs)
	if len(errs) != len(msgs) {
		t.Fatalf("%d results for %d messages", len(errs), len(msgs))
	}
	for i, err := range errs {
		switch {
		case err == nil:
			t.Errorf("message %d acknowledged by a Send whose context had ended", i)
		case isRejected(err):
			t.Errorf("message %d refused (%v) by a Send whose context had ended; it must only fail, and be retried", i, err)
		case !errors.Is(err, context.Canceled):
			t.Errorf("message %d: %v; want an error wrapping context.Canceled, so the shipper can tell", i, err)
		}
	}
	// Nothing was acknowledged, so the messages go again; each key must
	// then be received in order, once or, if the ended Send got some out
	// anyway, again.
	ShipAll(t, sink, msgs)
	CheckReceived(t, recv, msgs, func(int) bool { return true })
}

func testFailedDeliveryRetried(t *testing.T, sink shipper.Sink, recv Receiver) {
	f, ok := recv.(Failer)
	if !ok {
		t.Skip("the receiver cannot make its destination fail (no Fail method)")
	}
	msgs := Messages("failed", 12, []byte("a"), []byte("b"), nil)
	restore := f.Fail(t)
	errs := send(t, sink, msgs)
	restore()
	for i, err := range errs {
		switch {
		case err == nil:
			t.Errorf("message %d acknowledged while its destination failed every delivery", i)
		case isRejected(err):
			t.Errorf("message %d refused for good (%v) by a destination failing for a while; want it retried", i, err)
		}
	}
	if got := recv.Received(t); len(got) != 0 {
		t.Errorf("destination kept %d messages of deliveries that failed", len(got))
	}
	ShipAll(t, sink, msgs)
	CheckReceived(t, recv, msgs, nil)
}

func testOrderAcrossRetries(t *testing.T, sink shipper.Sink, recv Receiver) {
	f, ok := recv.(KeyFailer)
	if !ok {
		t.Skip("the receiver cannot make one key's deliveries fail (no FailKey method)")
	}
	// Key a's first deliveries fail; its later messages must wait for them.
	// Other keys may fail with them where they share a delivery (a
	// request, a partition), and are retried too.
	msgs := Messages("retries", 30, []byte("a"), []byte("b"), []byte("c"))
	f.FailKey(t, []byte("a"), 2)
	errs := send(t, sink, msgs)
	checkHeldBack(t, msgs, errs)
	var failedA bool
	var retry []shipper.Message
	for i, err := range errs {
		if err == nil {
			continue
		}
		if isRejected(err) {
			t.Errorf("message %d of key %q refused for good (%v); its delivery only failed", i, msgs[i].Key, err)
			continue
		}
		failedA = failedA || string(msgs[i].Key) == "a"
		retry = append(retry, msgs[i])
	}
	if !failedA {
		t.Fatal("no message of key a failed although its deliveries were made to fail")
	}
	ShipAll(t, sink, retry)
	CheckReceived(t, recv, msgs, nil)
}

func testRefusedAlone(t *testing.T, sink shipper.Sink, recv Receiver) {
	r, ok := recv.(Refuser)
	if !ok {
		t.Skip("the receiver cannot make its destination refuse a message (no Refuse method)")
	}
	msgs := Messages("refused", 20, []byte("a"), []byte("b"), []byte("c"), []byte("d"))
	const poison = 5 // key b
	r.Refuse(t, &msgs[poison])
	refused := ShipAll(t, sink, msgs)
	if len(refused) != 1 || refused[poison] == nil {
		t.Fatalf("refused messages %v; want message %d alone", refused, poison)
	}
	rej, _ := errors.AsType[*shipper.RejectedError](refused[poison])
	if rej.Err == nil || rej.Attempts < 1 || rej.LastFailedAt.IsZero() || rej.LastFailedAt.Before(rej.FirstFailedAt) {
		t.Errorf("RejectedError %+v: want the reason, at least one attempt, and when the first and the last failed", rej)
	}
	want := append(append([]shipper.Message(nil), msgs[:poison]...), msgs[poison+1:]...)
	CheckReceived(t, recv, want, nil)
}

func testContextExpiry(t *testing.T, sink shipper.Sink, recv Receiver) {
	s, ok := recv.(Staller)
	if !ok {
		t.Skip("the receiver cannot make one key's deliveries stall (no Stall method)")
	}
	// The stalled key's messages come last, so that a sink sending several
	// messages in one delivery still has deliveries without them.
	msgs := append(Messages("expiry", 16, []byte("a"), []byte("c")), Messages("expiry-slow", 8, []byte("slow"))...)
	release := s.Stall(t, []byte("slow"))
	defer release()
	const timeout = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	start := time.Now()
	errs := sink.Send(ctx, msgs)
	took := time.Since(start)
	cancel()
	if len(errs) != len(msgs) {
		t.Fatalf("%d results for %d messages", len(errs), len(msgs))
	}
	// A sink may take a moment past the deadline to wind down, not a
	// destination's whole timeout.
	if took > timeout+5*time.Second {
		t.Errorf("Send returned %v after a context of %v ended; want promptly", took-timeout, timeout)
	}
	got := recv.Received(t)
	have := make(map[string]bool, len(got))
	for _, d := range got {
		have[string(d.Value)] = true
	}
	acked := 0
	for i, err := range errs {
		slow := string(msgs[i].Key) == "slow"
		switch {
		case slow && err == nil:
			t.Errorf("message %d of the stalled key acknowledged", i)
		case err != nil && !errors.Is(err, context.DeadlineExceeded):
			t.Errorf("message %d of key %q: %v; want either its acknowledgement or an error wrapping context.DeadlineExceeded", i, msgs[i].Key, err)
		case err == nil && !have[string(msgs[i].Value)]:
			t.Errorf("message %d acknowledged but not received", i)
		case err == nil:
			acked++
		}
	}
	if acked == 0 {
		t.Error("no message acknowledged, although only the last key's deliveries stalled: what the destination answered before the context ended must be acknowledged")
	}
	// The rest goes again; the stalled deliveries may yet arrive as well.
	release()
	var retry []shipper.Message
	for i, err := range errs {
		if err != nil {
			retry = append(retry, msgs[i])
		}
	}
	ShipAll(t, sink, retry)
	CheckReceived(t, recv, msgs, func(i int) bool { return errs[i] != nil })
}
