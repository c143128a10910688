package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// markdownFiles are the README and every page of docs/.
func markdownFiles(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob("docs/*.md")
	if err != nil || len(pages) == 0 {
		t.Fatalf("no docs/*.md: %v", err)
	}
	return append([]string{"README.md"}, pages...)
}

// prose returns the lines of a markdown file, those of code blocks blank.
func prose(text string) []string {
	var lines []string
	fence := false
	for line := range strings.Lines(text) {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fence = !fence
			line = ""
		}
		if fence {
			line = ""
		}
		lines = append(lines, strings.TrimRight(line, "\n"))
	}
	return lines
}

// anchors returns the anchors GitHub gives a file's headings: lower case,
// punctuation dropped, spaces turned into hyphens, repeats numbered.
func anchors(text string) map[string]bool {
	found := make(map[string]bool)
	seen := make(map[string]int)
	for _, line := range prose(text) {
		title, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " ")
		if !strings.HasPrefix(line, "#") || !ok {
			continue
		}
		var b strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(title)) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				b.WriteRune(r)
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			found[a+"-"+strconv.Itoa(n)] = true
		} else {
			found[a] = true
		}
		seen[a]++
	}
	return found
}

var markdownLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestDocsLinksResolve follows every relative link of the README and of
// docs/ to its file, and to its heading when it names one.
func TestDocsLinksResolve(t *testing.T) {
	t.Parallel()
	texts := make(map[string]string)
	read := func(path string) (string, bool) {
		if s, ok := texts[path]; ok {
			return s, true
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "", false
		}
		texts[path] = string(b)
		return string(b), true
	}
	links := 0
	for _, file := range markdownFiles(t) {
		text, _ := read(file)
		for i, line := range prose(text) {
			for _, m := range markdownLink.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				links++
				path, anchor, _ := strings.Cut(target, "#")
				resolved := file
				if path != "" {
					resolved = filepath.Join(filepath.Dir(file), path)
				}
				linked, ok := read(resolved)
				if !ok {
					if _, err := os.Stat(resolved); err == nil && anchor == "" {
						continue // a directory or a file that is not markdown
					}
					t.Errorf("%s:%d: link %s: no file %s", file, i+1, target, resolved)
					continue
				}
				if anchor != "" && !anchors(linked)[anchor] {
					t.Errorf("%s:%d: link %s: %s has no heading #%s", file, i+1, target, resolved, anchor)
				}
			}
		}
	}
	if links < 20 {
		t.Errorf("found only %d relative links: is the link pattern broken?", links)
	}
}

// TestDocsNameEverySetting checks that docs/configuration.md names every
// setting of the settings table, by its variables and its flag.
func TestDocsNameEverySetting(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, s := range settings() {
		for _, name := range s.env {
			if !strings.Contains(doc, "`"+name+"`") {
				t.Errorf("docs/configuration.md does not name the setting %s", name)
			}
		}
		if !strings.Contains(doc, "`-"+s.flag+"`") {
			t.Errorf("docs/configuration.md does not name the flag -%s", s.flag)
		}
	}
}

// TestReadmeLinksEveryPage checks that the README leads to every page of
// docs/.
func TestReadmeLinksEveryPage(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, page := range markdownFiles(t)[1:] {
		if !strings.Contains(string(readme), "]("+page+")") {
			t.Errorf("README.md does not link to %s", page)
		}
	}
}

func TestAnchors(t *testing.T) {
	t.Parallel()
	got := anchors("# Kafka: TLS and SASL\n```sh\n# not a heading\n```\n## Big tables: backfill\n## `DRY_RUN` output\n## Notes\n## Notes\n")
	for _, want := range []string{"kafka-tls-and-sasl", "big-tables-backfill", "dry_run-output", "notes", "notes-1"} {
		if !got[want] {
			t.Errorf("no anchor %q in %v", want, got)
		}
	}
	if got["not-a-heading"] {
		t.Errorf("a comment in a code block became a heading")
	}
}
