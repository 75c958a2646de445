package consent

import (
	"bufio"
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
