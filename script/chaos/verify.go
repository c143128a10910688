package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// endOffsets sums the end offsets of topic's partitions: the number of
// records on it, since nothing is ever deleted from the dev broker's topics
// and pg2kafka writes no transaction markers. A topic not yet created holds
// none.
func endOffsets(ctx context.Context, admin *kadm.Client, topic string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	offsets, err := admin.ListEndOffsets(ctx, topic)
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	var n int64
	var errs []error
	offsets.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			errs = append(errs, o.Err)
			return
		}
		n += o.Offset
	})
	if len(errs) > 0 {
		if errors.Is(errs[0], kerr.UnknownTopicOrPartition) {
			return 0, nil
		}
		return 0, fmt.Errorf("list end offsets of %s: %w", topic, errors.Join(errs...))
	}
	return n, nil
}

// settled waits until the table's events have all left the queue and the
// topic's end offsets have stopped moving for stableFor, so that a produce
// request still on its way from a killed replica is counted too. It fails if
// a replica or the broker crashes meanwhile, or after timeout.
func (c *chaos) settled(ctx context.Context, t *table, topic string, fl *fleet, timeout time.Duration) (int64, error) {
	const stableFor = 3 * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		last     int64 = -1
		since    time.Time
		queued   int64 = -1
		records  int64
		lastErr  error
		nextNote = time.Now().Add(10 * time.Second)
	)
	for {
		if crashes := append(fl.crashed(), c.broker.crashed()...); len(crashes) > 0 {
			return records, fmt.Errorf("while waiting for the drain: %s", crashes[0])
		}
		var err error
		if queued, err = t.queued(ctx); err != nil {
			lastErr = err
		} else if records, err = endOffsets(ctx, c.kafka, topic); err != nil {
			lastErr = err
		} else {
			lastErr = nil
			switch {
			case queued > 0 || records != last:
				last, since = records, time.Now()
			case time.Since(since) >= stableFor:
				return records, nil
			}
		}
		if time.Now().After(nextNote) {
			c.log.Info("waiting for the drain", "queued", queued, "records", records, "error", lastErr)
			nextNote = time.Now().Add(10 * time.Second)
		}
		if !sleepCtx(ctx, 250*time.Millisecond) {
			if lastErr != nil {
				return records, fmt.Errorf("drain not settled within %s (%d events queued, %d records on %s): %w", timeout, queued, records, topic, lastErr)
			}
			return records, fmt.Errorf("drain not settled within %s: %d events still queued, %d records on %s", timeout, queued, records, topic)
		}
	}
}

// verdict is what the verifier found on a scenario's topic.
type verdict struct {
	written    int64 // events the table went through: every version of every row
	records    int64
	lost       int64 // versions written to the table that never arrived
	reordered  int64 // versions that arrived after a higher one, not having arrived before
	duplicates int64 // replays of a version that had arrived before
	unexpected int64 // records of keys, or versions, that were never written
	examples   []string
}

func (v *verdict) example(format string, args ...any) {
	if len(v.examples) < 10 {
		v.examples = append(v.examples, fmt.Sprintf(format, args...))
	}
}

// keyState is what the verifier has seen of one key: the highest version
// and which versions have arrived.
type keyState struct {
	high int
	seen []bool
}

func (k *keyState) mark(v int) {
	if v >= len(k.seen) {
		k.seen = append(k.seen, make([]bool, v+1-len(k.seen))...)
	}
	k.seen[v] = true
}

// verify reads every record of topic from the start, want of them, and
// checks each key's versions against the versions the table holds: each
// key's records must bring 0, 1, 2, … up to the row's version, in that
// order; a lower version than the highest yet may only be a replay of one
// already seen (a duplicate, which at-least-once delivery allows).
func (c *chaos) verify(ctx context.Context, t *table, topic string, want int64, timeout time.Duration) (verdict, error) {
	final, err := t.versions(ctx)
	if err != nil {
		return verdict{}, err
	}
	var v verdict
	keys := make(map[string]*keyState, len(final))
	err = readTopic(ctx, c.broker.addr, topic, want, timeout, func(r *kgo.Record) {
		v.records++
		var event struct {
			Data struct {
				Version *int `json:"version"`
			} `json:"data"`
		}
		if r.Key == nil {
			v.unexpected++
			v.example("partition %d offset %d: a record without a key", r.Partition, r.Offset)
			return
		}
		if err := json.Unmarshal(r.Value, &event); err != nil || event.Data.Version == nil || *event.Data.Version < 0 {
			v.unexpected++
			v.example("partition %d offset %d: no version in %.200s (%v)", r.Partition, r.Offset, r.Value, err)
			return
		}
		key, version := string(r.Key), *event.Data.Version
		k := keys[key]
		if k == nil {
			k = &keyState{high: -1}
			keys[key] = k
		}
		switch {
		case version > k.high:
			k.high = version
		case version < len(k.seen) && k.seen[version]:
			v.duplicates++
		default:
			v.reordered++
			v.example("key %s: version %d arrived after version %d, never before it (partition %d offset %d)", key, version, k.high, r.Partition, r.Offset)
		}
		k.mark(version)
	})
	if err != nil {
		return v, err
	}

	// Lost: versions the table went through that never arrived.
	for _, key := range slices.Sorted(maps.Keys(final)) {
		last := final[key]
		v.written += int64(last) + 1
		k := keys[key]
		missing := 0
		for version := 0; version <= last; version++ {
			if k == nil || version >= len(k.seen) || !k.seen[version] {
				if missing == 0 {
					v.example("key %s: version %d never arrived (the row is at version %d)", key, version, last)
				}
				missing++
			}
		}
		v.lost += int64(missing)
		if k != nil {
			for version := last + 1; version < len(k.seen); version++ {
				if k.seen[version] {
					v.unexpected++
					v.example("key %s: version %d arrived, but the row is at version %d", key, version, last)
				}
			}
		}
	}
	for key, k := range keys {
		if _, ok := final[key]; !ok {
			for _, s := range k.seen {
				if s {
					v.unexpected++
				}
			}
			v.example("key %s is on the topic but not in the table", key)
		}
	}
	return v, nil
}

// readTopic consumes topic from the start until want records have arrived,
// handing each to fn in its partition's order.
func readTopic(ctx context.Context, broker, topic string, want int64, timeout time.Duration, fn func(*kgo.Record)) error {
	client, err := kgo.NewClient(
		kgo.SeedBrokers(broker),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(500*time.Millisecond),
	)
	if err != nil {
		return fmt.Errorf("kafka consumer: %w", err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var got int64
	var fetchErr error
	for got < want {
		fetches := client.PollFetches(ctx)
		if ctx.Err() != nil {
			if fetchErr != nil {
				return fmt.Errorf("read %d of %d records of %s within %s: %w", got, want, topic, timeout, fetchErr)
			}
			return fmt.Errorf("read %d of %d records of %s within %s", got, want, topic, timeout)
		}
		fetches.EachError(func(_ string, _ int32, err error) { fetchErr = err })
		fetches.EachRecord(func(r *kgo.Record) {
			got++
			fn(r)
		})
	}
	return nil
}
