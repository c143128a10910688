// Package migrations holds everything pg2kafka installs in Postgres: the
// pg2kafka schema, the event queue, the registry of tracked tables, the
// change trigger and setup(). The files are Goose SQL migrations, embedded so
// the binary can install and upgrade its own schema (pg2kafka migrate, or PERFORM_MIGRATIONS=true).
//
// current/schema.sql, outside the embedded files, is what the migrations add
// up to: a dump of the installed schema that TestSchemaDump keeps in step
// with them, so that a change to the SQL shows in review as a change to what
// is installed.
package migrations

import "embed"

// FS holds the Goose migrations, in version order by file name.
//
//go:embed *.sql
var FS embed.FS
