package shipper

import (
	"context"
	"time"
)

// Message is one event addressed to a destination.
type Message struct {
	Topic string
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

// Sink is a destination for events: Kafka, or stdout for a dry run.
type Sink interface {
	// Send delivers msgs and reports, at the same index, nil for each message
	// the destination acknowledged and the reason for each it did not. It
	// returns once every message is settled; when ctx ends, messages not yet
	// acknowledged fail. Messages with the same key must be delivered in
	// the order given.
	Send(ctx context.Context, msgs []Message) []error
	// Close releases the sink's connections.
	Close()
}
