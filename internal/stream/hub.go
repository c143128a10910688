package stream

import (
	"encoding/json"
	"sync"
	"sync/atomic"

	"github.com/pg2kafka/pg2kafka/shipper"
)

// DefaultBuffer is how many events a viewer may fall behind before it is
// disconnected.
const DefaultBuffer = 256

// Hub hands the shipper's acknowledged events to the viewers whose queries
// match them. Publishing never waits for a viewer.
type Hub struct {
	buffer  int
	mu      sync.RWMutex
	subs    map[*subscription]struct{}
	count   atomic.Int32
	dropped atomic.Int64
	closed  chan struct{}
	once    sync.Once
}

// NewHub returns a hub whose viewers may each fall buffer events behind;
// buffer <= 0 means DefaultBuffer.
func NewHub(buffer int) *Hub {
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	return &Hub{buffer: buffer, subs: make(map[*subscription]struct{}), closed: make(chan struct{})}
}

// subscription is one viewer: its query, the events waiting for it, and a
// channel closed when it fell too far behind.
type subscription struct {
	query    Query
	events   chan []byte
	overflow chan struct{}
	dropped  atomic.Bool
}

func (h *Hub) subscribe(q Query) *subscription {
	s := &subscription{query: q, events: make(chan []byte, h.buffer), overflow: make(chan struct{})}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	h.count.Add(1)
	return s
}

func (h *Hub) unsubscribe(s *subscription) {
	h.mu.Lock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		h.count.Add(-1)
	}
	h.mu.Unlock()
}

// Viewers returns how many viewers are connected.
func (h *Hub) Viewers() int { return int(h.count.Load()) }

// Dropped returns how many viewers were disconnected for falling behind.
func (h *Hub) Dropped() int64 { return h.dropped.Load() }

// Close tells every viewer that pg2kafka is going away; the hub takes no
// more viewers.
func (h *Hub) Close() { h.once.Do(func() { close(h.closed) }) }

// Publish hands each event of the batch that its destination acknowledged
// to the viewers whose queries match it, in the batch's order. It is meant
// for shipper.Config.OnSettled: without viewers it returns at once, and a
// viewer whose buffer is full is dropped rather than waited for.
func (h *Hub) Publish(s *shipper.Settled) {
	if h.count.Load() == 0 {
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for i := range s.Events {
		if s.Errs[i] != nil {
			continue
		}
		e := &s.Events[i]
		var data map[string]json.RawMessage
		var value []byte // copied once, shared by the viewers: the batch's bytes are reused
		for sub := range h.subs {
			if sub.dropped.Load() {
				continue
			}
			q := &sub.query
			if q.Filter != nil && data == nil && e.TableName == q.Table.Name && e.TableSchema == q.Table.Schema {
				data = parseData(e.Data)
			}
			if !q.Match(e, data) {
				continue
			}
			if value == nil {
				value = append([]byte(nil), s.Messages[i].Value...)
			}
			select {
			case sub.events <- value:
			default:
				if sub.dropped.CompareAndSwap(false, true) {
					close(sub.overflow)
					h.dropped.Add(1)
				}
			}
		}
	}
}
