package rabbitmq_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/rabbitmq"
	"github.com/pg2kafka/pg2kafka/shipper/sinktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// brokerURL is the test broker: the machine's RabbitMQ, which script/test
// starts, unless PG2KAFKA_TEST_RABBITMQ_URL names another.
func brokerURL() string {
	if u := os.Getenv("PG2KAFKA_TEST_RABBITMQ_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

func unique(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// broker is a test's own exchange on the test broker, and a connection to
// look at it.
type broker struct {
	t        testing.TB
	exchange string

	mu   sync.Mutex
	conn *amqp.Connection
	ch   *amqp.Channel
}

func newBroker(t testing.TB, declare bool) *broker {
	t.Helper()
	b := &broker{t: t, exchange: unique("pg2kafka-test")}
	b.channel()
	if declare {
		if err := b.channel().ExchangeDeclare(b.exchange, "topic", false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if ch := b.channel(); ch != nil {
			_ = ch.ExchangeDelete(b.exchange, false, false)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		_ = b.conn.Close()
	})
	return b
}

// channel returns the test's channel, opened again if a test closed the
// broker's connections or a failed declaration closed it.
func (b *broker) channel() *amqp.Channel {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil && !b.ch.IsClosed() {
		return b.ch
	}
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; {
		if b.conn == nil || b.conn.IsClosed() {
			b.conn, err = amqp.Dial(brokerURL())
		}
		if err == nil {
			b.ch, err = b.conn.Channel()
		}
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // the broker is coming back
	}
	if err != nil {
		b.t.Fatalf("rabbitmq: connect to %s (set PG2KAFKA_TEST_RABBITMQ_URL, or run script/test, which starts the local broker): %v", rabbitmq.Redact(brokerURL()), err)
	}
	return b.ch
}

func (b *broker) sink(cfg rabbitmq.Config) *rabbitmq.Sink {
	b.t.Helper()
	cfg.URL = brokerURL()
	if cfg.Exchange == "" {
		cfg.Exchange = b.exchange
	}
	s, err := rabbitmq.New(cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(s.Close)
	return s
}

// queue is a durable queue bound to the exchange, read with basic.get.
type queue struct {
	b          *broker
	name       string
	routingKey string

	mu  sync.Mutex
	got []amqp.Delivery
}

func (b *broker) queue(routingKey string) *queue {
	b.t.Helper()
	q := &queue{b: b, name: unique("pg2kafka-test-q"), routingKey: routingKey}
	if _, err := b.channel().QueueDeclare(q.name, true, false, false, false, nil); err != nil {
		b.t.Fatal(err)
	}
	q.bind()
	b.t.Cleanup(func() { _, _ = b.channel().QueueDelete(q.name, false, false, false) })
	return q
}

func (q *queue) bind() {
	if err := q.b.channel().QueueBind(q.name, q.routingKey, q.b.exchange, false, nil); err != nil {
		q.b.t.Fatal(err)
	}
}

// deliveries returns every message the queue has received so far, in order.
func (q *queue) deliveries(t testing.TB) []amqp.Delivery {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		d, ok, err := q.b.channel().Get(q.name, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return append([]amqp.Delivery(nil), q.got...)
		}
		q.got = append(q.got, d)
	}
}

// Received implements sinktest.Receiver. The key is the event's
// external_id, which the body carries.
func (q *queue) Received(t testing.TB) []sinktest.Delivery {
	var out []sinktest.Delivery
	for _, d := range q.deliveries(t) {
		out = append(out, sinktest.Delivery{Key: externalID(d.Body), Value: d.Body})
	}
	return out
}

// Fail implements sinktest.Failer: with the queue unbound, the broker
// returns every message.
func (q *queue) Fail(t testing.TB) func() {
	if err := q.b.channel().QueueUnbind(q.name, q.routingKey, q.b.exchange, nil); err != nil {
		t.Fatal(err)
	}
	return q.bind
}

func externalID(body []byte) []byte {
	const field = `"external_id":`
	i := bytes.Index(body, []byte(field))
	if i < 0 {
		return nil
	}
	rest := body[i+len(field):]
	if bytes.HasPrefix(rest, []byte("null")) {
		return nil
	}
	var s string
	if _, err := fmt.Sscanf(string(rest), "%q", &s); err != nil {
		return nil
	}
	return []byte(s)
}

func TestConformance(t *testing.T) {
	t.Parallel()
	sinktest.Run(t, func(t *testing.T) (shipper.Sink, sinktest.Receiver) {
		b := newBroker(t, true)
		q := b.queue("#")
		s, err := rabbitmq.New(rabbitmq.Config{URL: brokerURL(), Exchange: b.exchange})
		if err != nil {
			t.Fatal(err)
		}
		return s, q
	})
}

// A queue bound to the exchange receives every event in order, as a
// pgevents consumer expects it.
func TestPublishedMessages(t *testing.T) {
	t.Parallel()
	b := newBroker(t, true)
	q := b.queue("suite.products")
	other := b.queue("suite.orders")
	s := b.sink(rabbitmq.Config{})
	msgs := append(sinktest.Messages("products", 50, []byte("a"), []byte("b")), sinktest.Messages("orders", 3, []byte("a"))...)
	for i, err := range s.Send(context.Background(), msgs) {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	got := q.deliveries(t)
	if len(got) != 50 {
		t.Fatalf("queue bound to suite.products got %d messages; want 50", len(got))
	}
	for i, d := range got {
		m := msgs[i]
		if !bytes.Equal(d.Body, m.Value) {
			t.Fatalf("message %d body %s; want %s (in order)", i, d.Body, m.Value)
		}
		want := map[string]any{
			"routing key":   "suite.products",
			"exchange":      b.exchange,
			"content-type":  "application/json",
			"delivery mode": amqp.Persistent,
			"message-id":    string(m.Headers[0].Value),
			"timestamp":     m.Timestamp.Truncate(time.Second).Unix(),
			"event id":      string(m.Headers[0].Value),
			"statement":     "INSERT",
			"table":         "suite.products",
		}
		have := map[string]any{
			"routing key":   d.RoutingKey,
			"exchange":      d.Exchange,
			"content-type":  d.ContentType,
			"delivery mode": d.DeliveryMode,
			"message-id":    d.MessageId,
			"timestamp":     d.Timestamp.Unix(),
			"event id":      d.Headers[shipper.HeaderEventID],
			"statement":     d.Headers[shipper.HeaderStatement],
			"table":         d.Headers[shipper.HeaderTable],
		}
		for k, v := range want {
			if have[k] != v {
				t.Errorf("message %d %s = %v; want %v", i, k, have[k], v)
			}
		}
	}
	if n := len(other.deliveries(t)); n != 3 {
		t.Errorf("queue bound to suite.orders got %d messages; want its 3", n)
	}
}

// A table whose setup() chose a topic is routed by it.
func TestChosenTopicIsTheRoutingKey(t *testing.T) {
	t.Parallel()
	b := newBroker(t, true)
	q := b.queue("shop.orders.v1")
	s := b.sink(rabbitmq.Config{})
	msgs := sinktest.Messages("orders", 3, []byte("a"))
	for i := range msgs {
		msgs[i].Topic, msgs[i].TopicChosen = "shop.orders.v1", true
	}
	for i, err := range s.Send(context.Background(), msgs) {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	sinktest.CheckReceived(t, q, msgs, nil)
}

func TestMissingExchangeKeepsEventsQueued(t *testing.T) {
	t.Parallel()
	b := newBroker(t, false)
	s := b.sink(rabbitmq.Config{})
	msgs := sinktest.Messages("missing", 3)
	for i, err := range s.Send(context.Background(), msgs) {
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("exchange %q does not exist", b.exchange)) || !strings.Contains(err.Error(), "RABBITMQ_CREATE_EXCHANGE=true") {
			t.Fatalf("message %d: %v; want the missing exchange named, and the fix", i, err)
		}
		if _, ok := errors.AsType[*shipper.RejectedError](err); ok {
			t.Fatalf("message %d refused for good; a missing exchange is fixed by declaring it", i)
		}
	}
	// Declared, the exchange takes the same events.
	if err := b.channel().ExchangeDeclare(b.exchange, "topic", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	q := b.queue("#")
	for i, err := range s.Send(context.Background(), msgs) {
		if err != nil {
			t.Fatalf("message %d after the exchange was declared: %v", i, err)
		}
	}
	sinktest.CheckReceived(t, q, msgs, nil)
}

func TestCreateExchange(t *testing.T) {
	t.Parallel()
	b := newBroker(t, false)
	s := b.sink(rabbitmq.Config{CreateExchange: true})
	if err := s.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Declaring it again as a durable topic exchange succeeds only if that
	// is what it is.
	if err := b.channel().ExchangeDeclare(b.exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatalf("exchange not declared as a durable topic exchange: %v", err)
	}
}

// With no queue bound for a table's routing key, the broker returns its
// events; they stay queued, while another table's go through.
func TestUnroutableEventsStayQueued(t *testing.T) {
	t.Parallel()
	b := newBroker(t, true)
	q := b.queue("suite.flowing")
	s := b.sink(rabbitmq.Config{})
	stuck := sinktest.Messages("stuck", 4, []byte("a"))
	flowing := sinktest.Messages("flowing", 4, []byte("a"))
	msgs := []shipper.Message{stuck[0], flowing[0], stuck[1], flowing[1], stuck[2], flowing[2], stuck[3], flowing[3]}
	errs := s.Send(context.Background(), msgs)
	for i, err := range errs {
		if i%2 == 1 {
			if err != nil {
				t.Errorf("message %d of the bound table: %v", i, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), `routing key "suite.stuck"`) || !strings.Contains(err.Error(), b.exchange) {
			t.Errorf("message %d: %v; want it returned, naming the exchange and the routing key", i, err)
		}
		if _, ok := errors.AsType[*shipper.RejectedError](err); ok {
			t.Errorf("message %d refused for good; an unbound routing key is fixed by binding a queue", i)
		}
	}
	sinktest.CheckReceived(t, q, flowing, nil)
}

// The broker dropping every connection mid-stream loses nothing and keeps
// each key's order: the sink connects again and what was not confirmed goes
// again. Not parallel: it closes every connection of the broker.
func TestBrokerConnectionsClosedMidStream(t *testing.T) {
	ctl, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		t.Skip("rabbitmqctl is not installed here (script/test installs rabbitmq-server)")
	}
	b := newBroker(t, false)
	if err := b.channel().ExchangeDeclare(b.exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	q := b.queue("#")
	s := b.sink(rabbitmq.Config{})
	var all []shipper.Message
	closed := make(chan error, 1)
	go func() {
		out, err := exec.Command(ctl, "close_all_connections", "pg2kafka test: broker going away").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%v: %s", err, out)
		}
		closed <- err
	}()
	// Ship until well after the broker dropped the connections.
	after := -1
	for round := 0; after < 20; round++ {
		if round == 5000 {
			t.Fatal("rabbitmqctl close_all_connections did not return")
		}
		msgs := sinktest.Messages(fmt.Sprintf("restart%d", round), 40, []byte("a"), []byte("b"), []byte("c"), []byte("d"))
		all = append(all, msgs...)
		sinktest.ShipAll(t, s, msgs)
		if after >= 0 {
			after++
			continue
		}
		select {
		case err := <-closed:
			if err != nil {
				t.Fatal(err)
			}
			after = 0
		default:
		}
	}
	// What was sent again may be there twice; nothing is missing or out of
	// order.
	sinktest.CheckReceived(t, q, all, func(int) bool { return true })
}

func TestValidate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		cfg  rabbitmq.Config
		want string
	}{
		{rabbitmq.Config{Exchange: "x"}, "RABBITMQ_URL is not set"},
		{rabbitmq.Config{URL: "http://u:hunter2@h/", Exchange: "x"}, `RABBITMQ_URL="http://u:xxxxx@h/"`},
		{rabbitmq.Config{URL: "amqp://guest:guest@localhost/"}, "RABBITMQ_EXCHANGE is not set"},
	}
	for _, c := range cases {
		_, err := rabbitmq.New(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%+v: %v; want an error containing %q, without the password", rabbitmq.Config{Exchange: c.cfg.Exchange}, err, c.want)
		}
	}
}

func TestConnectErrorHidesThePassword(t *testing.T) {
	t.Parallel()
	s, err := rabbitmq.New(rabbitmq.Config{URL: "amqp://guest:hunter2@127.0.0.1:1/", Exchange: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Send(context.Background(), sinktest.Messages("down", 1))[0]
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("%v; want the connection error naming the address, not the password", err)
	}
}
