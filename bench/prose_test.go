package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// No figure typed by hand: the prose written by hand about the
// benchmarks (the analysis parts of docs/benchmarks.md, and the
// paragraphs of docs/architecture.md and README.md that cite
// docs/benchmarks.md) may quote a measured figure only from a table it
// cites, by its heading in quotes ("Who drives the connection"); every
// such figure must stand in a cell of a table it cites. A paragraph
// that cites no table may quote none.

// proseFiles are the hand-written sources, from the module's root; all
// is true where every paragraph is checked, false where only those that
// cite docs/benchmarks.md are.
var proseFiles = []struct {
	path string
	all  bool
}{
	{"bench/analysis.md", true},
	{"bench/analysis-latency.md", true},
	{"bench/analysis-scale.md", true},
	{"docs/architecture.md", false},
	{"README.md", false},
}

// figureRE finds measured figures: a number with a decimal point or a
// thousands separator, or followed by a unit of measure.
var figureRE = regexp.MustCompile(`\d[\d,]*\.\d+|\d{1,3}(?:,\d{3})+|\d+(?:\s?(?:%|×|ms\b|µs\b|msg/s|KiB|MiB|B\b|points?\b))`)

// citeRE finds a quoted heading.
var citeRE = regexp.MustCompile(`"([^"]+)"`)

// docTables returns the cells of every table in md under its heading
// (the heading's text, without the #s), the heading counted as a cell.
func docTables(md string) map[string][]string {
	out := map[string][]string{}
	heading := ""
	for _, line := range strings.Split(md, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "#"):
			heading = strings.TrimSpace(strings.TrimLeft(line, "#"))
		case strings.HasPrefix(line, "|") && heading != "":
			for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
				out[heading] = append(out[heading], strings.TrimSpace(c))
			}
		}
	}
	return out
}

// cited returns the cells of the tables whose headings p quotes (a
// quote matches a heading it starts).
func cited(p string, tables map[string][]string) (names []string, cells []string) {
	for _, m := range citeRE.FindAllStringSubmatch(p, -1) {
		q := strings.Join(strings.Fields(m[1]), " ")
		for h, cs := range tables {
			if strings.HasPrefix(h, q) {
				names = append(names, h)
				cells = append(cells, cs...)
			}
		}
	}
	return names, cells
}

// uncitedFigures returns the figures of p that stand in no cell of the
// tables it cites.
func uncitedFigures(p string, tables map[string][]string) []string {
	// Code and commands are not prose.
	p = regexp.MustCompile("(?s)```.*?```|`[^`]*`").ReplaceAllString(p, "")
	_, cells := cited(p, tables)
	var bad []string
	for _, f := range figureRE.FindAllString(p, -1) {
		num := regexp.MustCompile(`^[\d,.]+`).FindString(f)
		if !slices.ContainsFunc(cells, func(c string) bool { return containsNumber(c, num) }) {
			bad = append(bad, f)
		}
	}
	return bad
}

// containsNumber reports whether num stands in cell as a whole number
// (not a part of a longer one).
func containsNumber(cell, num string) bool {
	digit := func(i int) bool { return i >= 0 && i < len(cell) && cell[i] >= '0' && cell[i] <= '9' }
	for i := 0; i+len(num) <= len(cell); i++ {
		if cell[i:i+len(num)] != num {
			continue
		}
		end := i + len(num)
		before := !digit(i-1) && !((i >= 1 && (cell[i-1] == '.' || cell[i-1] == ',')) && digit(i-2))
		after := !digit(end) && !((end < len(cell) && (cell[end] == '.' || cell[end] == ',')) && digit(end+1))
		if before && after {
			return true
		}
	}
	return false
}

func paragraphs(s string) []string {
	s = regexp.MustCompile("(?s)```.*?```").ReplaceAllString(s, "")
	return strings.Split(s, "\n\n")
}

func TestNoFigureTypedByHand(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Skip(err)
	}
	md, err := os.ReadFile(filepath.Join(root, "docs", "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	tables := docTables(string(md))
	for _, f := range proseFiles {
		b, err := os.ReadFile(filepath.Join(root, f.path))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range paragraphs(string(b)) {
			if !f.all && !strings.Contains(p, "benchmarks.md") {
				continue
			}
			if bad := uncitedFigures(p, tables); len(bad) > 0 {
				names, _ := cited(p, tables)
				t.Errorf("%s: %q are in no table the paragraph cites (%q):\n%s", f.path, bad, names, p)
			}
		}
	}
}

func TestUncitedFigures(t *testing.T) {
	tables := docTables("## Targets\n\n| a | b |\n|---|---|\n| x | 2,144 (c1) |\n\n### Who drives\n\n| RTT | msg/s |\n|---|---|\n| 1 ms | 1,238 |\n")
	for _, c := range []struct {
		p    string
		want int
	}{
		{`Three callers went from 1,238 to 2,144 msg/s.`, 2},
		{`Three callers (see "Who drives") went from 1,238 to 2,144 msg/s.`, 1},
		{`See "Who drives" and "Targets": 1,238 and 2,144; issue 13, RFC 2920, three callers.`, 0},
		{"See `go run ./bench -window 5s` and 12.5 ms.", 1},
		{`See "Targets": 2,145 and 44 msg/s and 2.1 ms.`, 3},
	} {
		if got := uncitedFigures(c.p, tables); len(got) != c.want {
			t.Errorf("%s: %q, want %d", c.p, got, c.want)
		}
	}
}
