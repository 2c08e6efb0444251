// Package resilience tests how the gateway holds up when players loop,
// WeChat is busy, slow, silent or wrong, and clients give up: through a real
// Caddy, a reverse_proxy to a test backend and the WeChat simulator.
package resilience

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-wechat-login/caddy-wechat-login"
	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

func TestMain(m *testing.M) {
	// Go runs test packages in parallel: keep clear of the integration
	// package's Caddy on 9080/2999 unless the environment chose the ports.
	if os.Getenv("WXL_HTTP_PORT") == "" {
		testkit.HTTPPort = 9180
	}
	if os.Getenv("WXL_ADMIN_PORT") == "" {
		testkit.AdminPort = 3099
	}
	os.Exit(testkit.RunScanningLogs(m, "wechat exchange"))
}

// site is a Caddyfile site block on the test port.
func site(directives ...string) string {
	return fmt.Sprintf("\n:%d {\n%s\n}\n", testkit.HTTPPort, strings.Join(directives, "\n"))
}

// route is a wechat_login for appID at endpoint, with its own login path
// /<prefix>/wx/login and more subdirectives, in front of backend. Each route
// has its own app_id because budgets and cached codes are kept per app_id.
func route(prefix, appID, secret, endpoint string, backend *backend, more ...string) string {
	more = append(more, "login_path /"+prefix+"/wx/login")
	return fmt.Sprintf("handle /%s/* {\n\twechat_login {\n\t\tapp_id %s\n\t\tapp_secret %s\n\t\tendpoint %s\n\t\t%s\n\t}\n\treverse_proxy %s\n}",
		prefix, appID, secret, endpoint, strings.Join(more, "\n\t\t"), backend.Listener.Addr())
}

// backend is a game server that records the openid of every request it
// receives.
type backend struct {
	*httptest.Server
	mu      sync.Mutex
	openIDs []string
}

func newBackend(t *testing.T) *backend {
	t.Helper()
	b := new(backend)
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.openIDs = append(b.openIDs, r.Header.Get("X-WX-OPENID"))
		b.mu.Unlock()
		io.WriteString(w, "ok")
	}))
	t.Cleanup(b.Close)
	return b
}

// received is the openids of the requests received so far.
func (b *backend) received() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.openIDs)
}

// client talks to the test Caddy without keep-alive, so that no request
// lands on a connection still served by a previous config.
var client = &http.Client{
	Timeout:       30 * time.Second,
	Transport:     &http.Transport{DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// reply is a finished response with its body read.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// fetch GETs path from the test Caddy with headers ("Name: value"). It is
// safe to call from any goroutine.
func fetch(ctx context.Context, path string, headers ...string) (reply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, testkit.BaseURL()+path, nil)
	if err != nil {
		return reply{}, err
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ": ")
		req.Header.Add(name, value)
	}
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, body}, err
}

// get is fetch for the test goroutine: a failed request ends the test.
func get(t *testing.T, path string, headers ...string) reply {
	t.Helper()
	r, err := fetch(context.Background(), path, headers...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// refusal checks that r is the documented JSON refusal with status and
// error code (Retry-After of at least a second on 429 and 503), and returns
// what is wrong with it, if anything. It does not touch t, so any goroutine
// may call it.
func refusal(r reply, status int, code string) error {
	if r.status != status {
		return fmt.Errorf("got %v, want %d %s", r, status, code)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		return fmt.Errorf("%v: Content-Type %q, want application/json", r, ct)
	}
	var body struct{ Error, Message string }
	if err := json.Unmarshal(r.body, &body); err != nil || body.Error != code || body.Message == "" {
		return fmt.Errorf("body %s, want error %q with a message", r.body, code)
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 {
			return fmt.Errorf("%v: Retry-After %q, want whole seconds, at least 1", r, r.header.Get("Retry-After"))
		}
	}
	if leaks := testkit.Leaks(fmt.Sprint(r.header) + string(r.body)); len(leaks) > 0 {
		return fmt.Errorf("%d status refusal carries %d secret(s) or code(s)", r.status, len(leaks))
	}
	return nil
}

// errcodeOf is the errcode of a refusal body, or 0 if it has none.
func errcodeOf(r reply) int {
	var body struct{ Errcode int }
	_ = json.Unmarshal(r.body, &body)
	return body.Errcode
}

// parallel runs do(0) … do(n-1) on workers goroutines.
func parallel(n, workers int, do func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				do(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// waitFor polls until done reports true, failing the test after 10 seconds.
func waitFor(t *testing.T, what string, done func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !done(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}
