package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestDemo runs the demo and checks its story: refused before consent,
// stored with provenance under it, refused after the withdrawal, and an
// export that verifies.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, t.TempDir(), 3); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"before any consent, a reading is refused: true",
		"cloud:  stored 3 readings",
		"left the device under manifest",
		"the device now refuses to record: true",
		"export: 2 events of subj-demo-7f3a, verified with the log's key alone: true",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the demo did not say %q:\n%s", want, out.String())
		}
	}
}
