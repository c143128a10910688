package shipper

import (
	"context"
	"io"
	"sync"
)

// WriterSink writes each message as one JSON line to a writer, for
// DRY_RUN=true:
//
//	{"topic":"pg2kafka.shop.products","key":"CM01-R","value":{…event…},"headers":{"pg2kafka-event-id":"…",…}}
//
// A message counts as delivered once its line is written.
type WriterSink struct {
	mu  sync.Mutex // workers send concurrently; lines must not interleave
	w   io.Writer
	buf []byte
}

// NewWriterSink returns a sink writing to w.
func NewWriterSink(w io.Writer) *WriterSink { return &WriterSink{w: w} }

// Send implements Sink.
func (s *WriterSink) Send(ctx context.Context, msgs []Message) []error {
	errs := make([]error, len(msgs))
	if err := ctx.Err(); err != nil {
		fill(errs, err)
		return errs
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buf[:0]
	for i := range msgs {
		m := &msgs[i]
		b = append(b, `{"topic":`...)
		b = appendJSONString(b, m.Topic)
		b = append(b, `,"key":`...)
		if m.Key == nil {
			b = append(b, "null"...)
		} else {
			b = appendJSONString(b, string(m.Key))
		}
		b = append(b, `,"value":`...)
		if m.Value == nil {
			b = append(b, "null"...) // a tombstone
		} else {
			b = append(b, m.Value...)
		}
		if len(m.Headers) > 0 {
			b = append(b, `,"headers":{`...)
			for j, h := range m.Headers {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendJSONString(b, h.Key)
				b = append(b, ':')
				b = appendJSONString(b, string(h.Value))
			}
			b = append(b, '}')
		}
		b = append(b, "}\n"...)
	}
	s.buf = b
	if _, err := s.w.Write(b); err != nil {
		fill(errs, err)
	}
	return errs
}

// Close implements Sink.
func (s *WriterSink) Close() {}

func fill(errs []error, err error) {
	for i := range errs {
		errs[i] = err
	}
}
