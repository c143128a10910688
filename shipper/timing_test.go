package shipper_test

import (
	"context"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/pg2kafka/pg2kafka/shipper"
)

// recordingSink acknowledges every message and keeps the event ids sent.
type recordingSink struct {
	mu  sync.Mutex
	ids []string
}

func (s *recordingSink) Send(_ context.Context, msgs []shipper.Message) []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		for _, h := range m.Headers {
			if h.Key == shipper.HeaderEventID {
				s.ids = append(s.ids, string(h.Value))
			}
		}
	}
	return make([]error, len(msgs))
}

func (s *recordingSink) Close() {}

var timingLine = regexp.MustCompile(`msg="` + shipper.TimingMessage + `" .*claim=(\d+) claimed=(\d+) sent=(\d+) acknowledged=(\d+) committed=(\d+) uuids="?([0-9a-f -]+)"?`)

func TestDebugLogTimesEachBatchsStagesByEventUUID(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(
		`CREATE TABLE notes (id int PRIMARY KEY, body text)`,
		`SELECT pg2kafka.setup('notes', 'id')`,
		`INSERT INTO notes VALUES (1, 'a'), (2, 'b'), (3, 'c')`,
	)
	sink := &recordingSink{}
	stop := b.startWith(shipper.Config{}, sink)
	b.waitQueueEmpty()
	stop()

	var timed []string
	for _, m := range timingLine.FindAllStringSubmatch(b.logs.String(), -1) {
		var at []int64
		for _, s := range m[1:6] {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			at = append(at, n)
		}
		if !slices.IsSorted(at) {
			t.Errorf("stages out of order (claim, claimed, sent, acknowledged, committed): %v", at)
		}
		timed = append(timed, strings.Fields(m[6])...)
	}
	slices.Sort(timed)
	sink.mu.Lock()
	sent := slices.Sorted(slices.Values(sink.ids))
	sink.mu.Unlock()
	if len(sent) != 3 || !slices.Equal(timed, sent) {
		t.Errorf("timed uuids %v, want those sent %v\nlogs:\n%s", timed, sent, b.logs.String())
	}
}
