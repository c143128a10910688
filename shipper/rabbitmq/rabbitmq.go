// Package rabbitmq is the shipper's RabbitMQ destination: each event
// published to an exchange with routing key <schema>.<table>, as pgevents
// does, persistent and mandatory, and deleted from the queue only once the
// broker confirmed it.
package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pg2kafka/pg2kafka/shipper"
)

var _ shipper.Sink = (*Sink)(nil)

// Config is a RabbitMQ sink's settings. Zero values take the defaults stated.
type Config struct {
	// URL is the broker (RABBITMQ_URL): amqp://user:pass@host:5672/vhost,
	// or amqps://… for TLS, verified against the system's CAs. Its password
	// is never shown. Required.
	URL string
	// Exchange is where events are published (RABBITMQ_EXCHANGE). Required.
	Exchange string
	// CreateExchange declares Exchange as a durable topic exchange if it does
	// not exist (RABBITMQ_CREATE_EXCHANGE). Default false: a missing exchange
	// is an error, and the events stay queued until someone declares it.
	CreateExchange bool
	// ConnectionName is shown for the connection in the broker's management
	// tools. Default "pg2kafka".
	ConnectionName string
}

// Validate reports the first setting that cannot work, naming its variable,
// what is wrong and what is allowed.
func (c Config) Validate() error {
	if c.URL == "" {
		return errors.New("RABBITMQ_URL is not set: give the broker, e.g. RABBITMQ_URL=amqp://guest:guest@localhost:5672/")
	}
	if _, err := amqp.ParseURI(c.URL); err != nil {
		return fmt.Errorf("RABBITMQ_URL=%q: %v; want amqp://user:pass@host:5672/vhost or amqps://…", Redact(c.URL), err)
	}
	if c.Exchange == "" {
		return errors.New("RABBITMQ_EXCHANGE is not set: name the exchange to publish to, e.g. RABBITMQ_EXCHANGE=pg2kafka (with RABBITMQ_CREATE_EXCHANGE=true to declare it)")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.ConnectionName == "" {
		c.ConnectionName = "pg2kafka"
	}
	return c
}

// Redact hides the password of an amqp URL.
func Redact(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	if scheme, rest, ok := strings.Cut(raw, "://"); ok {
		if at := strings.LastIndexByte(rest, '@'); at >= 0 {
			return scheme + "://xxxxx@" + rest[at+1:]
		}
	}
	return raw
}

// Sink publishes messages to a RabbitMQ exchange over one connection and one
// channel in confirm mode, shared by every Send. Each message is published
// with:
//
//	routing key    <schema>.<table> (the pg2kafka-table header), or the
//	               topic chosen with setup(topic => …)
//	delivery mode  persistent
//	content-type   application/json
//	message-id     the event's uuid
//	timestamp      the event's created_at
//	headers        pg2kafka-event-id, pg2kafka-statement, pg2kafka-table
//
// and mandatory: a message no queue is bound for comes back (basic.return)
// and fails, as does one the broker nacks, so that its event stays queued.
// A lost connection fails what was not yet confirmed; the next Send dials
// again. The channel publishes in order, and confirmations are taken in
// that order, so what a lost connection leaves confirmed is a prefix of what
// was published: no key's later event is confirmed while an earlier one is
// left to be sent again.
type Sink struct {
	cfg Config

	mu   sync.Mutex // guards sess and dialling
	sess *session
}

// New returns a sink for cfg, which it validates. It connects on the first
// Send.
func New(cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Sink{cfg: cfg.withDefaults()}, nil
}

// Close implements shipper.Sink.
func (s *Sink) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sess != nil {
		s.sess.close()
		s.sess = nil
	}
}

// Connect connects to the broker and checks the exchange, declaring it if
// CreateExchange is set, so that a wrong address or a missing exchange shows
// at start. Send does the same when it has to.
func (s *Sink) Connect(ctx context.Context) error {
	_, err := s.session(ctx)
	return err
}

// session returns the live session, dialling a new one if there is none.
func (s *Sink) session(ctx context.Context) (*session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sess != nil && !s.sess.dead() {
		return s.sess, nil
	}
	if s.sess != nil {
		s.sess.close()
		s.sess = nil
	}
	sess, err := dial(ctx, s.cfg)
	if err != nil {
		return nil, err
	}
	s.sess = sess
	return sess, nil
}

// Send implements shipper.Sink.
func (s *Sink) Send(ctx context.Context, msgs []shipper.Message) []error {
	errs := make([]error, len(msgs))
	if len(msgs) == 0 {
		return errs
	}
	if err := ctx.Err(); err != nil {
		fill(errs, fmt.Errorf("rabbitmq: not published: %w", err))
		return errs
	}
	sess, err := s.session(ctx)
	if err != nil {
		fill(errs, err)
		return errs
	}
	w := &wait{errs: errs, left: len(msgs), done: make(chan struct{})}
	for i := range msgs {
		m := &msgs[i]
		if err := sess.publish(ctx, w, i, m, s.cfg.Exchange, routingKey(m)); err != nil {
			// Nothing after a failed publish goes out: a later event of its
			// key must not overtake it.
			w.failFrom(i, len(msgs), err)
			break
		}
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		w.abandon(fmt.Errorf("rabbitmq: no confirm from the broker in time: %w", ctx.Err()))
	}
	holdBackAfterFailures(msgs, errs)
	return errs
}

// holdBackAfterFailures fails the messages of a key that come after one of
// its messages failed. Publishing is pipelined, so a later message may have
// been confirmed although an earlier one came back (a queue bound between
// the two); sent again, it arrives a second time but after its predecessor,
// which is what its consumers need.
func holdBackAfterFailures(msgs []shipper.Message, errs []error) {
	var failed map[string]error
	for i := range msgs {
		if msgs[i].Key == nil {
			continue
		}
		k := routingKey(&msgs[i]) + "\x00" + string(msgs[i].Key)
		if errs[i] != nil {
			if failed == nil {
				failed = make(map[string]error)
			}
			if _, ok := failed[k]; !ok {
				failed[k] = errs[i]
			}
			continue
		}
		if err := failed[k]; err != nil {
			errs[i] = fmt.Errorf("rabbitmq: sent again to keep its key's order: an earlier event of key %q failed: %w", msgs[i].Key, err)
		}
	}
}

func fill(errs []error, err error) {
	for i := range errs {
		errs[i] = err
	}
}

// routingKey is the topic the message's table chose in setup(), or its
// <schema>.<table>, as pgevents routes.
func routingKey(m *shipper.Message) string {
	if m.TopicChosen {
		return m.Topic
	}
	for _, h := range m.Headers {
		if h.Key == shipper.HeaderTable {
			return string(h.Value)
		}
	}
	return m.Topic
}

// wait is one Send's messages awaiting confirms.
type wait struct {
	mu        sync.Mutex
	errs      []error
	left      int
	done      chan struct{}
	abandoned bool
	settled   []bool
}

func (w *wait) settle(i int, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.abandoned {
		return // Send has returned; its results are no longer ours to write
	}
	if w.settled == nil {
		w.settled = make([]bool, len(w.errs))
	}
	if w.settled[i] {
		return
	}
	w.settled[i] = true
	w.errs[i] = err
	if w.left--; w.left == 0 {
		close(w.done)
	}
}

// failFrom fails messages from to end-1, none of which was published.
func (w *wait) failFrom(from, end int, err error) {
	for i := from; i < end; i++ {
		w.settle(i, err)
	}
}

// abandon fails what is not yet settled and stops taking results.
func (w *wait) abandon(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range w.errs {
		if w.settled == nil || !w.settled[i] {
			w.errs[i] = err
		}
	}
	w.abandoned = true
}

// pending is a published message awaiting its confirm.
type pending struct {
	w          *wait
	i          int
	messageID  string
	routingKey string
}

// session is a connection and its confirm-mode channel.
type session struct {
	cfg  Config
	conn *amqp.Connection
	ch   *amqp.Channel

	mu      sync.Mutex // guards publishing, pending, returned and err
	pending map[uint64]*pending
	// returned counts, by message id, the messages the broker returned
	// whose confirms have not been taken yet.
	returned map[string]int
	err      error // why the session died; nil while it lives
	gone     chan struct{}
}

// dial connects, opens the channel and checks the exchange.
func dial(ctx context.Context, cfg Config) (*session, error) {
	shown := Redact(cfg.URL)
	dialer := amqp.DefaultDial(30 * time.Second)
	if d, ok := ctx.Deadline(); ok {
		dialer = amqp.DefaultDial(max(time.Until(d), time.Millisecond))
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(cfg.ConnectionName)
	conn, err := amqp.DialConfig(cfg.URL, amqp.Config{Heartbeat: 10 * time.Second, Locale: "en_US", Properties: props, Dial: dialer})
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: connect to %s: %w", shown, scrub(err, cfg.URL))
	}
	ch, err := conn.Channel()
	if err == nil {
		err = checkExchange(ch, cfg)
	}
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	s := &session{
		cfg:      cfg,
		conn:     conn,
		ch:       ch,
		pending:  make(map[uint64]*pending),
		returned: make(map[string]int),
		gone:     make(chan struct{}),
	}
	// The client drops a notification that waits longer than a few seconds,
	// so these are buffered and read by one loop that never blocks.
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 4096))
	returns := ch.NotifyReturn(make(chan amqp.Return, 4096))
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	go s.loop(confirms, returns, closed)
	return s, nil
}

// checkExchange makes sure the exchange exists, declaring it when asked to.
func checkExchange(ch *amqp.Channel, cfg Config) error {
	if cfg.CreateExchange {
		if err := ch.ExchangeDeclare(cfg.Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			return fmt.Errorf("rabbitmq: declare exchange %q (RABBITMQ_CREATE_EXCHANGE=true): %w", cfg.Exchange, err)
		}
		return nil
	}
	if err := ch.ExchangeDeclarePassive(cfg.Exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return explain(err, cfg.Exchange, "")
	}
	return nil
}

// explain turns a broker's error into one that says what to do.
func explain(err error, exchange, routingKey string) error {
	var aerr *amqp.Error
	if errors.As(err, &aerr) && aerr.Code == amqp.NotFound && strings.Contains(aerr.Reason, "exchange") {
		return unavailable(exchange, fmt.Errorf("rabbitmq: exchange %q does not exist: declare it (rabbitmqadmin declare exchange name=%s type=topic durable=true) or set RABBITMQ_CREATE_EXCHANGE=true; events stay queued until then: %w",
			exchange, exchange, err))
	}
	if errors.As(err, &aerr) && aerr.Code == amqp.AccessRefused {
		return fmt.Errorf("rabbitmq: not allowed to publish to exchange %q: grant the user write permission on it (rabbitmqctl set_permissions): %w", exchange, err)
	}
	if routingKey != "" {
		return fmt.Errorf("rabbitmq: exchange %q, routing key %q: %w", exchange, routingKey, err)
	}
	return fmt.Errorf("rabbitmq: exchange %q: %w", exchange, err)
}

// scrub removes the URL, password and all, from a client error's text.
func scrub(err error, rawURL string) error {
	if strings.Contains(err.Error(), rawURL) {
		return errors.New(strings.ReplaceAll(err.Error(), rawURL, Redact(rawURL)))
	}
	return err
}

// dead reports whether the session has lost its channel, or is about to
// report so: publishing on it fails from the moment its error is set.
func (s *session) dead() bool {
	select {
	case <-s.gone:
		return true
	default:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil
}

func (s *session) close() {
	_ = s.conn.Close()
	<-s.gone // the loop has failed what was pending
}

// publish publishes m as message i of w.
func (s *session) publish(ctx context.Context, w *wait, i int, m *shipper.Message, exchange, rk string) error {
	p := amqp.Publishing{
		ContentType:  "application/json",
		DeliveryMode: amqp.Persistent,
		Timestamp:    m.Timestamp,
		Body:         m.Value,
		Headers:      make(amqp.Table, len(m.Headers)),
	}
	for _, h := range m.Headers {
		p.Headers[h.Key] = string(h.Value)
		if h.Key == shipper.HeaderEventID {
			p.MessageId = string(h.Value)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	// The confirm may come before Publish returns: it is expected first.
	tag := s.ch.GetNextPublishSeqNo()
	s.pending[tag] = &pending{w: w, i: i, messageID: p.MessageId, routingKey: rk}
	if err := s.ch.PublishWithContext(ctx, exchange, rk, true, false, p); err != nil {
		delete(s.pending, tag)
		return explain(err, exchange, rk)
	}
	return nil
}

// loop settles confirms and returns until the channel closes, then fails
// what is still pending.
func (s *session) loop(confirms <-chan amqp.Confirmation, returns <-chan amqp.Return, closed <-chan *amqp.Error) {
	// A return comes before its message's confirm, from the same reader,
	// so the returns are taken before each confirm is settled. The client
	// closes returns with the channel: a closed one is done with, not read
	// again.
	noteReturn := func(r amqp.Return, ok bool) {
		if !ok {
			returns = nil
			return
		}
		s.mu.Lock()
		s.returned[r.MessageId]++
		s.mu.Unlock()
	}
	takeReturns := func() {
		for returns != nil {
			select {
			case r, ok := <-returns:
				noteReturn(r, ok)
			default:
				return
			}
		}
	}
	for {
		select {
		case c, ok := <-confirms:
			if !ok {
				s.die(<-closed)
				return
			}
			takeReturns()
			s.mu.Lock()
			p := s.pending[c.DeliveryTag]
			delete(s.pending, c.DeliveryTag)
			var err error
			switch {
			case p == nil:
			case s.returned[p.messageID] > 0:
				if s.returned[p.messageID]--; s.returned[p.messageID] == 0 {
					delete(s.returned, p.messageID)
				}
				err = unavailable(s.cfg.Exchange+" "+p.routingKey, fmt.Errorf("rabbitmq: no queue is bound to exchange %q for routing key %q, so the broker returned the event; bind a queue (rabbitmqadmin declare binding source=%s destination=QUEUE routing_key=%s); events stay queued until then",
					s.cfg.Exchange, p.routingKey, s.cfg.Exchange, p.routingKey))
			case !c.Ack:
				err = fmt.Errorf("rabbitmq: the broker nacked the event (exchange %q, routing key %q): it could not take it; it will be sent again", s.cfg.Exchange, p.routingKey)
			}
			s.mu.Unlock()
			if p != nil {
				p.w.settle(p.i, err)
			}
		case r, ok := <-returns:
			noteReturn(r, ok)
		}
	}
}

// die fails every message still awaiting its confirm with why the channel
// closed.
func (s *session) die(reason *amqp.Error) {
	err := errors.New("rabbitmq: the connection to the broker closed before it confirmed the event; it will be sent again")
	if reason != nil {
		var cause error = reason
		if reason.Code == amqp.NotFound {
			cause = explain(reason, s.cfg.Exchange, "")
		}
		err = fmt.Errorf("rabbitmq: the broker closed the channel before it confirmed the event; it will be sent again: %w", cause)
	}
	s.mu.Lock()
	s.err = err
	left := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, p := range left {
		p.w.settle(p.i, err)
	}
	close(s.gone)
	_ = s.conn.Close()
}

// unavailable is the error of a target that cannot take events now: the
// shipper pauses its table alone.
func unavailable(target string, err error) error {
	return &shipper.UnavailableError{Target: target, Err: err}
}
