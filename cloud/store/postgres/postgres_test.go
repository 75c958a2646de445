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
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := postgres.Open(t.Context(), pgtest.NewDatabase(t), postgres.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
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
