package shipper

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// KafkaConfig is how the Kafka sink treats topics.
type KafkaConfig struct {
	// CreateTopics creates a missing topic before producing to it. Default
	// false: a missing topic is an error, and its events stay queued.
	CreateTopics bool
	// TopicPartitions and TopicReplicationFactor shape created topics; -1
	// (the default) takes the broker's default.
	TopicPartitions        int32
	TopicReplicationFactor int16
}

// KafkaSink produces messages to Kafka with an idempotent producer waiting
// for all in-sync replicas (franz-go's defaults), keyed records partitioned by
// murmur2 exactly as the Java client does.
type KafkaSink struct {
	client *kgo.Client
	admin  *kadm.Client
	cfg    KafkaConfig
	// existing holds the topics known to exist, so that CreateTopics costs
	// one request per topic, not one per batch.
	mu       sync.Mutex
	existing map[string]bool
}

// NewKafkaSink connects to Kafka. opts are passed to franz-go as they are,
// after pg2kafka's own defaults, so they can override them.
func NewKafkaSink(cfg KafkaConfig, opts ...kgo.Opt) (*KafkaSink, error) {
	defaults := []kgo.Opt{
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.RequiredAcks(kgo.AllISRAcks()),
	}
	client, err := kgo.NewClient(append(defaults, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	return &KafkaSink{client: client, admin: kadm.NewClient(client), cfg: cfg, existing: make(map[string]bool)}, nil
}

// Client returns the franz-go client, for health checks and tests.
func (s *KafkaSink) Client() *kgo.Client { return s.client }

// Send implements Sink. Records are produced all at once and awaited
// together; each result is matched to its message through the record's
// promise, since franz-go settles them in completion order.
func (s *KafkaSink) Send(ctx context.Context, msgs []Message) []error {
	errs := make([]error, len(msgs))
	var failedTopics map[string]error
	if s.cfg.CreateTopics {
		failedTopics = s.createMissingTopics(ctx, msgs)
	}
	var wg sync.WaitGroup
	for i := range msgs {
		m := &msgs[i]
		if err := failedTopics[m.Topic]; err != nil {
			errs[i] = err
			continue
		}
		wg.Add(1)
		record := &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Timestamp: m.Timestamp}
		s.client.Produce(ctx, record, func(r *kgo.Record, err error) {
			if err != nil {
				errs[i] = explainProduceError(r.Topic, err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	return errs
}

func explainProduceError(topic string, err error) error {
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return fmt.Errorf("kafka: topic %q does not exist: create it (kafka-topics.sh --create --topic %s) or set KAFKA_CREATE_TOPICS=true: %w", topic, topic, err)
	case errors.Is(err, kerr.TopicAuthorizationFailed):
		return fmt.Errorf("kafka: not allowed to produce to topic %q: grant this client WRITE on it: %w", topic, err)
	}
	return fmt.Errorf("kafka: produce to %q: %w", topic, err)
}

// createMissingTopics creates the topics of msgs not yet known to exist and
// returns those that could not be created, with the reason.
func (s *KafkaSink) createMissingTopics(ctx context.Context, msgs []Message) map[string]error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var missing []string
	seen := make(map[string]bool)
	for i := range msgs {
		if t := msgs[i].Topic; !s.existing[t] && !seen[t] {
			seen[t] = true
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	failed := make(map[string]error)
	responses, err := s.admin.CreateTopics(ctx, s.cfg.TopicPartitions, s.cfg.TopicReplicationFactor, nil, missing...)
	if err != nil {
		for _, t := range missing {
			failed[t] = fmt.Errorf("kafka: create topic %q: %w", t, err)
		}
		return failed
	}
	for _, t := range missing {
		r, ok := responses[t]
		switch {
		case ok && (r.Err == nil || errors.Is(r.Err, kerr.TopicAlreadyExists)):
			s.existing[t] = true
		default:
			reason := r.Err
			if !ok {
				reason = errors.New("no answer from the broker")
			}
			failed[t] = fmt.Errorf("kafka: create topic %q: %w", t, reason)
		}
	}
	return failed
}

// Close implements Sink.
func (s *KafkaSink) Close() { s.client.Close() }
