package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitResult is the RabbitMQ section: pg2kafka draining the queue to an
// exchange with publisher confirms, beside a bare amqp091-go publisher with
// confirms sending as many messages of the same size and properties to the
// same exchange in the same run.
type rabbitResult struct {
	Events           int     `json:"events"`
	Seconds          float64 `json:"seconds"`
	EventsPerSec     float64 `json:"events_per_sec"`
	BareEventsPerSec float64 `json:"bare_events_per_sec"`
	Ratio            float64 `json:"ratio"`
}

const targetRabbitRatio = 0.70

func (b *bench) runRabbitMQ(ctx context.Context) error {
	url := b.cfg.RabbitMQ.URL
	conn, err := amqp.Dial(url)
	if err != nil {
		return fmt.Errorf("rabbitmq: connect (is RabbitMQ running? script/test starts it): %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	exchange := "pg2kafka-bench-" + hex.EncodeToString(suffix)
	queue := exchange + "-q"
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return err
	}
	defer func() { _ = ch.ExchangeDelete(exchange, false, false) }()
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		return err
	}
	defer func() { _, _ = ch.QueueDelete(queue, false, false, false) }()
	if err := ch.QueueBind(queue, "#", exchange, false, nil); err != nil {
		return err
	}

	n := b.cfg.RabbitMQ.Events
	if _, err := fillQueue(ctx, b.pool, n, 200); err != nil {
		return err
	}
	start := time.Now()
	shipper, err := b.startShipperTo(b.cfg.BatchSize, "RABBITMQ_URL="+url, "RABBITMQ_EXCHANGE="+exchange)
	if err != nil {
		return err
	}
	defer func() { _, _ = shipper.Stop(stopTimeout) }()
	var queued int
	if err := b.waitFor(ctx, shipper, func() (bool, error) {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			return false, err
		}
		if queued = q.Messages; queued < n {
			return false, nil
		}
		return queueEmpty(ctx, b.pool)
	}); err != nil {
		return fmt.Errorf("rabbitmq drain: %w (%d of %d messages queued)", err, queued, n)
	}
	elapsed := time.Since(start)
	if _, err := shipper.Stop(stopTimeout); err != nil {
		return err
	}

	// The bare publisher sends a message pg2kafka sent, n times over.
	sample, ok, err := ch.Get(queue, true)
	if err != nil || !ok {
		return fmt.Errorf("rabbitmq: read back a message: %v", err)
	}
	if _, err := ch.QueuePurge(queue, false); err != nil {
		return err
	}
	bare, err := publishBare(ctx, conn, exchange, sample, n)
	if err != nil {
		return err
	}
	r := &rabbitResult{
		Events:           n,
		Seconds:          elapsed.Seconds(),
		EventsPerSec:     float64(n) / elapsed.Seconds(),
		BareEventsPerSec: float64(n) / bare.Seconds(),
	}
	r.Ratio = r.EventsPerSec / r.BareEventsPerSec
	b.report.RabbitMQ = r
	b.log.Info("rabbitmq drain", "events_per_sec", int(r.EventsPerSec), "bare_events_per_sec", int(r.BareEventsPerSec), "ratio", fmt.Sprintf("%.2f", r.Ratio))
	return nil
}

// publishBare publishes n copies of sample, persistent and mandatory, on one
// channel in confirm mode, and returns how long it took until the broker
// had confirmed them all.
func publishBare(ctx context.Context, conn *amqp.Connection, exchange string, sample amqp.Delivery, n int) (time.Duration, error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return 0, err
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, n))
	start := time.Now()
	for i := range n {
		err := ch.PublishWithContext(ctx, exchange, sample.RoutingKey, true, false, amqp.Publishing{
			ContentType:  sample.ContentType,
			DeliveryMode: amqp.Persistent,
			MessageId:    strconv.Itoa(i),
			Timestamp:    sample.Timestamp,
			Headers:      sample.Headers,
			Body:         sample.Body,
		})
		if err != nil {
			return 0, err
		}
	}
	for range n {
		select {
		case c := <-confirms:
			if !c.Ack {
				return 0, fmt.Errorf("bare publisher: message %d nacked", c.DeliveryTag)
			}
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return time.Since(start), nil
}
