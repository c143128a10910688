// Package migrations holds everything pg2kafka installs in Postgres: the
// pg2kafka schema, the event queue, the registry of tracked tables, the
// change trigger and setup(). The files are Goose SQL migrations, embedded so
// the binary can install and upgrade its own schema (PERFORM_MIGRATIONS=true).
package migrations

import "embed"

// FS holds the Goose migrations, in version order by file name.
//
//go:embed *.sql
var FS embed.FS
