package outbox_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/pg2kafka/pg2kafka/outbox"
)

func (b *bundle) claimerOf(t *testing.T, kind string) *outbox.Claimer {
	t.Helper()
	q := outbox.NewQueue(b.pool)
	q.SetDestination(kind)
	c := q.NewClaimer(slog.New(slog.DiscardHandler), 0)
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// Shippers of one database share its queue, so one of another destination
// kind is refused, naming both kinds, until the others are gone.
func TestShippersOfOneQueueShareOneDestination(t *testing.T) {
	t.Parallel()
	b := setup(t)
	kafka1 := b.claimerOf(t, outbox.DestinationKafka)
	kafka2 := b.claimerOf(t, outbox.DestinationKafka)
	for _, c := range []*outbox.Claimer{kafka1, kafka2} {
		if err := c.Join(b.ctx); err != nil {
			t.Fatalf("a shipper of the same kind: %v", err)
		}
	}

	hook := b.claimerOf(t, outbox.DestinationWebhook)
	err := hook.Join(b.ctx)
	conflict, ok := errors.AsType[*outbox.DestinationConflictError](err)
	if !ok {
		t.Fatalf("Join = %v; want a *outbox.DestinationConflictError", err)
	}
	if conflict.Mine != outbox.DestinationWebhook || len(conflict.Theirs) != 1 || conflict.Theirs[0] != outbox.DestinationKafka {
		t.Errorf("conflict %+v; want a webhook refused by Kafka", conflict)
	}
	if want := "other shippers of this database ship to Kafka, this one to a webhook"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q; want it to say %q", err, want)
	}
	// Refused, it holds no lanes and is not counted among the shippers.
	if _, err := hook.Rebalance(b.ctx); err == nil || len(hook.Lanes()) != 0 {
		t.Errorf("the refused shipper rebalanced (%v) and took lanes %v", err, hook.Lanes())
	}

	// A claimer that registers nothing (a tool, an older shipper) is not
	// held to it.
	if err := b.claimer(t).Join(b.ctx); err != nil {
		t.Errorf("a claimer without a destination: %v", err)
	}

	kafka1.Close(b.ctx)
	kafka2.Close(b.ctx)
	if err := hook.Join(b.ctx); err != nil {
		t.Fatalf("once the Kafka shippers are gone: %v", err)
	}
	err = b.claimerOf(t, outbox.DestinationRabbitMQ).Join(b.ctx)
	if err == nil || !strings.Contains(err.Error(), "ship to a webhook, this one to RabbitMQ") {
		t.Errorf("RabbitMQ beside a webhook: %v", err)
	}
}
