package sqlite_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/cloud/store/sqlite"
	"github.com/sensible-iot/sensible/cloud/store/sqlstore"
	"github.com/sensible-iot/sensible/cloud/store/storetest"
	"github.com/sensible-iot/sensible/consent"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, t.TempDir()) })
}

// TestNodes runs the tests of several nodes on one database file: here,
// several stores in one process.
func TestNodes(t *testing.T) {
	storetest.RunNodes(t, func(t *testing.T) func(t *testing.T) store.Store {
		dir := t.TempDir()
		return func(t *testing.T) store.Store { return open(t, dir) }
	})
}

func open(t *testing.T, dir string) *sqlstore.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), dir, sqlite.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSettings checks the settings every connection gets.
func TestSettings(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "dir")
	s := open(t, dir)
	db := s.DB()
	db.SetMaxOpenConns(1) // one connection, so that each query sees its settings
	for pragma, want := range map[string]string{
		"journal_mode": "wal",
		"synchronous":  "2", // FULL
		"foreign_keys": "1",
		"busy_timeout": "10000",
	} {
		var got string
		if err := db.QueryRowContext(t.Context(), "PRAGMA "+pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("PRAGMA %s = %s, want %s", pragma, got, want)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, sqlite.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() {
		t.Fatalf("%s is not a file", sqlite.FileName)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("directory made with %v, %v", fi.Mode(), err)
	}
}

// TestReopen checks that what is stored stays, and that the schema is
// migrated once.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := t.Context()
	if err := s.AddModel(ctx, store.Model{ID: "m", Name: "it's kept"}); err != nil {
		t.Fatal(err)
	}
	entry := []byte("a consent record")
	leaf := consent.LeafHash(entry)
	if err := s.ConsentLog().Append(ctx, 0, []consent.LogEntry{{Data: entry, Leaf: leaf}}, []consent.Hash{leaf}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	m, err := s.Model(ctx, "m")
	if err != nil || m.Name != "it's kept" {
		t.Fatalf("after reopening: %+v, %v", m, err)
	}
	if n, ok, err := s.ConsentLog().Find(ctx, leaf); !ok || n != 0 || err != nil {
		t.Fatalf("the consent log's entry after reopening: %d, %v, %v", n, ok, err)
	}
	var versions int
	if err := s.DB().QueryRowContext(ctx, "SELECT COUNT(*) FROM schema_version").Scan(&versions); err != nil {
		t.Fatal(err)
	}
	if int64(versions) != sqlstore.SchemaVersion() {
		t.Fatalf("%d schema versions recorded, want %d", versions, sqlstore.SchemaVersion())
	}
}

// TestConcurrentOpen opens one directory from several goroutines at once,
// as several stores, and writes through all of them.
func TestConcurrentOpen(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			s, err := sqlite.Open(ctx, dir, sqlite.Config{})
			if err != nil {
				t.Errorf("Open: %v", err)
				return
			}
			defer s.Close()
			if err := s.AddModel(ctx, store.Model{ID: string(rune('a' + i))}); err != nil {
				t.Errorf("AddModel: %v", err)
			}
		})
	}
	wg.Wait()
	models, err := open(t, dir).ListModels(ctx)
	if err != nil || len(models) != 4 {
		t.Fatalf("models after concurrent opens: %v, %v", models, err)
	}
}

// TestNewerSchema checks that a program refuses a database that a newer
// program migrated.
func TestNewerSchema(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	if _, err := s.DB().ExecContext(t.Context(), "INSERT INTO schema_version (version, applied) VALUES (1000, 0)"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err := sqlite.Open(t.Context(), dir, sqlite.Config{})
	if err == nil || !strings.Contains(err.Error(), "schema version 1000") {
		t.Fatalf("Open of a newer schema: %v", err)
	}
}

// TestCanceled checks that a done context stops an operation.
func TestCanceled(t *testing.T) {
	s := open(t, t.TempDir())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.AddModel(ctx, store.Model{ID: "m"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("AddModel with a canceled context: %v", err)
	}
}
