package consent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func newTestLog(t testing.TB, path string) (*Log, *FileLogStore, note.Signer, string) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, "consent.example/log")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	st, err := OpenFileLogStore(path)
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLog(context.Background(), st, signer)
	if err != nil {
		t.Fatal(err)
	}
	return l, st, signer, vkey
}

func entry(i int) []byte { return []byte(fmt.Sprintf("signed record %d", i)) }

func TestLogReceiptsAndConsistency(t *testing.T) {
	ctx := context.Background()
	l, st, _, vkey := newTestLog(t, filepath.Join(t.TempDir(), "consent.log"))
	defer st.Close()
	var receipts []*Receipt
	var checkpoints []*Checkpoint
	for i := range 37 {
		r, err := l.Append(ctx, entry(i))
		if err != nil {
			t.Fatal(err)
		}
		if r.Index != int64(i) {
			t.Fatalf("index %d, want %d", r.Index, i)
		}
		receipts = append(receipts, r)
		ck, err := OpenCheckpoint(r.Checkpoint, vkey)
		if err != nil {
			t.Fatal(err)
		}
		checkpoints = append(checkpoints, ck)
	}
	for i, r := range receipts {
		if err := VerifyReceipt(r, entry(i), vkey); err != nil {
			t.Fatalf("receipt %d: %v", i, err)
		}
	}
	// A receipt does not prove another record, or under another key.
	if err := VerifyReceipt(receipts[5], entry(6), vkey); !errors.Is(err, ErrBadProof) {
		t.Errorf("receipt for other data: %v", err)
	}
	_, otherVkey, _ := note.GenerateKey(rand.Reader, "consent.example/log")
	if err := VerifyReceipt(receipts[5], entry(5), otherVkey); !errors.Is(err, ErrBadCheckpoint) {
		t.Errorf("receipt under another log key: %v", err)
	}
	// An inclusion proof for a different tree size than the checkpoint's.
	mixed := *receipts[5]
	mixed.Checkpoint = receipts[20].Checkpoint
	if err := VerifyReceipt(&mixed, entry(5), vkey); !errors.Is(err, ErrBadProof) {
		t.Errorf("proof for another tree size: %v", err)
	}
	// Consistency between any two checkpoints.
	for _, pair := range [][2]int{{0, 36}, {7, 8}, {15, 31}, {20, 20}} {
		a, b := checkpoints[pair[0]], checkpoints[pair[1]]
		p, err := l.ProveConsistency(ctx, a.Size, b.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyConsistency(a, b, p); err != nil {
			t.Errorf("consistency %d→%d: %v", a.Size, b.Size, err)
		}
		if a.Size != b.Size {
			// A proof for other sizes fails.
			wrong, _ := l.ProveConsistency(ctx, a.Size+1, b.Size)
			if err := VerifyConsistency(a, b, wrong); !errors.Is(err, ErrBadProof) {
				t.Errorf("wrong consistency proof %d→%d: %v", a.Size, b.Size, err)
			}
		}
	}
	// A monitor refuses a checkpoint smaller than one it has seen.
	m := NewMonitor(vkey)
	if _, err := m.Update(checkpoints[30].Signed, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Update(checkpoints[10].Signed, nil); !errors.Is(err, ErrLogShrunk) {
		t.Errorf("smaller checkpoint: %v", err)
	}
	p, _ := l.ProveConsistency(ctx, 31, 37)
	if _, err := m.Update(checkpoints[36].Signed, p); err != nil {
		t.Errorf("grown checkpoint: %v", err)
	}
	// A forged checkpoint: same size, another root.
	forged := fmt.Sprintf("consent.example/log\n37\n%s\n", Hash{1}.String())
	if _, err := OpenCheckpoint([]byte(forged), vkey); !errors.Is(err, ErrBadCheckpoint) {
		t.Errorf("unsigned checkpoint: %v", err)
	}
}

func TestFileLogStoreTornAppend(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "consent.log")
	l, st, signer, vkey := newTestLog(t, path)
	var receipts []*Receipt
	for i := range 10 {
		r, err := l.Append(ctx, entry(i))
		if err != nil {
			t.Fatal(err)
		}
		receipts = append(receipts, r)
	}
	st.Close()
	full, _ := os.ReadFile(path)
	last := int64(len(full)) - int64(frameHeader+len(entry(9)))
	// Every torn write of the last frame: the log reopens with the nine
	// entries before it intact, and every receipt for them verifies
	// against the reopened log.
	for cut := last; cut < int64(len(full)); cut++ {
		p := filepath.Join(dir, fmt.Sprintf("torn-%d.log", cut))
		if err := os.WriteFile(p, full[:cut], 0o600); err != nil {
			t.Fatal(err)
		}
		st2, err := OpenFileLogStore(p)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		l2, err := OpenLog(ctx, st2, signer)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := st2.Size(ctx); n != 9 {
			t.Fatalf("cut at %d: %d entries, want 9", cut, n)
		}
		checkLogHolds(t, l2, st2, vkey, receipts[:9])
		// And it goes on: the next append takes index 9.
		r, err := l2.Append(ctx, entry(99))
		if err != nil || r.Index != 9 {
			t.Fatalf("append after recovery: %+v, %v", r, err)
		}
		st2.Close()
	}
	// A damaged frame that is not the last is corruption, not a torn write.
	bad := append([]byte(nil), full...)
	bad[frameHeader+3] ^= 0xff
	p := filepath.Join(dir, "corrupt.log")
	os.WriteFile(p, bad, 0o600)
	if _, err := OpenFileLogStore(p); !errors.Is(err, ErrLogCorrupt) {
		t.Fatalf("corrupt middle frame: %v", err)
	}
}

// checkLogHolds checks that each receipt's entry is in the log at its index
// and that the log's checkpoint now is consistent with the receipt's.
func checkLogHolds(t *testing.T, l *Log, st *FileLogStore, vkey string, receipts []*Receipt) {
	t.Helper()
	ctx := context.Background()
	now, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range receipts {
		data, err := st.Entry(ctx, r.Index)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyReceipt(r, data, vkey); err != nil {
			t.Fatalf("receipt %d: %v", r.Index, err)
		}
		then, _ := OpenCheckpoint(r.Checkpoint, vkey)
		p, err := l.ProveConsistency(ctx, then.Size, now.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyConsistency(then, now, p); err != nil {
			t.Fatalf("receipt %d's checkpoint is not in the reopened log's history: %v", r.Index, err)
		}
	}
}

// TestLogSurvivesKill appends in a child process, kills it with SIGKILL
// mid-stream, reopens the log and checks every receipt the child handed
// out.
func TestLogSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "consent.log")
	skey, vkey, err := note.GenerateKey(rand.Reader, "consent.example/log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLogKillChild$")
	cmd.Env = append(os.Environ(), "SENSIBLE_LOG_CHILD="+path, "SENSIBLE_LOG_SKEY="+skey)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var receipts []*Receipt
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	deadline := time.Now().Add(10 * time.Second)
	for sc.Scan() {
		var r Receipt
		if json.Unmarshal(sc.Bytes(), &r) == nil && len(r.Checkpoint) > 0 {
			receipts = append(receipts, &r)
		}
		if len(receipts) == 200 || time.Now().After(deadline) {
			cmd.Process.Signal(syscall.SIGKILL)
			break
		}
	}
	cmd.Wait()
	if len(receipts) < 50 {
		t.Fatalf("child handed out only %d receipts", len(receipts))
	}
	st, err := OpenFileLogStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLog(context.Background(), st, signer)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := st.Size(context.Background())
	if n < int64(len(receipts)) {
		t.Fatalf("log has %d entries after the kill, but %d receipts were handed out", n, len(receipts))
	}
	checkLogHolds(t, l, st, vkey, receipts)
	t.Logf("killed after %d receipts; the log reopened with %d entries", len(receipts), n)
}

// TestLogKillChild is the child of TestLogSurvivesKill: it appends until
// killed, printing each receipt once the append has returned.
func TestLogKillChild(t *testing.T) {
	path := os.Getenv("SENSIBLE_LOG_CHILD")
	if path == "" {
		t.Skip("runs as the child of TestLogSurvivesKill")
	}
	st, err := OpenFileLogStore(path)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(os.Getenv("SENSIBLE_LOG_SKEY"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLog(context.Background(), st, signer)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		r, err := l.Append(context.Background(), entry(i))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(r)
		w.Write(append(b, '\n'))
		w.Flush()
	}
}

func TestFileLogStoreDamage(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "consent.log")
	l, st, _, _ := newTestLog(t, path)
	for i := range 10 {
		if _, err := l.Append(ctx, entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	full, _ := os.ReadFile(path)
	frame := int64(frameHeader + len(entry(0))) // entries 0-9 have the same length
	reopen := func(name string, data []byte) (*FileLogStore, error) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return OpenFileLogStore(p)
	}
	// A flipped bit in the length of frame 3 is corruption, not a torn
	// tail: nothing is cut.
	bad := append([]byte(nil), full...)
	bad[3*frame+1] ^= 0x40
	if _, err := reopen("length.log", bad); !errors.Is(err, ErrLogCorrupt) {
		t.Errorf("damaged length: %v, want ErrLogCorrupt", err)
	}
	// A frame with valid CRCs but the wrong index is corruption too.
	wrong := append([]byte(nil), full...)
	h := wrong[9*frame : 9*frame+frameHeader]
	binary.BigEndian.PutUint64(h[4:], 42)
	binary.BigEndian.PutUint32(h[12:], crc32.Checksum(h[:12], castagnoli))
	if _, err := reopen("index.log", wrong); !errors.Is(err, ErrLogCorrupt) {
		t.Errorf("wrong index in the last frame: %v, want ErrLogCorrupt", err)
	}
	// A zero-filled tail (a torn append after a power cut) is cut off.
	zeros := append(append([]byte(nil), full...), make([]byte, 300)...)
	st2, err := reopen("zeros.log", zeros)
	if err != nil {
		t.Fatalf("zero-filled tail: %v", err)
	}
	if n, _ := st2.Size(ctx); n != 10 {
		t.Errorf("%d entries after a zero-filled tail, want 10", n)
	}
	st2.Close()
	// A zero-filled final frame (length written, data not) is cut too.
	torn := append([]byte(nil), full[:9*frame+frameHeader]...)
	torn = append(torn, make([]byte, len(entry(9)))...)
	st3, err := reopen("torn-data.log", torn)
	if err != nil {
		t.Fatalf("zeroed final data: %v", err)
	}
	if n, _ := st3.Size(ctx); n != 9 {
		t.Errorf("%d entries, want 9", n)
	}
	st3.Close()
}

// TestFileLogStoreFailedAppend: when the disk refuses a write (here the
// file is gone from under the store), Append fails, the log keeps its
// size, and the store refuses further appends until reopened.
func TestFileLogStoreFailedAppend(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "consent.log")
	l, st, signer, vkey := newTestLog(t, path)
	r0, err := l.Append(ctx, entry(0))
	if err != nil {
		t.Fatal(err)
	}
	st.f.Close() // every write and truncate now fails, as on a failed disk
	if _, err := l.Append(ctx, entry(1)); err == nil {
		t.Fatal("append to a failed file succeeded")
	}
	if n, _ := st.Size(ctx); n != 1 {
		t.Fatalf("size %d after a failed append, want 1", n)
	}
	hs, err := tlog.StoredHashes(1, entry(1), st.reader())
	if err != nil {
		t.Fatal(err)
	}
	if st.broken == nil {
		t.Fatal("store not marked broken after an append it could not undo")
	}
	if err := st.Append(ctx, 1, []LogEntry{{Data: entry(1), Leaf: LeafHash(entry(1))}}, fromTlog(hs)); err == nil {
		t.Fatal("store accepted an append after an append it could not undo")
	}
	// Reopened, the log holds what it held, and the receipt still verifies.
	st2, err := OpenFileLogStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	l2, err := OpenLog(ctx, st2, signer)
	if err != nil {
		t.Fatal(err)
	}
	checkLogHolds(t, l2, st2, vkey, []*Receipt{r0})
}

// TestHugeTreeSizes: tlog's proof checks never return for trees of more
// than 2^62 entries, so a checkpoint claiming one is refused even when the
// log signed it (a monitor must survive a hostile log), and the log
// proves nothing for a tree larger than itself.
func TestHugeTreeSizes(t *testing.T) {
	ctx := context.Background()
	l, st, signer, vkey := newTestLog(t, filepath.Join(t.TempDir(), "consent.log"))
	defer st.Close()
	r, err := l.Append(ctx, entry(0))
	if err != nil {
		t.Fatal(err)
	}
	ck, _ := OpenCheckpoint(r.Checkpoint, vkey)
	huge := int64(1<<62 + 31)
	signed, err := note.Sign(&note.Note{Text: fmt.Sprintf("%s\n%d\n%s\n", ck.Origin, huge, base64.StdEncoding.EncodeToString(ck.Hash[:]))}, signer)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "OpenCheckpoint", func() error { _, err := OpenCheckpoint(signed, vkey); return err }, ErrBadCheckpoint)
	within(t, "VerifyReceipt", func() error {
		return VerifyReceipt(&Receipt{Index: 0, Proof: make([]Hash, 62), Checkpoint: signed}, entry(0), vkey)
	}, ErrBadCheckpoint)
	m := NewMonitor(vkey)
	if _, err := m.Update(r.Checkpoint, nil); err != nil {
		t.Fatal(err)
	}
	within(t, "Monitor.Update", func() error { _, err := m.Update(signed, make([]Hash, 62)); return err }, ErrBadCheckpoint)
	within(t, "VerifyConsistency", func() error {
		return VerifyConsistency(ck, &Checkpoint{Origin: ck.Origin, Size: huge, Hash: ck.Hash}, make([]Hash, 62))
	}, ErrBadCheckpoint)
	within(t, "Prove", func() error { _, err := l.Prove(ctx, 0, huge); return err }, nil)
	within(t, "ProveConsistency", func() error { _, err := l.ProveConsistency(ctx, 1, huge); return err }, nil)
}

// within runs f, failing t unless it returns within five seconds an error
// matching want (any error when want is nil).
func within(t *testing.T, name string, f func() error, want error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err == nil || want != nil && !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return", name)
	}
}

// flakySigner is a note signer that fails its next fail signatures.
type flakySigner struct {
	note.Signer
	mu   sync.Mutex
	fail int
}

func (s *flakySigner) Sign(msg []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail > 0 {
		s.fail--
		return nil, errors.New("the signing device is busy")
	}
	return s.Signer.Sign(msg)
}

// TestLogSignerFailsOnce: when the checkpoint cannot be signed after the
// entry was stored, Append fails, and a retry returns a receipt for the
// entry stored the first time: nothing lost, nothing stored twice.
func TestLogSignerFailsOnce(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"mem", "file"} {
		t.Run(name, func(t *testing.T) {
			var st LogStore = &MemLogStore{}
			if name == "file" {
				fs, err := OpenFileLogStore(filepath.Join(t.TempDir(), "consent.log"))
				if err != nil {
					t.Fatal(err)
				}
				defer fs.Close()
				st = fs
			}
			s := &flakySigner{Signer: testSigner(t)}
			vkey := testSigner(t).VerifierKey()
			l, err := OpenLog(ctx, st, s)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if _, err := l.Append(ctx, entry(i)); err != nil {
					t.Fatal(err)
				}
			}
			s.fail = 1
			if _, err := l.Append(ctx, entry(3)); err == nil {
				t.Fatal("append with a failing signer succeeded")
			}
			if n, _ := st.Size(ctx); n != 4 {
				t.Fatalf("%d entries after the failed signature, want 4 (the entry is stored)", n)
			}
			r, err := l.Append(ctx, entry(3))
			if err != nil {
				t.Fatal(err)
			}
			if r.Index != 3 {
				t.Fatalf("retry got index %d, want 3", r.Index)
			}
			if n, _ := st.Size(ctx); n != 4 {
				t.Fatalf("%d entries after the retry, want 4", n)
			}
			if err := VerifyReceipt(r, entry(3), vkey); err != nil {
				t.Fatal(err)
			}
			r, err = l.Append(ctx, entry(4))
			if err != nil || r.Index != 4 {
				t.Fatalf("next append: %+v, %v", r, err)
			}
		})
	}
}

// gatedStore holds each Append until the test lets it through (or the
// append's context ends), and counts appends.
type gatedStore struct {
	LogStore
	gate    chan struct{} // an Append goes on when it receives
	entered chan int      // each Append sends its batch size on entering
	appends atomic.Int64
}

func newGatedStore() *gatedStore {
	return &gatedStore{LogStore: &MemLogStore{}, gate: make(chan struct{}), entered: make(chan int, 100)}
}

func (g *gatedStore) Append(ctx context.Context, start int64, entries []LogEntry, hashes []Hash) error {
	g.entered <- len(entries)
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	g.appends.Add(1)
	return g.LogStore.Append(ctx, start, entries, hashes)
}

// waitPending waits until n appends wait in l.
func waitPending(t *testing.T, l *Log, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		got := len(l.pending)
		l.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d appends waiting, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

type appendResult struct {
	r   *Receipt
	err error
}

func appendAsync(ctx context.Context, l *Log, data []byte) chan appendResult {
	ch := make(chan appendResult, 1)
	go func() {
		r, err := l.Append(ctx, data)
		ch <- appendResult{r, err}
	}()
	return ch
}

// TestLogGroupCommit: appends that arrive while one is being stored are
// stored together in one store append, under one checkpoint, each with
// its own receipt.
func TestLogGroupCommit(t *testing.T) {
	ctx := context.Background()
	st := newGatedStore()
	s := testSigner(t)
	l, err := OpenLog(ctx, st, s)
	if err != nil {
		t.Fatal(err)
	}
	first := appendAsync(ctx, l, entry(0))
	if n := <-st.entered; n != 1 {
		t.Fatalf("first batch of %d", n)
	}
	const waiting = 20
	var results []chan appendResult
	for i := 1; i <= waiting; i++ {
		results = append(results, appendAsync(ctx, l, entry(i)))
	}
	// And one entry twice in the same batch.
	results = append(results, appendAsync(ctx, l, entry(5)))
	waitPending(t, l, waiting+1)
	st.gate <- struct{}{}
	if res := <-first; res.err != nil || res.r.Index != 0 {
		t.Fatalf("first append: %+v", res)
	}
	if n := <-st.entered; n != waiting {
		t.Fatalf("second batch of %d entries, want %d", n, waiting)
	}
	st.gate <- struct{}{}
	var data [][]byte
	var receipts []*Receipt
	var ckpt []byte
	for i, ch := range results {
		res := <-ch
		if res.err != nil {
			t.Fatal(res.err)
		}
		if ckpt == nil {
			ckpt = res.r.Checkpoint
		} else if string(ckpt) != string(res.r.Checkpoint) {
			t.Error("one batch, several checkpoints")
		}
		d := entry(i + 1)
		if i == waiting {
			d = entry(5)
		}
		data, receipts = append(data, d), append(receipts, res.r)
	}
	if n := st.appends.Load(); n != 2 {
		t.Fatalf("%d store appends for two batches", n)
	}
	if receipts[waiting].Index != receipts[4].Index {
		t.Fatalf("one entry twice in a batch got indexes %d and %d", receipts[4].Index, receipts[waiting].Index)
	}
	checkAppended(t, l, st, s.VerifierKey(), append(data, entry(0)), append(receipts, (<-appendAsync(ctx, l, entry(0))).r))
}

// checkAppended is logtest.CheckAppended, which this package's own tests
// cannot import: every distinct entry stored once, every receipt verifies,
// every checkpoint consistent with the log now.
func checkAppended(t *testing.T, l *Log, st LogStore, vkey string, data [][]byte, receipts []*Receipt) {
	t.Helper()
	ctx := context.Background()
	index := make(map[string]int64)
	for i, d := range data {
		if receipts[i] == nil {
			t.Fatalf("no receipt for %q", d)
		}
		if err := VerifyReceipt(receipts[i], d, vkey); err != nil {
			t.Fatalf("receipt of %q: %v", d, err)
		}
		if n, ok := index[string(d)]; ok && n != receipts[i].Index {
			t.Fatalf("%q at %d and %d", d, n, receipts[i].Index)
		}
		index[string(d)] = receipts[i].Index
	}
	if n, _ := st.Size(ctx); n != int64(len(index)) {
		t.Fatalf("store holds %d entries for %d distinct appends", n, len(index))
	}
	now, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range receipts {
		then, _ := OpenCheckpoint(r.Checkpoint, vkey)
		p, err := l.ProveConsistency(ctx, then.Size, now.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyConsistency(then, now, p); err != nil {
			t.Fatal(err)
		}
	}
}

// racingStore lets another writer append just before each of the first
// few appends through it, as another node would.
type racingStore struct {
	*MemLogStore
	races int
	other *Log
	data  [][]byte // what the other writer appended
}

func (r *racingStore) Append(ctx context.Context, start int64, entries []LogEntry, hashes []Hash) error {
	if r.races > 0 {
		r.races--
		d := fmt.Appendf(nil, "other node %d", len(r.data))
		if _, err := r.other.Append(ctx, d); err != nil {
			return err
		}
		r.data = append(r.data, d)
	}
	return r.MemLogStore.Append(ctx, start, entries, hashes)
}

// TestLogConflictRetry: an append that loses the race to another writer
// re-reads the store and goes in after it.
func TestLogConflictRetry(t *testing.T) {
	ctx := context.Background()
	mem := &MemLogStore{}
	s := testSigner(t)
	other, err := OpenLog(ctx, mem, s)
	if err != nil {
		t.Fatal(err)
	}
	st := &racingStore{MemLogStore: mem, races: 3, other: other}
	l, err := OpenLog(ctx, st, s)
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.Append(ctx, entry(0))
	if err != nil {
		t.Fatal(err)
	}
	if r.Index != 3 {
		t.Fatalf("index %d after three lost races, want 3", r.Index)
	}
	data := append(st.data, entry(0))
	var receipts []*Receipt
	for _, d := range data {
		r, err := other.Append(ctx, d) // idempotent: the receipt of each
		if err != nil {
			t.Fatal(err)
		}
		receipts = append(receipts, r)
	}
	checkAppended(t, l, mem, s.VerifierKey(), data, receipts)

	// A store that always conflicts makes Append give up, typed.
	st.races = maxConflicts + 1
	if _, err := l.Append(ctx, entry(1)); !errors.Is(err, ErrLogConflict) {
		t.Fatalf("append that always loses: %v, want ErrLogConflict", err)
	}
}

// TestLogCancelWaiting: an append whose context ends while it waits
// leaves the queue, and the others go on.
func TestLogCancelWaiting(t *testing.T) {
	ctx := context.Background()
	st := newGatedStore()
	s := testSigner(t)
	l, err := OpenLog(ctx, st, s)
	if err != nil {
		t.Fatal(err)
	}
	first := appendAsync(ctx, l, entry(0))
	<-st.entered
	cctx, cancel := context.WithCancel(ctx)
	gone := appendAsync(cctx, l, entry(1))
	kept := appendAsync(ctx, l, entry(2))
	waitPending(t, l, 2)
	cancel()
	if res := <-gone; !errors.Is(res.err, context.Canceled) {
		t.Fatalf("cancelled append: %+v", res)
	}
	st.gate <- struct{}{}
	<-st.entered
	st.gate <- struct{}{}
	r0, r2 := <-first, <-kept
	if r0.err != nil || r2.err != nil {
		t.Fatal(r0.err, r2.err)
	}
	checkAppended(t, l, st, s.VerifierKey(), [][]byte{entry(0), entry(2)}, []*Receipt{r0.r, r2.r})
}

// TestLogLeaderCancelled: when the append committing a batch has its
// context end, the others in the batch are committed by the next one.
func TestLogLeaderCancelled(t *testing.T) {
	ctx := context.Background()
	st := newGatedStore()
	s := testSigner(t)
	l, err := OpenLog(ctx, st, s)
	if err != nil {
		t.Fatal(err)
	}
	first := appendAsync(ctx, l, entry(0))
	<-st.entered
	lctx, cancel := context.WithCancel(ctx)
	leader := appendAsync(lctx, l, entry(1))
	waitPending(t, l, 1)
	others := []chan appendResult{appendAsync(ctx, l, entry(2)), appendAsync(ctx, l, entry(3))}
	waitPending(t, l, 3)
	st.gate <- struct{}{} // the first batch; then entry(1) leads 1, 2, 3
	if res := <-first; res.err != nil {
		t.Fatal(res.err)
	}
	if n := <-st.entered; n != 3 {
		t.Fatalf("second batch of %d", n)
	}
	cancel()
	if res := <-leader; !errors.Is(res.err, context.Canceled) {
		t.Fatalf("cancelled leader: %+v", res)
	}
	<-st.entered // entries 2 and 3 (and perhaps 1) again, led by entry(2)
	st.gate <- struct{}{}
	data := [][]byte{entry(2), entry(3)}
	var receipts []*Receipt
	for _, ch := range others {
		res := <-ch
		if res.err != nil {
			t.Fatal(res.err)
		}
		receipts = append(receipts, res.r)
	}
	if n, _ := st.Size(ctx); n != 3 {
		t.Fatalf("%d entries, want 3", n)
	}
	r0 := <-appendAsync(ctx, l, entry(0))
	checkAppended(t, l, st, s.VerifierKey(), append(data, entry(0)), append(receipts, r0.r))
}

// TestFileLogStoreTornBatch: a crash in the middle of writing a batch
// cuts the whole batch on opening, wherever the write was torn, and
// keeps every batch before it.
func TestFileLogStoreTornBatch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "consent.log")
	st, err := OpenFileLogStore(path)
	if err != nil {
		t.Fatal(err)
	}
	s := testSigner(t)
	l, err := OpenLog(ctx, st, s)
	if err != nil {
		t.Fatal(err)
	}
	var receipts []*Receipt
	for i := range 3 {
		r, err := l.Append(ctx, entry(i))
		if err != nil {
			t.Fatal(err)
		}
		receipts = append(receipts, r)
	}
	before, _ := os.ReadFile(path)
	hs, err := l.newHashes(ctx, 3, []LogEntry{{entry(3), LeafHash(entry(3))}, {entry(4), LeafHash(entry(4))}, {entry(5), LeafHash(entry(5))}})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Append(ctx, 3, []LogEntry{{entry(3), LeafHash(entry(3))}, {entry(4), LeafHash(entry(4))}, {entry(5), LeafHash(entry(5))}}, hs); err != nil {
		t.Fatal(err)
	}
	st.Close()
	full, _ := os.ReadFile(path)
	if !bytes.HasPrefix(full, before) {
		t.Fatal("an append rewrote the file")
	}
	want := append(append(append([]byte(nil), before...), logFrame(3, entry(3), true)...), logFrame(4, entry(4), true)...)
	want = append(want, logFrame(5, entry(5), false)...)
	if !bytes.Equal(full, want) {
		t.Fatal("the batch's frames are not as documented")
	}
	for cut := len(before); cut <= len(full); cut++ {
		for _, zeros := range []int{0, 100} {
			torn := append(append([]byte(nil), full[:cut]...), make([]byte, zeros)...)
			p := filepath.Join(dir, fmt.Sprintf("torn-%d-%d.log", cut, zeros))
			os.WriteFile(p, torn, 0o600)
			st2, err := OpenFileLogStore(p)
			if err != nil {
				t.Fatalf("cut at %d, %d zeros: %v", cut, zeros, err)
			}
			want := int64(3)
			if cut == len(full) {
				want = 6
			}
			if n, _ := st2.Size(ctx); n != want {
				t.Fatalf("cut at %d, %d zeros: %d entries, want %d", cut, zeros, n, want)
			}
			if _, ok, _ := st2.Find(ctx, LeafHash(entry(3))); ok != (want == 6) {
				t.Fatalf("cut at %d: entry 3 found: %v", cut, ok)
			}
			l2, err := OpenLog(ctx, st2, s)
			if err != nil {
				t.Fatal(err)
			}
			checkLogHolds(t, l2, st2, s.VerifierKey(), receipts)
			st2.Close()
		}
	}
}

// TestFileLogStoreGroupCommit: concurrent appends to a file log share
// fsyncs, and the file reopens with every entry.
func TestFileLogStoreGroupCommit(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "consent.log")
	fs, err := OpenFileLogStore(path)
	if err != nil {
		t.Fatal(err)
	}
	st := &countingStore{LogStore: fs}
	s := testSigner(t)
	l, err := OpenLog(ctx, st, s)
	if err != nil {
		t.Fatal(err)
	}
	const goroutines, each = 16, 20
	var mu sync.Mutex
	var data [][]byte
	var receipts []*Receipt
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				d := entry(g*1000 + i)
				r, err := l.Append(ctx, d)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				data, receipts = append(data, d), append(receipts, r)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("%d appends in %d store appends", len(data), st.appends.Load())
	fs.Close()
	fs2, err := OpenFileLogStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fs2.Close()
	l2, err := OpenLog(ctx, fs2, s)
	if err != nil {
		t.Fatal(err)
	}
	checkAppended(t, l2, fs2, s.VerifierKey(), data, receipts)
}

// countingStore counts store appends and the entries in them.
type countingStore struct {
	LogStore
	appends, entries atomic.Int64
}

func (c *countingStore) Append(ctx context.Context, start int64, entries []LogEntry, hashes []Hash) error {
	err := c.LogStore.Append(ctx, start, entries, hashes)
	if err == nil {
		c.appends.Add(1)
		c.entries.Add(int64(len(entries)))
	}
	return err
}

func TestHashText(t *testing.T) {
	h := LeafHash([]byte("x"))
	b, err := h.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != base64.StdEncoding.EncodeToString(h[:]) || h.String() != string(b) {
		t.Fatalf("text %s", b)
	}
	var back Hash
	if err := back.UnmarshalText(b); err != nil || back != h {
		t.Fatalf("round trip: %v", err)
	}
	// JSON receipts are as they were with tlog.Hash: base64 strings.
	r := Receipt{Index: 1, Proof: []Hash{h}, Checkpoint: []byte("c")}
	j, _ := json.Marshal(r)
	old, _ := json.Marshal(struct {
		Index      int64       `json:"index"`
		Proof      []tlog.Hash `json:"proof"`
		Checkpoint []byte      `json:"checkpoint"`
	}{1, []tlog.Hash{tlog.Hash(h)}, []byte("c")})
	if string(j) != string(old) {
		t.Fatalf("JSON receipt %s, was %s", j, old)
	}
	for _, bad := range []string{"", "AAAA", string(b[:43]), string(b) + "=", strings.Repeat("A", 43) + "B", strings.Repeat("!", 44)} {
		back = h
		if err := back.UnmarshalText([]byte(bad)); err == nil || back != h {
			t.Errorf("UnmarshalText(%q): %v", bad, err)
		}
	}
}
