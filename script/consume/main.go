// Command consume prints the records of Kafka topics as a consumer reads
// them, one line each, for the demo and for checking a broker by hand:
//
//	go run ./script/consume -brokers 127.0.0.1:9092 -topic pg2kafka.shop.products -n 5
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "consume:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("consume", flag.ContinueOnError)
	brokers := fs.String("brokers", "127.0.0.1:9092", "comma-separated host:port list")
	topics := fs.String("topic", "", "comma-separated topics to read from the start (required)")
	n := fs.Int("n", 0, "stop after this many records (0: run until interrupted)")
	timeout := fs.Duration("timeout", 30*time.Second, "give up when -n records have not arrived by then")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *topics == "" {
		return errors.New("-topic is required")
	}
	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(*brokers, ",")...),
		kgo.ConsumeTopics(strings.Split(*topics, ",")...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		return err
	}
	defer client.Close()
	if *n > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	seen := 0
	for *n == 0 || seen < *n {
		fetches := client.PollFetches(ctx)
		if ctx.Err() != nil {
			if *n > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("read %d records of %d within %s", seen, *n, *timeout)
			}
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			fmt.Fprintf(os.Stderr, "consume: %s[%d]: %v\n", t, p, err)
		})
		fetches.EachRecord(func(r *kgo.Record) {
			seen++
			key := "null"
			if r.Key != nil {
				key = fmt.Sprintf("%q", r.Key)
			}
			var headers []string
			for _, h := range r.Headers {
				headers = append(headers, h.Key+"="+string(h.Value))
			}
			fmt.Fprintf(stdout, "%s[%d]@%d key=%s headers=[%s]\n  %s\n", r.Topic, r.Partition, r.Offset, key, strings.Join(headers, " "), r.Value)
		})
	}
	return nil
}
