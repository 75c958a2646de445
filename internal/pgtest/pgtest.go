// Package pgtest gives each test a PostgreSQL database of its own.
//
// A test binary that uses it calls [Main] from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// and each test calls [NewDatabase] for the URL of a new, empty database,
// dropped when the test ends. The server is the one that
// SENSIBLE_TEST_POSTGRES_URL names (its user must be allowed to create
// databases), or else a throwaway cluster that the first NewDatabase
// starts: initdb into a temporary directory and pg_ctl start, listening
// only on a Unix socket in that directory. Main stops it and removes the
// directory when the tests are done. initdb and pg_ctl are looked for in
// SENSIBLE_TEST_POSTGRES_BINDIR if it is set, and otherwise on PATH and
// then in /usr/lib/postgresql/*/bin (the newest version first), where
// Debian's postgresql package puts them. PostgreSQL refuses to run as
// root, so a test run as root runs them as the postgres user.
//
// Without a URL or the programs, NewDatabase skips its test, saying how
// to enable it.
//
// # Caveats
//
// The cluster is the test binary's, kept in package state: a binary that
// is killed before Main returns leaves it running, with its directory.
package pgtest

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Environment variables that say where PostgreSQL is.
const (
	// EnvURL names a running server to use instead of a throwaway
	// cluster: a postgres:// URL whose user may create databases.
	EnvURL = "SENSIBLE_TEST_POSTGRES_URL"
	// EnvBinDir names the directory holding initdb and pg_ctl; when it is
	// set, no other place is searched.
	EnvBinDir = "SENSIBLE_TEST_POSTGRES_BINDIR"
	// EnvRequired, set to 1, makes a test without PostgreSQL fail rather
	// than skip: CI sets it, so that the PostgreSQL tests cannot pass by
	// not running.
	EnvRequired = "SENSIBLE_TEST_POSTGRES_REQUIRED"
)

// binGlob is where Debian installs each PostgreSQL version's programs.
const binGlob = "/usr/lib/postgresql/*/bin"

// SkipMessage is why a test skips when there is no PostgreSQL.
const SkipMessage = "no PostgreSQL for this test: set " + EnvURL + " to a server's postgres:// URL " +
	"(its user must be allowed to create databases), or install PostgreSQL's initdb and pg_ctl " +
	"(Debian: apt-get install -y postgresql) on PATH, in " + binGlob + " or in " + EnvBinDir

// port is the cluster's port, which names its socket file; the socket's
// directory is the cluster's own, so the port is never in use.
const port = "5432"

// startTimeout bounds starting and stopping the cluster.
const startTimeout = 2 * time.Minute

// state is the test binary's one server, started on first use.
var state struct {
	mu      sync.Mutex
	inMain  bool
	started bool
	srv     *server // nil when there is none
	skip    string  // why there is none, when that is not an error
	err     error   // why starting it failed
	dbs     int     // databases made so far
}

// A server is a running PostgreSQL server.
type server struct {
	base  url.URL // its URL, naming the maintenance database
	admin *sql.DB
	stop  func() error // nil for a server the tests did not start
}

// Main runs the tests and then stops the cluster, if NewDatabase started
// one. It returns m.Run's exit code, or 1 if stopping the cluster failed.
func Main(m *testing.M) int {
	state.mu.Lock()
	state.inMain = true
	state.mu.Unlock()
	code := m.Run()
	state.mu.Lock()
	defer state.mu.Unlock()
	if srv := state.srv; srv != nil {
		srv.admin.Close()
		if srv.stop != nil {
			if err := srv.stop(); err != nil {
				fmt.Fprintln(os.Stderr, "pgtest: stopping PostgreSQL:", err)
				if code == 0 {
					code = 1
				}
			}
		}
		state.srv = nil
	}
	return code
}

// NewDatabase makes a new, empty database and returns its URL; it is
// dropped when t ends. Without a server it skips t with SkipMessage.
func NewDatabase(t testing.TB) string {
	t.Helper()
	state.mu.Lock()
	defer state.mu.Unlock()
	if !state.inMain {
		t.Fatal("pgtest: call pgtest.Main from TestMain, so that the cluster is stopped")
	}
	if !state.started {
		state.started = true
		state.srv, state.skip, state.err = start()
	}
	switch {
	case state.err != nil:
		t.Fatalf("pgtest: %v", state.err)
	case state.srv == nil && os.Getenv(EnvRequired) == "1":
		t.Fatalf("pgtest: %s is set, and %s", EnvRequired, state.skip)
	case state.srv == nil:
		t.Skip(state.skip)
	}
	state.dbs++
	name := fmt.Sprintf("pgtest_%d_%d", os.Getpid(), state.dbs)
	admin := state.srv.admin
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	u := state.srv.base
	u.Path = "/" + name
	return u.String()
}

// start finds or starts the server. It returns no server and a reason
// when there is none to be had, and an error when one should be there
// but fails.
func start() (*server, string, error) {
	if raw := os.Getenv(EnvURL); raw != "" {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return nil, "", fmt.Errorf("%s is not a postgres:// URL", EnvURL)
		}
		srv, err := connect(*u)
		return srv, "", err
	}
	b, ok := locate(os.Getenv, exec.LookPath, binGlob)
	if !ok {
		return nil, SkipMessage, nil
	}
	var runAs *user.User
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, "PostgreSQL will not run as root, and there is no postgres user to run it as: " + SkipMessage, nil
		}
		runAs = u
	}
	return b.startCluster(runAs)
}

// connect opens the maintenance database at u.
func connect(u url.URL) (*server, error) {
	cc, err := pgx.ParseConfig(u.String())
	if err != nil {
		return nil, err
	}
	admin := stdlib.OpenDB(*cc)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		admin.Close()
		return nil, fmt.Errorf("connecting to %s: %w", u.Redacted(), err)
	}
	return &server{base: u, admin: admin}, nil
}

// bins are the PostgreSQL programs.
type bins struct{ initdb, pgCtl string }

// locate finds initdb and pg_ctl: in the directory that EnvBinDir names
// if it is set, and otherwise on PATH or else in the newest version's
// directory that glob matches.
func locate(getenv func(string) string, lookPath func(string) (string, error), glob string) (bins, bool) {
	if dir := getenv(EnvBinDir); dir != "" {
		return inDir(dir)
	}
	initdb, err1 := lookPath("initdb")
	pgCtl, err2 := lookPath("pg_ctl")
	if err1 == nil && err2 == nil {
		return bins{initdb, pgCtl}, true
	}
	dirs, _ := filepath.Glob(glob)
	// Newest first: the version is the directory above bin.
	version := func(dir string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
		return v
	}
	slices.SortFunc(dirs, func(a, b string) int { return cmp.Compare(version(b), version(a)) })
	for _, dir := range dirs {
		if b, ok := inDir(dir); ok {
			return b, true
		}
	}
	return bins{}, false
}

// inDir returns the programs in dir, if both are there and executable.
func inDir(dir string) (bins, bool) {
	b := bins{filepath.Join(dir, "initdb"), filepath.Join(dir, "pg_ctl")}
	for _, p := range []string{b.initdb, b.pgCtl} {
		fi, err := os.Stat(p)
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return bins{}, false
		}
	}
	return b, true
}

// startCluster makes a cluster in a new temporary directory and starts it,
// listening only on a Unix socket in that directory. With runAs, the
// directory is given to that user, who runs the programs.
func (b bins) startCluster(runAs *user.User) (*server, string, error) {
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, "", err
	}
	if strings.ContainsAny(dir, `'"\ `) {
		os.RemoveAll(dir)
		return nil, "", fmt.Errorf("temporary directory %q has characters pg_ctl's options cannot carry", dir)
	}
	data, logFile := filepath.Join(dir, "data"), filepath.Join(dir, "log")
	run := func(name string, args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		if runAs != nil {
			if err := setUser(cmd, runAs); err != nil {
				return err
			}
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v\n%s", filepath.Base(name), err, out)
		}
		return nil
	}
	fail := func(err error) (*server, string, error) {
		if log, _ := os.ReadFile(logFile); len(log) > 0 {
			err = fmt.Errorf("%w\nserver log:\n%s", err, log)
		}
		os.RemoveAll(dir)
		return nil, "", err
	}
	if runAs != nil {
		if err := chown(dir, runAs); err != nil {
			return fail(err)
		}
	}
	if err := run(b.initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N"); err != nil {
		return fail(err)
	}
	opts := "-c listen_addresses='' -c unix_socket_directories='" + dir + "' -c port=" + port +
		" -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
	if err := run(b.pgCtl, "start", "-D", data, "-l", logFile, "-w", "-t", "60", "-s", "-o", opts); err != nil {
		return fail(err)
	}
	stop := func() error {
		err := run(b.pgCtl, "stop", "-D", data, "-m", "immediate", "-w", "-s")
		return errors.Join(err, os.RemoveAll(dir))
	}
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/postgres",
		RawQuery: url.Values{"host": {dir}, "port": {port}, "sslmode": {"disable"}}.Encode()}
	srv, err := connect(u)
	if err != nil {
		return nil, "", errors.Join(err, stop())
	}
	srv.stop = stop
	return srv, "", nil
}
