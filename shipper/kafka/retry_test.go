package kafka

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/sinktest"
)

// newKeyedSink is a cluster of brokers and a sink to it that creates topics
// of suitePartitions partitions, so that the keys of sinktest.Messages each
// have a partition alone.
func newKeyedSink(t *testing.T, brokers int, opts ...kgo.Opt) (*Sink, *receiver) {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	sink, err := New(Config{Brokers: cluster.ListenAddrs(), CreateTopics: true, TopicPartitions: suitePartitions, TopicReplicationFactor: 1}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	return sink, &receiver{cluster: cluster}
}

func sendWithin(t *testing.T, sink shipper.Sink, msgs []shipper.Message) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return sink.Send(ctx, msgs)
}

// TestRetriableErrorsStayInsideSend: a partition answering with an error
// Kafka calls retriable is retried by franz-go within the same Send, in
// order, so Send acknowledges every message, and each is on the topic once,
// also after REQUEST_TIMED_OUT, which the broker answers after writing the
// records: the idempotent producer's sequence numbers let the broker drop
// the second copy.
func TestRetriableErrorsStayInsideSend(t *testing.T) {
	t.Parallel()
	for _, code := range []*kerr.Error{kerr.NotLeaderForPartition, kerr.RequestTimedOut, kerr.NotEnoughReplicas} {
		t.Run(code.Message, func(t *testing.T) {
			t.Parallel()
			// The metadata a retry waits for may be fetched at once, not
			// after franz-go's five seconds.
			sink, recv := newKeyedSink(t, 1, kgo.MetadataMinAge(10*time.Millisecond))
			msgs := sinktest.Messages("retriable", 30, []byte("a"), []byte("b"), []byte("c"))
			p := recv.isolate(t, []byte("a"))
			f := recv.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Partitions: []int32{p}, Err: code, Count: 2})
			for i, err := range sendWithin(t, sink, msgs) {
				if err != nil {
					t.Errorf("message %d of key %q: %v; want it acknowledged after franz-go's own retries", i, msgs[i].Key, err)
				}
			}
			if n := f.Hits(); n != 2 {
				t.Errorf("the broker answered %s %d times; want 2", code.Message, n)
			}
			sinktest.CheckReceived(t, recv, msgs, nil)
		})
	}
}

// TestNothingOvertakesAFailedRecord: a partition's batch failing, for the
// broker or as too large, fails every later record of its keys in the Send,
// however soon the broker answers: were any of them sent while the Send
// still handed records over, franz-go would fail only those it held, and the
// later ones would be written ahead of the earlier ones' retry. A record
// buffer of four, passed through to franz-go, would have the Send wait for
// the first answers after four records; the sink's own bound must win.
func TestNothingOvertakesAFailedRecord(t *testing.T) {
	t.Parallel()
	for _, code := range []*kerr.Error{kerr.UnknownServerError, kerr.MessageTooLarge} {
		t.Run(code.Message, func(t *testing.T) {
			t.Parallel()
			sink, recv := newKeyedSink(t, 1, kgo.MaxBufferedRecords(4))
			msgs := sinktest.Messages("overtake", 40, []byte("a"), []byte("b"))
			p := recv.isolate(t, []byte("a"))
			recv.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Partitions: []int32{p}, Err: code})
			errs := sendWithin(t, sink, msgs)
			first := -1
			for i, err := range errs {
				switch {
				case string(msgs[i].Key) != "a":
					if err != nil {
						t.Fatalf("message %d of key b: %v; want it acknowledged, its partition never failed", i, err)
					}
				case err != nil && first < 0:
					first = i
					if _, ok := errors.AsType[*shipper.RejectedError](err); ok {
						t.Fatalf("message %d refused (%v); Kafka refuses none for itself", i, err)
					}
				case err == nil && first >= 0:
					t.Fatalf("message %d of key a acknowledged although message %d of that key failed (%v)", i, first, errs[first])
				}
			}
			var retry []shipper.Message
			for i, err := range errs {
				if err != nil {
					retry = append(retry, msgs[i])
				}
			}
			if refused := sinktest.ShipAll(t, sink, retry); len(refused) > 0 {
				t.Errorf("refused %v; Kafka refuses none for itself", refused)
			}
			sinktest.CheckReceived(t, recv, msgs, nil)
		})
	}
}

// TestAcknowledgedBeforeTheDeadlineStays: when the context ends while one
// key's records go unanswered, every record Kafka acknowledged before is
// acknowledged by Send, however many answers are waiting to be read.
func TestAcknowledgedBeforeTheDeadlineStays(t *testing.T) {
	t.Parallel()
	sink, recv := newKeyedSink(t, 2)
	msgs := append(sinktest.Messages("deadline", 300, []byte("a"), []byte("b")), sinktest.Messages("deadline", 1, []byte("slow"))...)
	release := recv.Stall(t, []byte("slow"))
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	errs := sink.Send(ctx, msgs)
	for i, err := range errs[:300] {
		if err != nil {
			t.Fatalf("message %d of key %q: %v; want it acknowledged, only key slow stalled", i, msgs[i].Key, err)
		}
	}
	if !errors.Is(errs[300], context.DeadlineExceeded) {
		t.Errorf("the stalled message: %v; want the context's end", errs[300])
	}
}
