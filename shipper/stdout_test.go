package shipper_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/pg2kafka/pg2kafka/shipper"
	"github.com/pg2kafka/pg2kafka/shipper/sinktest"
)

func TestWriterSinkConformance(t *testing.T) {
	t.Parallel()
	sinktest.Run(t, func(t *testing.T) (shipper.Sink, sinktest.Receiver) {
		r := &linesReceiver{out: &syncBuffer{}}
		return shipper.NewWriterSink(r), r
	})
}

// linesReceiver is the writer of a WriterSink, and reads back the JSON lines
// it wrote. Made to fail, it refuses every write, as a closed pipe does.
type linesReceiver struct {
	out     *syncBuffer
	failing atomic.Bool
}

func (r *linesReceiver) Write(p []byte) (int, error) {
	if r.failing.Load() {
		return 0, errors.New("write |1: broken pipe")
	}
	return r.out.Write(p)
}

func (r *linesReceiver) Fail(testing.TB) (restore func()) {
	r.failing.Store(true)
	return func() { r.failing.Store(false) }
}

func (r *linesReceiver) Received(t testing.TB) []sinktest.Delivery {
	t.Helper()
	var got []sinktest.Delivery
	sc := bufio.NewScanner(bytes.NewReader([]byte(r.out.String())))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line struct {
			Key   *string         `json:"key"`
			Value json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		d := sinktest.Delivery{Value: line.Value}
		if line.Key != nil {
			d.Key = []byte(*line.Key)
		}
		got = append(got, d)
	}
	return got
}
