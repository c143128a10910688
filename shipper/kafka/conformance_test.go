package kafka

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
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

// receiver is what the suite's in-process Kafka holds, read back with a
// consumer of every topic.
type receiver struct {
	cluster *kfake.Cluster
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
	var order []string
	for n := int64(0); n < total; {
		fetches := consumer.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records", n, total)
		}
		fetches.EachRecord(func(rec *kgo.Record) {
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

// Refuse makes m larger than the broker takes, with random hex that no
// compression brings under the limit.
func (r *receiver) Refuse(t testing.TB, m *shipper.Message) {
	b := make([]byte, maxMessageBytes)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	m.Value = []byte(`{"huge":"` + hex.EncodeToString(b) + `"}`)
}

func TestConformance(t *testing.T) {
	t.Parallel()
	sinktest.Run(t, func(t *testing.T) (shipper.Sink, sinktest.Receiver) {
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(3),
			kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(maxMessageBytes)}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cluster.Close)
		sink, err := New(Config{Brokers: cluster.ListenAddrs(), CreateTopics: true, TopicPartitions: 3, TopicReplicationFactor: 1})
		if err != nil {
			t.Fatal(err)
		}
		return sink, &receiver{cluster: cluster}
	})
}
