package migrations_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pg2kafka/pg2kafka/internal/pgtest"
	"github.com/pg2kafka/pg2kafka/outbox"
)

var update = flag.Bool("update", false, "rewrite current/schema.sql from the schema the migrations install")

// schemaFile is outside the embedded *.sql glob: it is never run, only read
// in review.
const schemaFile = "current/schema.sql"

const schemaHeader = `-- The pg2kafka schema as all migrations together install it: every table,
-- index, trigger, function, grant, role and comment, in a fixed order.
-- Generated; do not edit. After changing a migration, regenerate it with
--
--     go test ./migrations -run TestSchemaDump -update
--
-- The owner of the schema (whoever ran the migrations) is left out of the
-- grants: it holds everything.
`

// TestSchemaDump installs every migration into an empty database and
// compares what it finds there with current/schema.sql, so that a change to
// the SQL shows in review as a change to what is installed.
func TestSchemaDump(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool, _ := pgtest.NewPool(t)
	if err := outbox.Migrate(ctx, pool, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	got, err := dumpSchema(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.MkdirAll("current", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(schemaFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatalf("%v: regenerate it with: go test ./migrations -run TestSchemaDump -update", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("migrations/%s is not what the migrations install; if the change to the SQL is meant, regenerate it with\n\n\tgo test ./migrations -run TestSchemaDump -update\n\nand review its diff. First difference:\n%s",
			schemaFile, firstDifference(string(want), string(got)))
	}
}

// firstDifference shows the first line where the two texts differ, with a
// little context.
func firstDifference(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl || i >= len(w) || i >= len(g) {
			return fmt.Sprintf("line %d\n  file:      %q\n  installed: %q", i+1, wl, gl)
		}
	}
	return "(none: the files differ only in their line endings)"
}

// The sections of the dump, each one query whose rows are its text in
// order. Every ORDER BY is on names (collation "C", so the server's locale
// does not matter), never on oids, which differ between installations.
var schemaSections = []struct {
	title string
	query string
}{
	{"schema", `
SELECT 'CREATE SCHEMA pg2kafka;'
UNION ALL
SELECT format('COMMENT ON SCHEMA pg2kafka IS %L;', d.description)
FROM pg_description d
WHERE d.classoid = 'pg_namespace'::regclass AND d.objoid = 'pg2kafka'::regnamespace AND d.objsubid = 0`},

	{"roles", `
SELECT format('CREATE ROLE %I%s;', r.rolname,
              CASE WHEN r.rolcanlogin THEN ' LOGIN' ELSE ' NOLOGIN' END
              || CASE WHEN r.rolinherit THEN '' ELSE ' NOINHERIT' END
              || CASE WHEN r.rolsuper THEN ' SUPERUSER' ELSE '' END
              || CASE WHEN r.rolcreaterole THEN ' CREATEROLE' ELSE '' END
              || CASE WHEN r.rolcreatedb THEN ' CREATEDB' ELSE '' END
              || CASE WHEN r.rolbypassrls THEN ' BYPASSRLS' ELSE '' END)
       || coalesce(format(E'\nCOMMENT ON ROLE %I IS %L;', r.rolname, d.description), '')
       || coalesce((SELECT string_agg(format(E'\nGRANT %I TO %I%s;', g.rolname, r.rolname,
                                              CASE WHEN m.admin_option THEN ' WITH ADMIN OPTION' ELSE '' END),
                                       '' ORDER BY g.rolname COLLATE "C")
                    FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                    WHERE m.member = r.oid AND g.rolname LIKE 'pg2kafka\_%'), '')
FROM pg_roles r
LEFT JOIN pg_shdescription d ON d.classoid = 'pg_authid'::regclass AND d.objoid = r.oid
-- Roles belong to the cluster, which other databases share: the roles
-- shown are those this database grants something in pg2kafka.
WHERE r.oid IN (
    SELECT x.grantee
    FROM (SELECT nspacl AS acl, nspowner AS owner FROM pg_namespace WHERE nspname = 'pg2kafka'
          UNION ALL
          SELECT c.relacl, c.relowner FROM pg_class c WHERE c.relnamespace = 'pg2kafka'::regnamespace
          UNION ALL
          SELECT a.attacl, c.relowner FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid WHERE c.relnamespace = 'pg2kafka'::regnamespace
          UNION ALL
          SELECT p.proacl, p.proowner FROM pg_proc p WHERE p.pronamespace = 'pg2kafka'::regnamespace) AS o,
         aclexplode(o.acl) AS x
    WHERE o.acl IS NOT NULL AND x.grantee <> o.owner)
ORDER BY r.rolname COLLATE "C"`},

	{"tables", `
SELECT format(E'CREATE %s %I.%I (\n%s\n);',
              'TABLE', n.nspname, c.relname,
              array_to_string(
                  ARRAY(SELECT format('    %I %s', a.attname, format_type(a.atttypid, a.atttypmod))
                               || CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
                                                     WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END
                               || CASE WHEN a.attgenerated = 's' THEN ' GENERATED ALWAYS AS (' || pg_get_expr(ad.adbin, ad.adrelid) || ') STORED'
                                       WHEN ad.adbin IS NOT NULL THEN ' DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid) ELSE '' END
                               || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
                        FROM pg_attribute a
                        LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                        ORDER BY a.attnum)
                  || ARRAY(SELECT format('    CONSTRAINT %I %s', k.conname, pg_get_constraintdef(k.oid))
                           FROM pg_constraint k
                           WHERE k.conrelid = c.oid
                           ORDER BY k.conname COLLATE "C"),
                  E',\n'))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'pg2kafka' AND c.relkind IN ('r', 'p')
ORDER BY c.relname COLLATE "C"`},

	{"views", `
SELECT format(E'CREATE VIEW %I.%I AS\n%s', n.nspname, c.relname, pg_get_viewdef(c.oid))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'pg2kafka' AND c.relkind IN ('v', 'm')
ORDER BY c.relname COLLATE "C"`},

	// Indexes that back a constraint are the constraint's, shown above.
	{"indexes", `
SELECT pg_get_indexdef(i.indexrelid) || ';'
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'pg2kafka'
  AND t.relkind IN ('r', 'p', 'm')
  AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
ORDER BY t.relname COLLATE "C", c.relname COLLATE "C"`},

	{"sequences", `
SELECT format('-- sequence %I.%I: %s, start %s, increment %s%s', s.schemaname, s.sequencename,
              s.data_type, s.start_value, s.increment_by,
              coalesce(' (of ' || (SELECT format('%s.%I', d.refobjid::regclass, a.attname)
                                   FROM pg_depend d
                                   JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                                   WHERE d.classid = 'pg_class'::regclass AND d.objid = format('%I.%I', s.schemaname, s.sequencename)::regclass
                                     AND d.deptype IN ('a', 'i')) || ')', ''))
FROM pg_sequences s
WHERE s.schemaname = 'pg2kafka'
ORDER BY s.sequencename COLLATE "C"`},

	// Triggers on pg2kafka's own tables; the ones setup() puts on tracked
	// tables are the user's.
	{"triggers", `
SELECT pg_get_triggerdef(tg.oid) || ';'
FROM pg_trigger tg
JOIN pg_class c ON c.oid = tg.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'pg2kafka' AND NOT tg.tgisinternal
ORDER BY c.relname COLLATE "C", tg.tgname COLLATE "C"`},

	{"event triggers", `
SELECT format('CREATE EVENT TRIGGER %I ON %s%s EXECUTE FUNCTION %s();', e.evtname, e.evtevent,
              coalesce(' WHEN TAG IN (' || (SELECT string_agg(quote_literal(t), ', ' ORDER BY t COLLATE "C") FROM unnest(e.evttags) AS t) || ')', ''),
              e.evtfoid::regproc)
FROM pg_event_trigger e
JOIN pg_proc p ON p.oid = e.evtfoid
WHERE p.pronamespace = 'pg2kafka'::regnamespace
ORDER BY e.evtname COLLATE "C"`},

	{"types", `
SELECT format('CREATE TYPE %I.%I (%s)', n.nspname, t.typname,
              CASE t.typtype
                  WHEN 'e' THEN 'AS ENUM ' || (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)
                  WHEN 'd' THEN 'DOMAIN OVER ' || format_type(t.typbasetype, t.typtypmod)
                  WHEN 'c' THEN 'AS (' || (SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum)
                                            FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) || ')'
                  ELSE t.typtype::text
              END) || ';'
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_class c ON c.oid = t.typrelid
WHERE n.nspname = 'pg2kafka' AND t.typtype IN ('e', 'd', 'c')
  AND (c.oid IS NULL OR c.relkind = 'c')
ORDER BY t.typname COLLATE "C"`},

	{"functions", `
SELECT rtrim(pg_get_functiondef(p.oid), E'\n') || ';'
FROM pg_proc p
WHERE p.pronamespace = 'pg2kafka'::regnamespace AND p.prokind IN ('f', 'p')
ORDER BY p.proname COLLATE "C", pg_get_function_identity_arguments(p.oid) COLLATE "C"`},

	{"comments", `
SELECT q.stmt FROM (
    SELECT 1 AS kind, c.relname::text AS obj, 0 AS sub,
           format('COMMENT ON %s %I.%I IS %L;', CASE WHEN c.relkind IN ('v', 'm') THEN 'VIEW' ELSE 'TABLE' END, n.nspname, c.relname, d.description) AS stmt
    FROM pg_description d
    JOIN pg_class c ON c.oid = d.objoid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE d.classoid = 'pg_class'::regclass AND d.objsubid = 0 AND n.nspname = 'pg2kafka'
    UNION ALL
    SELECT 1, c.relname::text, a.attnum,
           format('COMMENT ON COLUMN %I.%I.%I IS %L;', n.nspname, c.relname, a.attname, d.description)
    FROM pg_description d
    JOIN pg_class c ON c.oid = d.objoid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid
    WHERE d.classoid = 'pg_class'::regclass AND d.objsubid > 0 AND n.nspname = 'pg2kafka'
    UNION ALL
    SELECT 2, p.proname::text || '(' || pg_get_function_identity_arguments(p.oid) || ')', 0,
           format('COMMENT ON FUNCTION %s IS %L;', p.oid::regprocedure, d.description)
    FROM pg_description d
    JOIN pg_proc p ON p.oid = d.objoid
    WHERE d.classoid = 'pg_proc'::regclass AND p.pronamespace = 'pg2kafka'::regnamespace
    UNION ALL
    SELECT 3, tg.tgname::text || ' ON ' || c.relname, 0,
           format('COMMENT ON TRIGGER %I ON %I.%I IS %L;', tg.tgname, n.nspname, c.relname, d.description)
    FROM pg_description d
    JOIN pg_trigger tg ON tg.oid = d.objoid
    JOIN pg_class c ON c.oid = tg.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE d.classoid = 'pg_trigger'::regclass AND n.nspname = 'pg2kafka'
    UNION ALL
    SELECT 4, k.conname::text || ' ON ' || c.relname, 0,
           format('COMMENT ON CONSTRAINT %I ON %I.%I IS %L;', k.conname, n.nspname, c.relname, d.description)
    FROM pg_description d
    JOIN pg_constraint k ON k.oid = d.objoid
    JOIN pg_class c ON c.oid = k.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE d.classoid = 'pg_constraint'::regclass AND n.nspname = 'pg2kafka'
) AS q
ORDER BY q.kind, q.obj COLLATE "C", q.sub`},

	// What is granted, as it is in effect: an object whose ACL was never
	// touched shows its defaults (EXECUTE on a function for PUBLIC, say),
	// which is what a review of rights needs to see.
	{"grants", `
WITH objects AS (
    SELECT 1 AS kind, 'SCHEMA pg2kafka' AS obj, nsp.nspowner AS owner, coalesce(nsp.nspacl, acldefault('n', nsp.nspowner)) AS acl
    FROM pg_namespace nsp WHERE nsp.nspname = 'pg2kafka'
    UNION ALL
    SELECT 2, format('%s %I.%I', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, n.nspname, c.relname),
           c.relowner, coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'pg2kafka' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
    UNION ALL
    SELECT 3, format('FUNCTION %s', p.oid::regprocedure), p.proowner, coalesce(p.proacl, acldefault('f', p.proowner))
    FROM pg_proc p WHERE p.pronamespace = 'pg2kafka'::regnamespace
), columns AS (
    SELECT 2 AS kind, format('TABLE %I.%I', n.nspname, c.relname) AS obj, a.attname, c.relowner AS owner, a.attacl AS acl
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'pg2kafka' AND a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped
), grants AS (
    SELECT o.kind, o.obj, NULL::name AS col, x.grantee, x.privilege_type, x.is_grantable
    FROM objects o, aclexplode(o.acl) x
    WHERE x.grantee <> o.owner
    UNION ALL
    SELECT c.kind, c.obj, c.attname, x.grantee, x.privilege_type, x.is_grantable
    FROM columns c, aclexplode(c.acl) x
    WHERE x.grantee <> c.owner
)
SELECT format('GRANT %s ON %s TO %s%s;',
              string_agg(g.privilege_type || CASE WHEN g.col IS NULL THEN '' ELSE format(' (%I)', g.col) END, ', '
                         ORDER BY g.col COLLATE "C" NULLS FIRST, g.privilege_type COLLATE "C"),
              g.obj,
              CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
              CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
FROM grants g
GROUP BY g.kind, g.obj, g.grantee, g.is_grantable
ORDER BY g.kind, g.obj COLLATE "C",
         CASE WHEN g.grantee = 0 THEN '' ELSE pg_get_userbyid(g.grantee) END COLLATE "C", g.is_grantable`},

	{"migrations applied", `
SELECT format('-- goose version %s', max(version_id)) FROM pg2kafka.goose_db_version WHERE is_applied`},
}

// dumpSchema renders the pg2kafka schema of the database as text, the same
// for every installation of the same migrations.
func dumpSchema(ctx context.Context, pool *pgxpool.Pool) ([]byte, error) {
	var out bytes.Buffer
	out.WriteString(schemaHeader)
	for _, s := range schemaSections {
		rows, err := pool.Query(ctx, s.query)
		if err != nil {
			return nil, fmt.Errorf("dump %s: %w", s.title, err)
		}
		var lines []string
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				rows.Close()
				return nil, fmt.Errorf("dump %s: %w", s.title, err)
			}
			lines = append(lines, line)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("dump %s: %w", s.title, err)
		}
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(&out, "\n-- %s\n\n", strings.ToUpper(s.title))
		for i, line := range lines {
			if i > 0 && strings.Contains(line, "\n") || i > 0 && strings.Contains(lines[i-1], "\n") {
				out.WriteString("\n")
			}
			out.WriteString(line)
			out.WriteString("\n")
		}
	}
	return out.Bytes(), nil
}
