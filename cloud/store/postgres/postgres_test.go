package postgres_test

import (
	"os"
	"sync"
	"testing"

	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/cloud/store/postgres"
	"github.com/sensible-iot/sensible/cloud/store/sqlstore"
	"github.com/sensible-iot/sensible/cloud/store/storetest"
	"github.com/sensible-iot/sensible/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, pgtest.NewDatabase(t)) })
}

// TestNodes runs the tests of several nodes on one database.
func TestNodes(t *testing.T) {
	storetest.RunNodes(t, func(t *testing.T) func(t *testing.T) store.Store {
		url := pgtest.NewDatabase(t)
		return func(t *testing.T) store.Store { return open(t, url) }
	})
}

// open opens a node on the database at url, closed when t ends.
func open(t *testing.T, url string) *sqlstore.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), url, postgres.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestNodesMigrateTogether opens one empty database from several nodes at
// once: one migrates it, the others wait and find it done.
func TestNodesMigrateTogether(t *testing.T) {
	url := pgtest.NewDatabase(t)
	ctx := t.Context()
	const nodes = 6
	stores := make([]*sqlstore.Store, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			s, err := postgres.Open(ctx, url, postgres.Config{MaxConns: 4})
			if err != nil {
				t.Errorf("node %d: Open: %v", i, err)
				return
			}
			stores[i] = s
		})
	}
	wg.Wait()
	for _, s := range stores {
		if s != nil {
			defer s.Close()
		}
	}
	if t.Failed() {
		return
	}
	var versions, applied int64
	err := stores[0].DB().QueryRowContext(ctx, "SELECT COUNT(*), MAX(version) FROM schema_version").Scan(&applied, &versions)
	if err != nil {
		t.Fatal(err)
	}
	if applied != sqlstore.SchemaVersion() || versions != sqlstore.SchemaVersion() {
		t.Fatalf("schema_version holds %d rows up to %d, want %d", applied, versions, sqlstore.SchemaVersion())
	}
	// Every node sees what one writes.
	if err := stores[1].AddModel(ctx, store.Model{ID: "m"}); err != nil {
		t.Fatal(err)
	}
	for i, s := range stores {
		if _, err := s.Model(ctx, "m"); err != nil {
			t.Errorf("node %d: %v", i, err)
		}
	}
}
