package consent_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/logtest"
)

func TestLogStoreConformance(t *testing.T) {
	t.Run("Mem", func(t *testing.T) {
		logtest.Run(t, func(t *testing.T) consent.LogStore { return &consent.MemLogStore{} })
	})
	t.Run("File", func(t *testing.T) {
		logtest.Run(t, func(t *testing.T) consent.LogStore {
			st, err := consent.OpenFileLogStore(filepath.Join(t.TempDir(), "consent.log"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		})
	})
	t.Run("SQLite", func(t *testing.T) {
		logtest.Run(t, func(t *testing.T) consent.LogStore {
			return openSQLiteStore(t, filepath.Join(t.TempDir(), "consent.db"))
		})
	})
}

// sqliteStore is a LogStore in SQLite, as a cloud keeps one in its
// database: entries keyed by index with a unique leaf hash, hashes keyed
// by position, and Append as one immediate transaction. Several processes
// may share its file.
type sqliteStore struct {
	db        *sql.DB
	conflicts atomic.Int64 // appends refused with ErrLogConflict
}

var _ consent.LogStore = (*sqliteStore)(nil)

func openSQLiteStore(t testing.TB, path string) *sqliteStore {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_txlock=immediate&_pragma=busy_timeout(20000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, leaf BLOB NOT NULL UNIQUE, data BLOB NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS hashes (idx INTEGER PRIMARY KEY, hash BLOB NOT NULL)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	return &sqliteStore{db: db}
}

// querier is what sqliteStore needs of a *sql.DB or a *sql.Tx.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func sqlSize(ctx context.Context, q querier, table string) (int64, error) {
	var n int64
	err := q.QueryRowContext(ctx, `SELECT coalesce(max(idx)+1, 0) FROM `+table).Scan(&n)
	return n, err
}

func (s *sqliteStore) Size(ctx context.Context) (int64, error) { return sqlSize(ctx, s.db, "entries") }

func (s *sqliteStore) Append(ctx context.Context, start int64, entries []consent.LogEntry, hashes []consent.Hash) error {
	tx, err := s.db.BeginTx(ctx, nil) // BEGIN IMMEDIATE: one writer at a time
	if err != nil {
		return err
	}
	defer tx.Rollback()
	conflict := func(format string, args ...any) error {
		s.conflicts.Add(1)
		return fmt.Errorf("%w: "+format, append([]any{consent.ErrLogConflict}, args...)...)
	}
	size, err := sqlSize(ctx, tx, "entries")
	if err != nil {
		return err
	}
	if size != start {
		return conflict("append at %d to %d entries", start, size)
	}
	seen := make(map[consent.Hash]bool)
	for i, e := range entries {
		var n int64
		err := tx.QueryRowContext(ctx, `SELECT idx FROM entries WHERE leaf = ?`, e.Leaf[:]).Scan(&n)
		if err == nil || seen[e.Leaf] {
			return conflict("entry %d is stored already", i)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		seen[e.Leaf] = true
		if _, err := tx.ExecContext(ctx, `INSERT INTO entries (idx, leaf, data) VALUES (?, ?, ?)`, start+int64(i), e.Leaf[:], e.Data); err != nil {
			return err
		}
	}
	base, err := sqlSize(ctx, tx, "hashes")
	if err != nil {
		return err
	}
	for i, h := range hashes {
		if _, err := tx.ExecContext(ctx, `INSERT INTO hashes (idx, hash) VALUES (?, ?)`, base+int64(i), h[:]); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (s *sqliteStore) ReadHashes(ctx context.Context, indexes []int64) ([]consent.Hash, error) {
	out := make([]consent.Hash, len(indexes))
	for i, x := range indexes {
		var b []byte
		if err := s.db.QueryRowContext(ctx, `SELECT hash FROM hashes WHERE idx = ?`, x).Scan(&b); err != nil {
			return nil, fmt.Errorf("hash %d: %w", x, err)
		}
		if len(b) != len(out[i]) {
			return nil, fmt.Errorf("hash %d has %d bytes", x, len(b))
		}
		out[i] = consent.Hash(b)
	}
	return out, nil
}

func (s *sqliteStore) Entry(ctx context.Context, n int64) ([]byte, error) {
	var b []byte
	if err := s.db.QueryRowContext(ctx, `SELECT data FROM entries WHERE idx = ?`, n).Scan(&b); err != nil {
		return nil, fmt.Errorf("entry %d: %w", n, err)
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}

func (s *sqliteStore) Find(ctx context.Context, leaf consent.Hash) (int64, bool, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT idx FROM entries WHERE leaf = ?`, leaf[:]).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	return n, err == nil, err
}

// An appended is one append's data and receipt, as a writer process
// reports it.
type appended struct {
	Data    []byte           `json:"data"`
	Receipt *consent.Receipt `json:"receipt"`
}

// appendFrom appends entries from goroutines through a Log over st,
// writer numbers from first on, plus entries every writer appends; it
// returns what each append returned.
func appendFrom(ctx context.Context, st consent.LogStore, signer *consent.NoteSigner, first int) ([]appended, error) {
	l, err := consent.OpenLog(ctx, st, signer)
	if err != nil {
		return nil, err
	}
	const goroutines, each = 4, 20
	var mu sync.Mutex
	var out []appended
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				d := logtest.Entry(first+g, i)
				if i%4 == 0 {
					d = logtest.Entry(1000+g, i) // appended by every process
				}
				r, err := l.Append(ctx, d)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				out = append(out, appended{d, r})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	return out, <-errs
}

// TestLogTwoProcesses appends to one SQLite store from two processes at
// once, each through its own Log from several goroutines: every entry is
// stored exactly once, every receipt verifies, and every checkpoint
// either process handed out is consistent with the log at the end.
func TestLogTwoProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "consent.db")
	st := openSQLiteStore(t, path)
	start := filepath.Join(dir, "start")
	cmd := exec.Command(os.Args[0], "-test.run=^TestLogTwoProcessesChild$")
	cmd.Env = append(os.Environ(), "SENSIBLE_LOG_SQLITE="+path, "SENSIBLE_LOG_START="+start)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("child did not start: %q", sc.Text())
	}
	// Both processes go at once.
	if err := os.WriteFile(start, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var child []appended
	var conflicts int64
	childDone := make(chan error, 1)
	go func() {
		for sc.Scan() {
			var a appended
			if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
				fmt.Sscanf(sc.Text(), "conflicts %d", &conflicts)
				continue
			}
			child = append(child, a)
		}
		childDone <- cmd.Wait()
	}()
	mine, err := appendFrom(ctx, st, logtest.Signer(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-childDone:
		if err != nil {
			t.Fatalf("child: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("child did not finish")
	}
	if len(child) != len(mine) {
		t.Fatalf("child reported %d appends, want %d", len(child), len(mine))
	}
	var data [][]byte
	var receipts []*consent.Receipt
	for _, a := range append(mine, child...) {
		data, receipts = append(data, a.Data), append(receipts, a.Receipt)
	}
	l, err := consent.OpenLog(ctx, st, logtest.Signer(t))
	if err != nil {
		t.Fatal(err)
	}
	logtest.CheckAppended(t, l, st, logtest.Signer(t).VerifierKey(), data, receipts)
	n, _ := st.Size(ctx)
	t.Logf("%d appends from two processes, %d entries; store conflicts: %d here, %d in the child", len(receipts), n, st.conflicts.Load(), conflicts)
}

// TestLogTwoProcessesChild is the second process of TestLogTwoProcesses:
// it says it is ready, waits for the start file, appends, and prints each
// append as a JSON line.
func TestLogTwoProcessesChild(t *testing.T) {
	path := os.Getenv("SENSIBLE_LOG_SQLITE")
	if path == "" {
		t.Skip("runs as the child of TestLogTwoProcesses")
	}
	st := openSQLiteStore(t, path)
	fmt.Println("ready")
	for {
		if _, err := os.Stat(os.Getenv("SENSIBLE_LOG_START")); err == nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	out, err := appendFrom(context.Background(), st, logtest.Signer(t), 100)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(os.Stdout)
	for _, a := range out {
		b, _ := json.Marshal(a)
		w.Write(append(b, '\n'))
	}
	fmt.Fprintf(w, "conflicts %d\n", st.conflicts.Load())
	w.Flush()
}

// TestFileLogStoreLocked: a second FileLogStore on an open log file, in
// this process or another, fails with ErrLogLocked until the first is
// closed; Close may be called twice.
func TestFileLogStoreLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "consent.log")
	st, err := consent.OpenFileLogStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := consent.OpenFileLogStore(path); !errors.Is(err, consent.ErrLogLocked) {
		t.Fatalf("second open in this process: %v, want ErrLogLocked", err)
	}
	if code := openInChild(t, path); code != 3 {
		t.Fatalf("open in another process exited %d, want 3 (ErrLogLocked)", code)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := st.Size(context.Background()); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Size after Close: %v, want os.ErrClosed", err)
	}
	if code := openInChild(t, path); code != 0 {
		t.Fatalf("open in another process after Close exited %d, want 0", code)
	}
	st2, err := consent.OpenFileLogStore(path)
	if err != nil {
		t.Fatalf("open after Close: %v", err)
	}
	st2.Close()
}

// openInChild opens path as a FileLogStore in a child process and returns
// its exit code: 0 opened, 3 ErrLogLocked, 4 another error.
func openInChild(t *testing.T, path string) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFileLogStoreLockChild$")
	cmd.Env = append(os.Environ(), "SENSIBLE_LOG_LOCK="+path)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	return 0
}

// TestFileLogStoreLockChild is the child of openInChild.
func TestFileLogStoreLockChild(t *testing.T) {
	path := os.Getenv("SENSIBLE_LOG_LOCK")
	if path == "" {
		t.Skip("runs as the child of TestFileLogStoreLocked")
	}
	st, err := consent.OpenFileLogStore(path)
	switch {
	case errors.Is(err, consent.ErrLogLocked):
		os.Exit(3)
	case err != nil:
		os.Exit(4)
	}
	st.Close()
}
