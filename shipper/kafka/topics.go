package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/pg2kafka/pg2kafka/shipper"
)

// The sink keeps what it knows of each topic it was asked to produce to:
// that it exists, or that it is missing or not allowed. A topic first seen
// is looked up with one metadata request before anything is produced to it;
// a topic known to be unusable fails its messages at once with a
// *shipper.UnavailableError, without a request, and is looked up again in
// the background every CheckInterval. So a missing topic never has franz-go
// wait for it (seconds of metadata retries) while a claim is open, and a
// topic created meanwhile is known within CheckInterval.

// lookupTimeout bounds a metadata request made while a batch waits.
const lookupTimeout = 5 * time.Second

type topicState struct {
	// err is nil for a topic that exists, and otherwise why it cannot be
	// produced to, naming the fix.
	err error
}

// known returns what the sink knows of topic, and whether it knows it.
func (s *Sink) known(topic string) (error, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.topics[topic]
	if !ok {
		return nil, false
	}
	return st.err, true
}

func (s *Sink) setTopic(topic string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.topics[topic] = &topicState{err: err}
}

// unavailable returns the error for a message to topic, an
// *shipper.UnavailableError, if topic is known to be unusable.
func (s *Sink) unavailable(topic string) error {
	err, ok := s.known(topic)
	if !ok || err == nil {
		return nil
	}
	return &shipper.UnavailableError{Target: topic, Err: err, RetryAfter: s.untilNextCheck()}
}

// TargetReady implements shipper.TargetChecker: nil unless topic is known
// to be missing or not allowed, from the last look.
func (s *Sink) TargetReady(topic string) error { return s.unavailable(topic) }

func (s *Sink) untilNextCheck() time.Duration {
	s.mu.Lock()
	next := s.nextCheck
	s.mu.Unlock()
	// A little after the look, so that a retry finds its outcome.
	return max(time.Until(next), 0) + 10*time.Millisecond
}

// lookUp asks the brokers about topics and records what they say; with
// CreateTopics, it creates those missing. Topics it learns nothing about
// (the request failed) stay unknown: producing to them tells.
func (s *Sink) lookUp(ctx context.Context, topics []string) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	found, err := s.metadata(ctx, topics)
	if err != nil {
		return
	}
	var missing []string
	for _, t := range topics {
		code, ok := found[t]
		switch {
		case !ok:
		case code == nil:
			s.setTopic(t, nil)
		case errors.Is(code, kerr.UnknownTopicOrPartition) && s.cfg.CreateTopics:
			missing = append(missing, t)
		case isTopicUnusable(code):
			s.setTopic(t, explainProduceError(t, code))
		}
	}
	if len(missing) > 0 {
		s.createTopics(ctx, missing)
	}
}

// isTopicUnusable reports whether err says the topic itself cannot be
// produced to: missing, or not allowed.
func isTopicUnusable(err error) bool {
	return errors.Is(err, kerr.UnknownTopicOrPartition) || errors.Is(err, kerr.UnknownTopicID) ||
		errors.Is(err, kerr.TopicAuthorizationFailed) || errors.Is(err, kerr.InvalidTopicException)
}

// metadata returns, for each of topics the brokers answered about, the
// error they gave (nil: it exists), never asking them to create one.
func (s *Sink) metadata(ctx context.Context, topics []string) (map[string]error, error) {
	req := kmsg.NewPtrMetadataRequest()
	req.AllowAutoTopicCreation = false
	for _, t := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(t)
		req.Topics = append(req.Topics, rt)
	}
	resp, err := req.RequestWith(ctx, s.client)
	if err != nil {
		return nil, err
	}
	out := make(map[string]error, len(resp.Topics))
	for _, t := range resp.Topics {
		if t.Topic != nil {
			out[*t.Topic] = kerr.ErrorForCode(t.ErrorCode)
		}
	}
	return out, nil
}

// createTopics creates the topics and records the outcome of each.
func (s *Sink) createTopics(ctx context.Context, topics []string) {
	responses, err := s.admin.CreateTopics(ctx, s.cfg.TopicPartitions, s.cfg.TopicReplicationFactor, nil, topics...)
	if err != nil {
		return // unknown still: the next batch tries again
	}
	for _, t := range topics {
		r, ok := responses[t]
		switch {
		case ok && (r.Err == nil || errors.Is(r.Err, kerr.TopicAlreadyExists)):
			s.setTopic(t, nil)
		case ok:
			s.setTopic(t, fmt.Errorf("kafka: topic %q does not exist and could not be created (KAFKA_CREATE_TOPICS=true): %w; create it yourself, or give pg2kafka the CREATE permission", t, r.Err))
		}
	}
}

// watch is the sink's background loop: it checks that a broker answers,
// saying so when that changes, and looks up the topics known to be
// unusable, every CheckInterval until ctx ends.
func (s *Sink) watch(ctx context.Context) {
	defer close(s.watched)
	for {
		s.check(ctx)
		s.mu.Lock()
		s.nextCheck = time.Now().Add(s.cfg.CheckInterval)
		s.mu.Unlock()
		t := time.NewTimer(s.cfg.CheckInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// check is one round of watch.
func (s *Sink) check(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	err := s.client.Ping(ctx)
	if ctx.Err() != nil && err != nil && s.closing.Load() {
		return
	}
	s.noteReach(ctx, err)
	if err != nil {
		return
	}
	s.mu.Lock()
	var unusable []string
	for t, st := range s.topics {
		if st.err != nil {
			unusable = append(unusable, t)
		}
	}
	s.mu.Unlock()
	if len(unusable) == 0 {
		return
	}
	slices.Sort(unusable)
	found, err := s.metadata(ctx, unusable)
	if err != nil {
		return
	}
	var missing []string
	for _, t := range unusable {
		code, ok := found[t]
		switch {
		case ok && code == nil:
			s.setTopic(t, nil)
			s.cfg.Logger.Debug("topic found", slog.String("topic", t))
		case ok && errors.Is(code, kerr.UnknownTopicOrPartition) && s.cfg.CreateTopics:
			missing = append(missing, t)
		case ok && isTopicUnusable(code):
			s.setTopic(t, explainProduceError(t, code))
		}
	}
	if len(missing) > 0 {
		s.createTopics(ctx, missing)
	}
}

// reach is what the last check found of the brokers.
type reach struct {
	err      error // nil: a broker answered
	checked  bool
	warnedAt time.Time
}

// noteReach records the outcome of a ping and logs a change: connected,
// with the cluster's id, or unreachable, naming the brokers and the error,
// then again every reminderInterval while it lasts.
func (s *Sink) noteReach(ctx context.Context, err error) {
	s.mu.Lock()
	prev := s.reach
	s.reach.err, s.reach.checked = err, true
	now := time.Now()
	remind := err != nil && (prev.err == nil || now.Sub(prev.warnedAt) >= reminderInterval)
	if remind {
		s.reach.warnedAt = now
	}
	s.mu.Unlock()
	brokers := slog.String("brokers", strings.Join(s.cfg.Brokers, ","))
	switch {
	case err == nil && (prev.err != nil || !prev.checked):
		cluster := ""
		if md, merr := s.admin.BrokerMetadata(ctx); merr == nil {
			cluster = md.Cluster
		}
		s.cfg.Logger.Info("connected to Kafka", brokers, slog.String("cluster_id", cluster))
	case remind:
		s.cfg.Logger.Warn("cannot reach Kafka; events stay queued, retrying", brokers, slog.Any("error", err),
			slog.String("fix", "check KAFKA_PRODUCER_URL, the network, and the TLS and SASL settings"))
	}
}

// reminderInterval is how often an unreachable Kafka is logged again.
const reminderInterval = 30 * time.Second

// Reachable returns nil if a broker answered the sink's last check (made
// every CheckInterval), and otherwise what went wrong: a readiness probe's
// question, answered from what the sink already knows.
func (s *Sink) Reachable(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !s.reach.checked:
		return errors.New("no Kafka broker answers: not connected yet")
	case s.reach.err != nil:
		return fmt.Errorf("no Kafka broker answers: %w (brokers %s)", s.reach.err, strings.Join(s.cfg.Brokers, ","))
	}
	return nil
}

// Unavailable returns the topics known to be missing or not allowed, with
// why.
func (s *Sink) Unavailable() map[string]error {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]error)
	for t, st := range s.topics {
		if st.err != nil {
			out[t] = st.err
		}
	}
	return out
}
