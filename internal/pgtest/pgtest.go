// Package pgtest gives each test a throwaway database on a real Postgres
// server, so tests run in parallel without seeing each other's queues.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultAdminURL is the server tests use unless PG2KAFKA_TEST_DATABASE_URL
// names another; script/test makes sure it is running.
const DefaultAdminURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL is the connection string of a database on the test server from
// which databases can be created.
func AdminURL() string {
	if u := os.Getenv("PG2KAFKA_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultAdminURL
}

// NewDatabase creates an empty database named after nothing but a random
// suffix, returns a connection string for it, and drops it when the test
// ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("pgtest: connect to the test server (set PG2KAFKA_TEST_DATABASE_URL, or run script/test to start it): %v", err)
	}
	defer admin.Close(ctx)

	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	name := "pg2kafka_test_" + hex.EncodeToString(suffix)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})

	u, err := url.Parse(AdminURL())
	if err != nil {
		t.Fatalf("pgtest: PG2KAFKA_TEST_DATABASE_URL must be a postgres:// URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// NewPool creates a database as NewDatabase does and returns a pool
// connected to it, closed when the test ends.
func NewPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	connString := NewDatabase(t)
	pool, err := pgxpool.New(context.Background(), connString)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, connString
}

// Role is a login role on the test server.
type Role struct {
	Name     string
	Password string
}

// NewRole creates a login role with a random name and password, holding
// nothing beyond what PUBLIC holds, and drops it when the test ends. Roles
// belong to the whole server, not to a database, and one cannot be dropped
// while a database grants it anything: create it before the databases that
// will (cleanups run last first, so those are dropped before it).
func NewRole(t testing.TB) Role {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("pgtest: connect to the test server: %v", err)
	}
	defer admin.Close(ctx)

	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	password := make([]byte, 12)
	_, _ = rand.Read(password)
	r := Role{Name: "pg2kafka_test_" + hex.EncodeToString(suffix), Password: hex.EncodeToString(password)}
	// CREATE ROLE takes no parameters; both values are hex digits.
	if _, err := admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{r.Name}.Sanitize()+" LOGIN PASSWORD '"+r.Password+"'"); err != nil {
		t.Fatalf("pgtest: create role %s: %v", r.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Errorf("pgtest: drop role %s: %v", r.Name, err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP ROLE "+pgx.Identifier{r.Name}.Sanitize()); err != nil {
			t.Errorf("pgtest: drop role %s: %v", r.Name, err)
		}
	})
	return r
}

// ConnString returns connString with the role as its user.
func (r Role) ConnString(t testing.TB, connString string) string {
	t.Helper()
	u, err := url.Parse(connString)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	u.User = url.UserPassword(r.Name, r.Password)
	return u.String()
}
