package stream

import (
	"context"

	"github.com/pg2kafka/pg2kafka/shipper"
)

// Sink is the destination of a pg2kafka whose live stream is all there is
// (STREAM_ONLY=true): it acknowledges every event at once, and the shipper,
// once the events are off the queue, hands them to the Hub through
// Config.OnSettled. Events are shown to the viewers connected at that
// moment and to no one else: delivery is at most once.
type Sink struct{}

var _ shipper.Sink = Sink{}

// Send acknowledges every message.
func (Sink) Send(_ context.Context, msgs []shipper.Message) []error { return make([]error, len(msgs)) }

// Close does nothing: the sink holds no connection.
func (Sink) Close() {}
