package pgtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestNewDatabase checks that each test gets a database of its own that
// it may write to.
func TestNewDatabase(t *testing.T) {
	urls := map[string]bool{}
	for range 2 {
		u := NewDatabase(t)
		if urls[u] {
			t.Fatalf("database %s handed out twice", u)
		}
		urls[u] = true
		cc, err := pgx.ParseConfig(u)
		if err != nil {
			t.Fatal(err)
		}
		db := stdlib.OpenDB(*cc)
		defer db.Close()
		ctx := t.Context()
		if _, err := db.ExecContext(ctx, "CREATE TABLE t (x TEXT)"); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&n); err != nil || n != 0 {
			t.Fatalf("a new database's table: %d rows, %v", n, err)
		}
	}
}

// TestDropped checks that a test's database is gone after it.
func TestDropped(t *testing.T) {
	var name string
	t.Run("user", func(t *testing.T) {
		cc, err := pgx.ParseConfig(NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		name = cc.Database
	})
	if name == "" {
		t.Skip("no database was made")
	}
	var n int
	err := state.srv.admin.QueryRowContext(t.Context(), "SELECT COUNT(*) FROM pg_database WHERE datname = $1", name).Scan(&n)
	if err != nil || n != 0 {
		t.Fatalf("database %s after its test: %d, %v", name, n, err)
	}
}

// TestLocate checks where initdb and pg_ctl are looked for.
func TestLocate(t *testing.T) {
	root := t.TempDir()
	install := func(dir string, progs ...string) string {
		bin := filepath.Join(root, dir, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range progs {
			if err := os.WriteFile(filepath.Join(bin, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return bin
	}
	v9 := install("9.6", "initdb", "pg_ctl")
	v15 := install("15", "initdb", "pg_ctl")
	install("16", "initdb") // no pg_ctl: passed over
	glob := filepath.Join(root, "*", "bin")
	noEnv := func(string) string { return "" }
	notOnPath := func(string) (string, error) { return "", exec.ErrNotFound }

	b, ok := locate(noEnv, notOnPath, glob)
	if !ok || b.initdb != filepath.Join(v15, "initdb") || b.pgCtl != filepath.Join(v15, "pg_ctl") {
		t.Errorf("newest complete version: %+v, %v", b, ok)
	}
	onPath := func(p string) (string, error) { return "/opt/pg/" + p, nil }
	if b, ok := locate(noEnv, onPath, glob); !ok || b.initdb != "/opt/pg/initdb" || b.pgCtl != "/opt/pg/pg_ctl" {
		t.Errorf("on PATH: %+v, %v", b, ok)
	}
	binDir := func(dir string) func(string) string {
		return func(k string) string {
			if k == EnvBinDir {
				return dir
			}
			return ""
		}
	}
	if b, ok := locate(binDir(v9), onPath, glob); !ok || b.pgCtl != filepath.Join(v9, "pg_ctl") {
		t.Errorf("in %s: %+v, %v", EnvBinDir, b, ok)
	}
	if _, ok := locate(binDir(t.TempDir()), onPath, glob); ok {
		t.Errorf("found in an empty %s", EnvBinDir)
	}
	if _, ok := locate(noEnv, notOnPath, filepath.Join(t.TempDir(), "*", "bin")); ok {
		t.Error("found nowhere")
	}
}

// TestSkip runs this test binary again with no PostgreSQL to be found, and
// checks that a test that asks for a database skips, saying how to
// enable it.
func TestSkip(t *testing.T) {
	if os.Getenv("PGTEST_CHILD") != "" {
		NewDatabase(t)
		t.Fatal("NewDatabase did not skip")
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestSkip$", "-test.v")
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, EnvURL+"=") && !strings.HasPrefix(kv, EnvBinDir+"=") && !strings.HasPrefix(kv, EnvRequired+"=") && !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "PGTEST_CHILD=1", "PATH="+t.TempDir(), EnvBinDir+"="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"--- SKIP: TestSkip", EnvURL, "apt-get install -y postgresql", "/usr/lib/postgresql/*/bin"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestBadURL checks that a URL that names no server fails rather than
// skips.
func TestBadURL(t *testing.T) {
	t.Setenv(EnvURL, "mysql://nowhere")
	if _, _, err := start(); err == nil {
		t.Fatal("a mysql:// URL accepted")
	}
	t.Setenv(EnvURL, "postgres://nobody@/x?host="+t.TempDir()+"&connect_timeout=5")
	if srv, _, err := start(); err == nil {
		srv.admin.Close()
		t.Fatal("a URL with no server behind it accepted")
	}
}
