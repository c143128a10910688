package httpserver

import (
	"net"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
)

// kafkaHooks gives one kprom.Metrics to every client of the Kafka sink,
// which has a second client for probing refused records: kprom registers its
// collectors once per client it is told of, and a second registration would
// collide with the first. The first client is the one kprom reads buffered
// records from; the broker traffic of all of them is counted together.
type kafkaHooks struct {
	m     *kprom.Metrics
	mu    sync.Mutex
	first *kgo.Client
}

func newKafkaHooks(m *kprom.Metrics) *kafkaHooks { return &kafkaHooks{m: m} }

var (
	_ kgo.HookNewClient           = (*kafkaHooks)(nil)
	_ kgo.HookClientClosed        = (*kafkaHooks)(nil)
	_ kgo.HookBrokerConnect       = (*kafkaHooks)(nil)
	_ kgo.HookBrokerDisconnect    = (*kafkaHooks)(nil)
	_ kgo.HookBrokerThrottle      = (*kafkaHooks)(nil)
	_ kgo.HookProduceBatchWritten = (*kafkaHooks)(nil)
	_ kgo.HookFetchBatchRead      = (*kafkaHooks)(nil)
	_ kgo.HookBrokerRead          = (*kafkaHooks)(nil)
	_ kgo.HookBrokerWrite         = (*kafkaHooks)(nil)
	_ kgo.HookBrokerE2E           = (*kafkaHooks)(nil)
)

func (h *kafkaHooks) OnNewClient(c *kgo.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.first == nil {
		h.first = c
		h.m.OnNewClient(c)
	}
}

func (h *kafkaHooks) OnClientClosed(c *kgo.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.first == c {
		h.m.OnClientClosed(c)
	}
}

func (h *kafkaHooks) OnBrokerConnect(meta kgo.BrokerMetadata, d time.Duration, c net.Conn, err error) {
	h.m.OnBrokerConnect(meta, d, c, err)
}

func (h *kafkaHooks) OnBrokerDisconnect(meta kgo.BrokerMetadata, c net.Conn) {
	h.m.OnBrokerDisconnect(meta, c)
}

func (h *kafkaHooks) OnBrokerThrottle(meta kgo.BrokerMetadata, d time.Duration, after bool) {
	h.m.OnBrokerThrottle(meta, d, after)
}

func (h *kafkaHooks) OnProduceBatchWritten(meta kgo.BrokerMetadata, topic string, partition int32, m kgo.ProduceBatchMetrics) {
	h.m.OnProduceBatchWritten(meta, topic, partition, m)
}

func (h *kafkaHooks) OnFetchBatchRead(meta kgo.BrokerMetadata, topic string, partition int32, m kgo.FetchBatchMetrics) {
	h.m.OnFetchBatchRead(meta, topic, partition, m)
}

func (h *kafkaHooks) OnBrokerRead(meta kgo.BrokerMetadata, key int16, n int, wait, read time.Duration, err error) {
	h.m.OnBrokerRead(meta, key, n, wait, read, err)
}

func (h *kafkaHooks) OnBrokerWrite(meta kgo.BrokerMetadata, key int16, n int, wait, write time.Duration, err error) {
	h.m.OnBrokerWrite(meta, key, n, wait, write, err)
}

func (h *kafkaHooks) OnBrokerE2E(meta kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	h.m.OnBrokerE2E(meta, key, e2e)
}
