package policy

import (
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := "testdata/" + name
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file; if the change is intended, run go test -update\n--- got ---\n%s", name, got)
	}
}

func TestDisclosure(t *testing.T) {
	m := mustParseFile(t, "aircon.json")
	md := m.DisclosureMarkdown()
	golden(t, "aircon.disclosure.md", md)
	golden(t, "aircon.disclosure.html", m.DisclosureHTML())
	for _, must := range []string{"What never leaves your device", "camera frames", "rounded to the nearest 10", "replaced by a pseudonym", "only the mean over each 15 minutes"} {
		if !strings.Contains(md, must) {
			t.Errorf("disclosure lacks %q", must)
		}
	}
	v := mustParseFile(t, "vacuum.json")
	golden(t, "vacuum.disclosure.md", v.DisclosureMarkdown())
	golden(t, "vacuum.disclosure.html", v.DisclosureHTML())
	// Manifest text is escaped in HTML.
	m.Streams[2].Description = "<script>alert(1)</script>"
	if strings.Contains(m.DisclosureHTML(), "<script>alert") {
		t.Error("HTML disclosure does not escape manifest text")
	}
}
