// Package fleet tests several gateways acting as one: each gateway is a
// Caddy process of its own (the in-process test Caddy can only be one), on
// its own free ports, started from this repository's cmd/caddy, built once.
package fleet

import (
	"fmt"
	"os"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

// caddyBinary is cmd/caddy, built by TestMain.
var caddyBinary string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "wechat-login-fleet-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if caddyBinary, err = testkit.BuildCaddy(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
