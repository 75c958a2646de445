package sensible_test

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestREADMEQuickStarts checks that each quick start in README.md is, line
// for line, the body of its example in example_test.go, which runs with
// the tests: what the README shows compiles and works. A quick start
// follows a line "<!-- example_test.go: Example_name -->".
func TestREADMEQuickStarts(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	shown := quickStarts(t, readme)
	for _, name := range []string{"Example_identity", "Example_deviceToCloud"} {
		want := exampleBody(t, src, name)
		got, ok := shown[name]
		if !ok {
			t.Errorf("README.md has no quick start for %s", name)
			continue
		}
		if got != want {
			t.Errorf("README.md's quick start for %s differs from example_test.go:\n%s", name, firstDifference(got, want))
		}
		delete(shown, name)
	}
	for name := range shown {
		t.Errorf("README.md shows %s, which this test does not check", name)
	}
}

// quickStarts returns the Go blocks of README.md that follow an
// "<!-- example_test.go: Name -->" line, by name.
func quickStarts(t *testing.T, readme []byte) map[string]string {
	const marker = "<!-- example_test.go: "
	blocks := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(readme))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, marker) {
			continue
		}
		name := strings.TrimSuffix(strings.TrimPrefix(line, marker), " -->")
		if !sc.Scan() || sc.Text() != "```go" {
			t.Fatalf("README.md: %s is not followed by a ```go block", line)
		}
		var b strings.Builder
		for sc.Scan() && sc.Text() != "```" {
			b.WriteString(sc.Text())
			b.WriteByte('\n')
		}
		blocks[name] = b.String()
	}
	return blocks
}

// exampleBody returns the body of func name in src, up to its "//
// Output:" comment, one tab of indentation removed.
func exampleBody(t *testing.T, src []byte, name string) string {
	lines := strings.Split(string(src), "\n")
	for i, l := range lines {
		if l != "func "+name+"() {" {
			continue
		}
		var b strings.Builder
		for _, l := range lines[i+1:] {
			if l == "\t// Output:" || l == "}" {
				return b.String()
			}
			b.WriteString(strings.TrimPrefix(l, "\t"))
			b.WriteByte('\n')
		}
	}
	t.Fatalf("example_test.go has no func %s", name)
	return ""
}

// firstDifference shows where got and want part.
func firstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + strconv.Itoa(i+1) + ":\nREADME:  " + gl + "\nexample: " + wl
		}
	}
	return ""
}
