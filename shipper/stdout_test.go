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

// A Debezium tombstone, a message without a value, is a line whose value is
// null.
func TestWriterSinkTombstone(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	sink := shipper.NewWriterSink(&out)
	errs := sink.Send(t.Context(), []shipper.Message{{Topic: "t", Key: []byte("A1"), Headers: []shipper.Header{{Key: "pg2kafka-statement", Value: []byte("DELETE")}}}})
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	if want := `{"topic":"t","key":"A1","value":null,"headers":{"pg2kafka-statement":"DELETE"}}` + "\n"; out.String() != want {
		t.Errorf("line %q, want %q", out.String(), want)
	}
}
