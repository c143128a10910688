package kafka

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/sinktest"
)

// maxMessageBytes is the broker's message.max.bytes in the suite: a refused
// message is made larger than that, with bytes no codec can shrink.
const maxMessageBytes = 100_000

// suitePartitions is the partition count of the suite's topics: enough that
// the keys the suite fails or stalls alone each have a partition of their
// own (see TestSuiteKeysApart).
const suitePartitions = 16

// suiteKeys are the keys of the suite's cases that fail or stall one key
// while the others go on.
var suiteKeys = []string{"a", "b", "c", "slow"}

// partitionOf is the partition the sink's partitioner gives key in a topic
// of suitePartitions partitions.
func partitionOf(key []byte) int32 {
	return int32(newPartitioner().ForTopic("").Partition(&kgo.Record{Key: key}, suitePartitions))
}

// receiver is what the suite's in-process Kafka holds, read back with a
// consumer of every topic.
//
// Kafka answers a produce per partition, so a key is failed or stalled
// through its partition: every topic's partition of that key. That is the
// key alone only if no other key of the case shares the partition, which
// TestSuiteKeysApart checks for the suite's keys and Received checks for
// what was really sent.
type receiver struct {
	cluster *kfake.Cluster

	mu       sync.Mutex
	isolated map[int32][]byte // partition → the one key it may carry
}

// Received reads every record of every topic, each partition in offset
// order, which keeps each key's order: a key has one partition.
func (r *receiver) Received(t testing.TB) []sinktest.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := kgo.NewClient(kgo.SeedBrokers(r.cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ends, err := kadm.NewClient(admin).ListEndOffsets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	var topics []string
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil && o.Offset > 0 {
			total += o.Offset
			topics = append(topics, o.Topic)
		}
	})
	if total == 0 {
		return nil
	}
	consumer, err := kgo.NewClient(kgo.SeedBrokers(r.cluster.ListenAddrs()...), kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	byPartition := make(map[string][]sinktest.Delivery)
	intruders := make(map[string]bool) // topic and key, said once
	var order []string
	for n := int64(0); n < total; {
		fetches := consumer.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records", n, total)
		}
		fetches.EachRecord(func(rec *kgo.Record) {
			if key, ok := r.isolatedKey(rec.Partition); ok && !bytes.Equal(rec.Key, key) && !intruders[rec.Topic+"\x00"+string(rec.Key)] {
				intruders[rec.Topic+"\x00"+string(rec.Key)] = true
				t.Errorf("topic %s partition %d, given over to key %q to fail or stall it alone, also carries key %q: the case does not show that other keys go on; use more partitions (suitePartitions)",
					rec.Topic, rec.Partition, key, rec.Key)
			}
			p := rec.Topic + "/" + strconv.Itoa(int(rec.Partition))
			if _, ok := byPartition[p]; !ok {
				order = append(order, p)
			}
			byPartition[p] = append(byPartition[p], sinktest.Delivery{Key: rec.Key, Value: rec.Value})
			n++
		})
	}
	var out []sinktest.Delivery
	for _, p := range order {
		out = append(out, byPartition[p]...)
	}
	return out
}

// Fail has the broker answer every produce with an error, keeping nothing.
func (r *receiver) Fail(testing.TB) (restore func()) {
	f := r.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.UnknownServerError, Count: -1})
	return f.Remove
}

// isolate gives key's partition over to key, and returns the partition.
func (r *receiver) isolate(t testing.TB, key []byte) int32 {
	p := partitionOf(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	if other, ok := r.isolated[p]; ok && !bytes.Equal(other, key) {
		t.Fatalf("keys %q and %q share partition %d of %d; the receiver cannot fail or stall one alone", other, key, p, suitePartitions)
	}
	if r.isolated == nil {
		r.isolated = make(map[int32][]byte)
	}
	r.isolated[p] = key
	return p
}

func (r *receiver) isolatedKey(p int32) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key, ok := r.isolated[p]
	return key, ok
}

// FailKey has the broker answer the next n produce requests that carry
// key's partition with UNKNOWN_SERVER_ERROR for that partition, keeping
// nothing of it, while the other partitions of the same requests are
// written and acknowledged.
//
// The error is one franz-go gives up on at once. A retriable one
// (NOT_LEADER_FOR_PARTITION, REQUEST_TIMED_OUT) is retried inside the
// client, in order, within the same Send, so Send would see no failure and
// the case would show nothing; TestRetriableErrorsStayInsideSend shows that
// side.
func (r *receiver) FailKey(t testing.TB, key []byte, n int) {
	p := r.isolate(t, key)
	r.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Partitions: []int32{p}, Err: kerr.UnknownServerError, Count: n})
}

// Stall holds every produce request that carries key's partition unanswered
// until release is called; the broker then writes and answers it.
//
// A produce request carries every partition the client has records for on
// that broker, and a broker answers a connection's requests in order, so
// holding one request holds the partitions beside it and every request
// behind it. Stall therefore puts key's partition of each topic on a broker
// of its own, leading nothing else, as soon as the topic is created and
// before the client learns where its partitions are.
func (r *receiver) Stall(t testing.TB, key []byte) (release func()) {
	p := r.isolate(t, key)
	var (
		mu       sync.Mutex
		created  []string
		placed   = make(map[string]bool)
		released = make(chan struct{})
		once     sync.Once
	)
	r.cluster.ControlKey(int16(kmsg.CreateTopics), func(req kmsg.Request) (kmsg.Response, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		for _, rt := range req.(*kmsg.CreateTopicsRequest).Topics {
			created = append(created, rt.Topic)
		}
		return nil, nil, false
	})
	// Every metadata answer after a topic's creation is the first the
	// client can learn its leaders from, so the topic is laid out before it.
	r.cluster.ControlKey(int16(kmsg.Metadata), func(kmsg.Request) (kmsg.Response, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		for _, topic := range created {
			if !placed[topic] {
				placed[topic] = r.setApart(topic, p)
			}
		}
		return nil, nil, false
	})
	r.cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		var carries bool
		var beside []int32
		for _, rt := range req.(*kmsg.ProduceRequest).Topics {
			for _, rp := range rt.Partitions {
				if rp.Partition == p {
					carries = true
				} else {
					beside = append(beside, rp.Partition)
				}
			}
		}
		if !carries {
			return nil, nil, false
		}
		if len(beside) > 0 {
			t.Errorf("the produce request holding key %q's partition %d also carries partitions %v, held with it: the partitions were not laid out apart", key, p, beside)
		}
		r.cluster.SleepControl(func() { <-released })
		return nil, nil, false
	})
	return func() { once.Do(func() { close(released) }) }
}

// setApart makes broker 1 the leader of topic's partition p and broker 0
// that of every other partition. It reports false if the topic has no such
// partitions, not created after all.
func (r *receiver) setApart(topic string, p int32) bool {
	for i := range int32(suitePartitions) {
		node := int32(0)
		if i == p {
			node = 1
		}
		if err := r.cluster.MoveTopicPartition(topic, i, node); err != nil {
			return false
		}
	}
	return true
}

// Refuse makes m larger than the broker takes, with random hex that no
// compression brings under the limit.
func (r *receiver) Refuse(t testing.TB, m *shipper.Message) {
	b := make([]byte, maxMessageBytes)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	m.Value = []byte(`{"huge":"` + hex.EncodeToString(b) + `"}`)
}

// TestSuiteKeysApart: the suite's keys each have a partition of their own,
// so that failing or stalling one leaves the others untouched.
func TestSuiteKeysApart(t *testing.T) {
	t.Parallel()
	owner := make(map[int32]string)
	for _, k := range suiteKeys {
		p := partitionOf([]byte(k))
		if other, ok := owner[p]; ok {
			t.Fatalf("keys %q and %q share partition %d of %d: raise suitePartitions until they do not", other, k, p, suitePartitions)
		}
		owner[p] = k
	}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	sinktest.Run(t, func(t *testing.T) (shipper.Sink, sinktest.Receiver) {
		// Two brokers, so that Stall can give a partition a broker alone.
		cluster, err := kfake.NewCluster(kfake.NumBrokers(2),
			kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(maxMessageBytes)}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cluster.Close)
		sink, err := New(Config{Brokers: cluster.ListenAddrs(), CreateTopics: true, TopicPartitions: suitePartitions, TopicReplicationFactor: 1})
		if err != nil {
			t.Fatal(err)
		}
		return sink, &receiver{cluster: cluster}
	})
}
