package shipper

import (
	"context"
	"time"
)

// Message is one event addressed to a destination.
type Message struct {
	// Topic is the event's target at the destination: the Kafka topic, or
	// what a sink derives its endpoint, exchange or routing key from. All
	// events of a table share one, unless the table's topic was changed
	// while events were queued.
	Topic string
	// TopicChosen is true when Topic is the one the table's setup(topic =>
	// …) chose, rather than the name pg2kafka derives from the table: a
	// RabbitMQ sink routes by a chosen topic, and by <schema>.<table>
	// otherwise.
	TopicChosen bool
	// Key is the event's external ID; nil when the external ID is null.
	Key   []byte
	Value []byte
	// Headers name the event, its statement and its table, so that a
	// consumer can deduplicate and route without parsing Value.
	Headers   []Header
	Timestamp time.Time
}

// Header is a record header.
type Header struct {
	Key   string
	Value []byte
}

// Sink is a destination for events: Kafka, a webhook, RabbitMQ, or stdout
// for a dry run. Each lives in its own package beside this one (stdout
// here) and passes the conformance suite in shipper/sinktest.
//
// The contract, which the shipper relies on to delete exactly what was
// delivered and to keep each key's events in order:
//
//   - Send(ctx, msgs) returns a slice of len(msgs): at index i, nil if the
//     destination acknowledged msgs[i], its reason otherwise. It returns
//     only once every message is settled one way or the other; nothing is
//     acknowledged after Send returns, and a message never sent is not
//     acknowledged.
//   - Order: messages with the same Topic and Key are delivered in the
//     order given, never two of them in flight where the destination could
//     reorder them. If a message fails, no later message of its Topic and
//     Key in this Send is delivered: each of them fails too (with the
//     earlier one's error or its own), since the shipper will send them all
//     again, in order. Other messages are independent: one failing does not
//     fail them, except as the destination itself couples them. (Order is
//     per target because consumers read a target alone, and because one
//     table's unusable target must not hold up another table's events that
//     happen to share an external ID.)
//   - Context: when ctx ends, Send stops waiting and fails every message not
//     yet acknowledged (wrapping ctx.Err()); those acknowledged stay nil.
//   - A *RejectedError means the destination refuses that message for what
//     it is (too large, invalid) and would refuse it again whatever the
//     retry. The shipper moves that one event to the dead-letter table. A
//     sink must not reject a message for the failure of another in its
//     batch (Kafka fails a partition's whole batch together; the sink must
//     find out which record it refuses), nor for anything about the target
//     or the connection.
//   - An *UnavailableError means the target itself (the topic, endpoint,
//     exchange or routing key) cannot take messages now: missing, not
//     authorised, answering 5xx. The shipper pauses the table of those
//     messages alone, its events queued, and retries after RetryAfter (or
//     its own backoff when that is zero); other tables and targets go on.
//     A sink that knows a target is unavailable fails its messages at once,
//     without waiting on the network, so that no claim is held open for a
//     target known to be down. Every message of that target in the Send
//     carries an *UnavailableError.
//   - Any other error is a failure of this attempt (a timeout, a lost
//     connection, a broker down): the message stays queued and is retried
//     with backoff.
//   - Send is called by several workers at once and must be safe for that.
type Sink interface {
	// Send delivers msgs and reports, at the same index, nil for each
	// message the destination acknowledged and the reason for each it did
	// not, as the contract above says.
	Send(ctx context.Context, msgs []Message) []error
	// Close releases the sink's connections. Send is not called after it.
	Close()
}

// TargetChecker is implemented by sinks that learn without sending whether
// a target they reported unavailable is usable again (the Kafka sink looks
// the topic up in the background). Before a paused table's retry, the
// shipper asks TargetReady and keeps the table paused while it returns an
// error, so that a target still missing costs no claim of its events.
type TargetChecker interface {
	// TargetReady returns nil if target may be sent to, or an
	// *UnavailableError saying why not and when the sink will know more.
	TargetReady(target string) error
}

// RejectedError is a Sink's answer for a message its destination refuses
// for what it is (too large, invalid) and would refuse again however often
// it were sent. The shipper moves the message's event to the dead-letter
// table rather than retry it: left queued, it would hold back the events of
// its key for good.
type RejectedError struct {
	// Err is the destination's reason.
	Err error
	// Attempts is how many sends of the message failed, the last alone.
	Attempts int
	// FirstFailedAt and LastFailedAt are when the first and the last
	// failed.
	FirstFailedAt, LastFailedAt time.Time
}

func (e *RejectedError) Error() string { return e.Err.Error() }

func (e *RejectedError) Unwrap() error { return e.Err }

// UnavailableError is a Sink's answer for a message whose target cannot
// take messages now: a Kafka topic that does not exist or that pg2kafka may
// not write to, a webhook endpoint answering 5xx, a RabbitMQ routing key no
// queue is bound to. The shipper pauses the message's table, alone, until
// RetryAfter has passed; its events stay queued.
type UnavailableError struct {
	// Target names what is unavailable: the topic, URL or routing key.
	Target string
	// Err is why, naming the target and what to do about it.
	Err error
	// RetryAfter is how long the destination asks to wait before the next
	// attempt (a Retry-After header, or the time until the sink next looks
	// the target up); zero leaves it to the shipper's backoff.
	RetryAfter time.Duration
}

// Error is Err's text, which names the target.
func (e *UnavailableError) Error() string { return e.Err.Error() }

func (e *UnavailableError) Unwrap() error { return e.Err }
