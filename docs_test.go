package wechatlogin

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The README's list of fuzz targets is the one place a contributor learns
// what to fuzz after a change: it must name every target in the repository.
func TestReadmeListsEveryFuzzTarget(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, list, ok := strings.Cut(string(readme), "Fuzz targets (a test keeps this list whole):")
	if !ok {
		t.Fatal(`README.md has no list of fuzz targets`)
	}
	list, _, _ = strings.Cut(list, "\n\n")
	target := regexp.MustCompile(`(?m)^func (Fuzz\w+)\(`)
	found := 0
	err = filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return err
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range target.FindAllStringSubmatch(string(src), -1) {
			found++
			if !strings.Contains(list, "`"+m[1]+"`") {
				t.Errorf("README.md's fuzz targets do not list %s (%s)", m[1], path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found == 0 {
		t.Fatal("no fuzz target found: the walk is broken")
	}
}
