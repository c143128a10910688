package shipper_test

import (
	"testing"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/kafka"
)

// An event the application emitted is not a row change: it ships as its
// payload, byte for byte, in every format.
func TestEventFormatsShipEmittedEventsAsWritten(t *testing.T) {
	t.Parallel()
	for _, format := range []shipper.Format{shipper.FormatDebezium, shipper.FormatHasura, shipper.FormatSkor, shipper.FormatPgevents} {
		t.Run(format.String(), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			const topic = "shop.order-events"
			b.exec(`SELECT pg2kafka.emit(topic => 'shop.order-events', key => '42', payload => '{"type":"OrderPaid",  "order":42}')`)
			b.createTopics(topic)
			b.start(shipper.Config{Format: format, DebeziumTombstones: format == shipper.FormatDebezium}, kafka.Config{})
			records := b.consume(1, topic)
			if got, want := records[0].Value, `{"type":"OrderPaid",  "order":42}`; got != want {
				t.Errorf("value %s, want the payload %s", got, want)
			}
			if records[0].Key == nil || *records[0].Key != "42" {
				t.Errorf("key %v, want 42", records[0].Key)
			}
		})
	}
}
