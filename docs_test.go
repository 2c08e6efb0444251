package wechatlogin

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
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

// Every redis block and JSON shape that the README and docs/ show loads as
// written: users copy them.
func TestDocumentedRedisExamplesLoad(t *testing.T) {
	docs, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	caddyfiles, shapes := 0, 0
	for _, doc := range append(docs, "README.md") {
		text, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, block := range fencedBlocks(string(text)) {
			if strings.ContainsAny(block, "<…") {
				continue // syntax, not an example
			}
			if strings.HasPrefix(block, `"redis":`) {
				shapes++
				var handler struct {
					Redis *RedisConfig `json:"redis"`
				}
				dec := json.NewDecoder(strings.NewReader("{" + block + "}"))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&handler); err != nil {
					t.Errorf("%s: the JSON shape does not decode: %v", doc, err)
					continue
				}
				checkDocumentedRedis(t, doc, handler.Redis.validate(), handler.Redis)
				continue
			}
			for _, redisBlock := range redisBlocks(block) {
				caddyfiles++
				d := caddyfile.NewTestDispenser(redisBlock)
				d.Next()
				c, err := parseRedisBlock(d)
				checkDocumentedRedis(t, doc, err, c)
			}
		}
	}
	if caddyfiles < 9 || shapes < 2 {
		t.Errorf("found %d redis blocks and %d JSON shapes in the docs: the examples moved?", caddyfiles, shapes)
	}
}

func checkDocumentedRedis(t *testing.T, doc string, err error, c *RedisConfig) {
	t.Helper()
	if err == nil {
		_, err = c.resolve(caddy.NewReplacer())
	}
	if err != nil {
		t.Errorf("%s: a documented redis example does not load: %v", doc, err)
	}
}

// fencedBlocks returns the contents of a Markdown text's fenced code blocks.
func fencedBlocks(text string) []string {
	var blocks []string
	for {
		_, rest, ok := strings.Cut(text, "```")
		if !ok {
			return blocks
		}
		_, rest, _ = strings.Cut(rest, "\n") // the info string
		block, after, ok := strings.Cut(rest, "```")
		if !ok {
			return blocks
		}
		blocks = append(blocks, block)
		text = after
	}
}

// redisBlocks returns every `redis { … }` block in a Caddyfile text.
func redisBlocks(text string) []string {
	var blocks []string
	for {
		start := strings.Index(text, "redis {")
		if start < 0 {
			return blocks
		}
		depth := 0
		for end := start; end < len(text); end++ {
			switch text[end] {
			case '{':
				depth++
			case '}':
				depth--
			}
			if depth == 0 && text[end] == '}' {
				blocks = append(blocks, text[start:end+1])
				text = text[end+1:]
				break
			}
		}
		if depth != 0 {
			return append(blocks, text[start:]) // unclosed: the parser says so
		}
	}
}
