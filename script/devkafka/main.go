// Command devkafka runs a local, in-memory Kafka-protocol broker for
// pg2kafka's demo, benchmarks and manual checks with kcat.
//
// It is a thin wrapper around franz-go's kfake: a single broker on
// 127.0.0.1 that speaks enough of the Kafka protocol for producers,
// consumers and admin tools. It is not Kafka and must never be used in
// production.
//
//	go run ./script/devkafka -port 9092 -topics orders,customers
//
// On start it prints exactly one line to stdout, the address it listens on
// (127.0.0.1:PORT), so that scripts can read it; everything else goes to
// stderr. It runs until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // -h: the flag package already printed the usage.
		}
		fmt.Fprintln(os.Stderr, "devkafka:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devkafka", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.Int("port", 9092, "port to listen on, on 127.0.0.1; 0 picks any free port")
	dataDir := fs.String("data-dir", "", "directory to persist topics and records in; empty keeps everything in memory")
	partitions := fs.Int("partitions", 3, "number of partitions for new topics")
	autoCreate := fs.Bool("auto-create", true, "create a topic when a client's metadata request asks for it (kcat's, or franz-go's with AllowAutoTopicCreation; pg2kafka never asks, and creates its topics with KAFKA_CREATE_TOPICS=true)")
	topics := fs.String("topics", "", "comma-separated topics to create at start")
	maxMessageBytes := fs.Int("max-message-bytes", 0, "broker message.max.bytes; 0 keeps kfake's default")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *port < 0 || *port > 65535 {
		return fmt.Errorf("-port %d: must be between 0 and 65535", *port)
	}
	if *partitions < 1 {
		return fmt.Errorf("-partitions %d: must be at least 1", *partitions)
	}
	if *maxMessageBytes < 0 {
		return fmt.Errorf("-max-message-bytes %d: must be 0 or positive", *maxMessageBytes)
	}

	// Ports also fixes the cluster at one broker, so the printed address
	// is the whole cluster.
	opts := []kfake.Opt{
		kfake.Ports(*port),
		kfake.DefaultNumPartitions(*partitions),
		kfake.WithLogger(kfake.BasicLogger(stderr, kfake.LogLevelWarn)),
	}
	if *autoCreate {
		opts = append(opts, kfake.AllowAutoTopicCreation())
	}
	if *dataDir != "" {
		opts = append(opts, kfake.DataDir(*dataDir))
	}
	if seed := splitTopics(*topics); len(seed) > 0 {
		opts = append(opts, kfake.SeedTopics(int32(*partitions), seed...))
	}
	if *maxMessageBytes > 0 {
		opts = append(opts, kfake.BrokerConfigs(map[string]string{
			"message.max.bytes": strconv.Itoa(*maxMessageBytes),
		}))
	}

	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("start broker: %w", err)
	}
	defer cluster.Close()

	addr := cluster.ListenAddrs()[0]
	fmt.Fprintln(stdout, addr)
	// auto_create answers only clients whose metadata requests ask for it,
	// and pg2kafka's never do: say what makes pg2kafka ship here.
	fmt.Fprintf(stderr, "devkafka: listening on %s (partitions=%d auto_create=%t data_dir=%q topics=%q); "+
		"pg2kafka ships here with KAFKA_CREATE_TOPICS=true, or to topics named in -topics; stop with Ctrl-C\n",
		addr, *partitions, *autoCreate, *dataDir, *topics)

	<-ctx.Done()
	fmt.Fprintln(stderr, "devkafka: shutting down")
	return nil
}

// splitTopics turns "a, b,,c" into [a b c].
func splitTopics(s string) []string {
	var topics []string
	for t := range strings.SplitSeq(s, ",") {
		if t = strings.TrimSpace(t); t != "" {
			topics = append(topics, t)
		}
	}
	return topics
}
