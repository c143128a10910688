package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pg2kafka/pg2kafka/outbox"
	"github.com/pg2kafka/pg2kafka/shipper/rabbitmq"
	"github.com/pg2kafka/pg2kafka/shipper/webhook"
)

// The destinations a pg2kafka can ship to, each chosen by one setting.
const (
	destKafka    = "kafka"
	destWebhook  = "webhook"
	destRabbitMQ = "rabbitmq"
	destDryRun   = "dry-run"
	destStream   = "stream"
)

// destinationKinds are what each destination registers in the queue, so
// that the shippers of one database agree on one.
var destinationKinds = map[string]string{
	destKafka:    outbox.DestinationKafka,
	destWebhook:  outbox.DestinationWebhook,
	destRabbitMQ: outbox.DestinationRabbitMQ,
	destDryRun:   outbox.DestinationStdout,
	destStream:   outbox.DestinationStream,
}

// destinationConfig is the choice of destination and the settings of those
// other than Kafka.
type destinationConfig struct {
	// Destination is the one chosen: destKafka, destWebhook, …; set once
	// the settings are read.
	Destination string
	// Webhook is the webhook's settings, checked by its Validate when
	// WEBHOOK_URL is the destination.
	Webhook webhook.Config
	// RabbitMQ is RabbitMQ's, checked when RABBITMQ_URL is.
	RabbitMQ rabbitmq.Config
	// StreamOnly makes the live stream the destination: events are taken
	// off the queue once shown to whoever watches. Default false.
	StreamOnly bool
}

// settings is the settings table: every setting of every command.
func settings() []setting { return append(coreSettings(), destinationSettings()...) }

// destinationSettings are the settings of the destinations other than Kafka,
// and of the choice between them.
func destinationSettings() []setting {
	return []setting{
		{env: []string{"WEBHOOK_URL"}, flag: "webhook-url",
			help: "Ship to a webhook instead: each event POSTed to this http:// or https:// URL, in which {schema}, {table} and {topic} stand for the event's. Default: none.",
			parse: func(c *Config, v string) error {
				c.Webhook.URL = v
				return nil
			}},
		{env: []string{"WEBHOOK_HEADERS"}, flag: "webhook-headers", secret: true,
			help: "Headers added to every webhook request, one \"Name: value\" a line, e.g. 'Authorization: Bearer …'; never logged. Default: none.",
			parse: func(c *Config, v string) error {
				h, err := webhook.ParseHeaders(v)
				if err != nil {
					return err
				}
				c.Webhook.Headers = h
				return nil
			}},
		{env: []string{"WEBHOOK_SECRET"}, flag: "webhook-secret", secret: true,
			help:  "Signs every webhook request the Standard Webhooks way (webhook-signature): whsec_<base64 key>, or any other text as the key itself. Default: none, unsigned.",
			parse: func(c *Config, v string) error { c.Webhook.Secret = v; return nil }},
		{env: []string{"WEBHOOK_TIMEOUT"}, flag: "webhook-timeout", def: "10s",
			help:  "Longest one webhook request may wait for its answer before it counts as failed and is retried.",
			parse: durationInto(func(c *Config) *time.Duration { return &c.Webhook.Timeout })},
		{env: []string{"WEBHOOK_CA_FILE"}, flag: "webhook-ca-file",
			help:  "PEM file of the CAs that sign the webhook endpoint's certificate, trusted instead of the system's; certificates are always verified. Default: none.",
			parse: func(c *Config, v string) error { c.Webhook.CAFile = v; return nil }},
		{env: []string{"WEBHOOK_BATCH_SIZE"}, flag: "webhook-batch-size", def: "1",
			help:  "Events per webhook request (1 to 1000); above 1 the body is a JSON array of one endpoint's events, in queue order.",
			parse: intInto(1, webhook.MaxBatchSize, func(c *Config) *int { return &c.Webhook.BatchSize })},
		{env: []string{"WEBHOOK_CONCURRENCY"}, flag: "webhook-concurrency", def: "16",
			help:  "Most webhook requests in flight to one endpoint (1 to 1024); one key never has two.",
			parse: intInto(1, webhook.MaxConcurrency, func(c *Config) *int { return &c.Webhook.Concurrency })},
		{env: []string{"RABBITMQ_URL"}, flag: "rabbitmq-url", secret: true,
			help:  "Ship to RabbitMQ instead: amqp://user:pass@host:5672/vhost, or amqps://… for TLS; the password is never shown. Needs RABBITMQ_EXCHANGE. Default: none.",
			parse: func(c *Config, v string) error { c.RabbitMQ.URL = v; return nil }},
		{env: []string{"RABBITMQ_EXCHANGE"}, flag: "rabbitmq-exchange",
			help:  "Exchange the events are published to, with routing key <schema>.<table>. Required with RABBITMQ_URL.",
			parse: func(c *Config, v string) error { c.RabbitMQ.Exchange = v; return nil }},
		{env: []string{"RABBITMQ_CREATE_EXCHANGE"}, boolean: true, flag: "rabbitmq-create-exchange", def: "false",
			help:  "Declare RABBITMQ_EXCHANGE as a durable topic exchange if it does not exist, instead of keeping the events queued until someone does.",
			parse: boolInto(func(c *Config) *bool { return &c.RabbitMQ.CreateExchange })},
		{env: []string{"STREAM_ONLY"}, boolean: true, flag: "stream-only", def: "false",
			help:  "Make the live stream the destination: events are taken off the queue once shown to the viewers connected, and to no one else (at most once).",
			parse: boolInto(func(c *Config) *bool { return &c.StreamOnly })},
	}
}

func intInto(lo, hi int, field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("must be a whole number from %d to %d", lo, hi)
		}
		*field(c) = n
		return nil
	}
}

// chooseDestination sets cfg.Destination from the one destination setting
// given, and checks that destination's settings. None, or more than one, is
// a configuration error naming them. The settings of destinations not
// chosen are left alone, so that switching is a matter of one variable.
func chooseDestination(cfg *Config, given map[string]bool) error {
	var chosen []string
	var names []string
	add := func(dest, name string, on bool) {
		if on {
			chosen, names = append(chosen, dest), append(names, name)
		}
	}
	add(destKafka, "KAFKA_PRODUCER_URL", given["kafka-producer-url"])
	add(destWebhook, "WEBHOOK_URL", given["webhook-url"])
	add(destRabbitMQ, "RABBITMQ_URL", given["rabbitmq-url"])
	add(destDryRun, "DRY_RUN=true", cfg.DryRun)
	add(destStream, "STREAM_ONLY=true", cfg.StreamOnly)
	switch len(chosen) {
	case 0:
		return &configError{"no destination is set: give one of KAFKA_PRODUCER_URL (e.g. kafka://localhost:9092), WEBHOOK_URL (e.g. https://example.com/hooks/{table}), RABBITMQ_URL (e.g. amqp://guest:guest@localhost:5672/), or set DRY_RUN=true to print events instead"}
	case 1:
	default:
		set := strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
		are := "are both set"
		if len(names) > 2 {
			are = "are all set"
		}
		return &configError{set + " " + are + ", but pg2kafka ships to one destination: keep one of them (see docs/destinations.md)"}
	}
	cfg.Destination = chosen[0]
	var err error
	switch cfg.Destination {
	case destWebhook:
		err = cfg.Webhook.Validate()
	case destRabbitMQ:
		err = cfg.RabbitMQ.Validate()
	}
	if err != nil {
		return &configError{err.Error()}
	}
	return nil
}
