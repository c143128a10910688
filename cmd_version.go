package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/pg2kafka/pg2kafka/outbox"
)

// version is pg2kafka's release, set at build time with
// -ldflags "-X main.version=v1.2.3"; without it, the module version go
// install recorded, or the commit go build did.
var version = ""

// runVersion is pg2kafka version.
func runVersion(_ context.Context, args []string, env environment) error {
	cl := newCommandLine("version", "pg2kafka version",
		`pg2kafka version prints the release of this pg2kafka and the version of the
pg2kafka schema it needs (pg2kafka migrate installs it).`)
	if _, err := cl.parse(args, env.getenv, env.stdout); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "pg2kafka %s (schema version %d, %s)\n", buildVersion(), outbox.LatestVersion(), runtime.Version())
	return nil
}

func buildVersion() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var revision, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if revision == "" {
		return "(devel)"
	}
	return "(devel " + revision[:min(12, len(revision))] + modified + ")"
}
