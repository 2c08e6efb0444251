package integration

import (
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
	testkit.Forbid(sessionSecretA, sessionSecretB, sessionSecretC)
	os.Exit(testkit.RunScanningLogs(m, "wechat exchange"))
}

// site is a Caddyfile site block on the test port.
func site(directives ...string) string {
	return fmt.Sprintf("\n:%d {\n%s\n}\n", testkit.HTTPPort, strings.Join(directives, "\n"))
}

// wechatLogin is a wechat_login directive for appID at endpoint, with more
// subdirectives (one per line).
func wechatLogin(appID, secret, endpoint string, more ...string) string {
	return fmt.Sprintf("wechat_login {\n\tapp_id %s\n\tapp_secret %s\n\tendpoint %s\n\t%s\n}",
		appID, secret, endpoint, strings.Join(more, "\n\t"))
}

// proxyTo is a reverse_proxy directive to backend, with more subdirectives.
func proxyTo(backend *recordingBackend, more ...string) string {
	return fmt.Sprintf("reverse_proxy %s {\n\t%s\n}", backend.Listener.Addr(), strings.Join(more, "\n\t"))
}

// receivedRequest is what a backend saw of one request.
type receivedRequest struct {
	Path, RawQuery string
	Header         http.Header
	Body           []byte
	ContentLength  int64
}

// recordingBackend is a game server that remembers every request it
// receives, so tests can check what the gateway forwarded, and whether it
// forwarded anything at all.
type recordingBackend struct {
	*httptest.Server
	mu       sync.Mutex
	received []receivedRequest
}

// newBackend starts a backend answering with respond, or 200 "ok" if nil.
func newBackend(t *testing.T, respond http.HandlerFunc) *recordingBackend {
	t.Helper()
	if respond == nil {
		respond = func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }
	}
	b := new(recordingBackend)
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.received = append(b.received, receivedRequest{
			Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone(), Body: body, ContentLength: r.ContentLength,
		})
		b.mu.Unlock()
		respond(w, r)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *recordingBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.received)
}

// last is the latest request received; the test fails if there is none.
func (b *recordingBackend) last(t *testing.T) receivedRequest {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.received) == 0 {
		t.Fatal("the backend received no request")
	}
	return b.received[len(b.received)-1]
}

// identityValues collects the values of every header in h that names the
// identity header want ("x-wx-openid"), in any case and with '_' or '.' for
// '-': every spelling a backend might read.
func identityValues(h http.Header, want string) []string {
	var values []string
	for name, vs := range h {
		folded := strings.NewReplacer("_", "-", ".", "-").Replace(strings.ToLower(name))
		if folded == want {
			values = append(values, vs...)
		}
	}
	return values
}

// assertIdentity checks that h carries exactly one spelling and one value of
// header want, equal to value; an empty value means the header is absent.
func assertIdentity(t *testing.T, h http.Header, want, value string) {
	t.Helper()
	got := identityValues(h, want)
	var expected []string
	if value != "" {
		expected = []string{value}
	}
	if !slices.Equal(got, expected) {
		t.Errorf("backend saw %s = %q, want %q", want, got, expected)
	}
}

// response is a finished response with its body read.
type response struct {
	*http.Response
	body []byte
}

// client talks to the test Caddy without keep-alive, so that no request
// lands on a connection still served by a previous config.
var client = &http.Client{
	Timeout:       30 * time.Second,
	Transport:     &http.Transport{DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// send makes a request to the test Caddy. Headers are "Name: value" strings
// sent with the name spelled exactly as given; a name may repeat.
func send(t *testing.T, method, path, body string, headers ...string) response {
	t.Helper()
	var reader io.Reader
	if body != "" {
		reader = strings.NewReader(body)
	}
	return do(t, newRequest(t, method, path, reader, headers...))
}

// newRequest builds a request to the test Caddy; see send.
func newRequest(t *testing.T, method, path string, body io.Reader, headers ...string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, testkit.BaseURL()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ": ")
		if !ok {
			t.Fatalf("header %q is not \"Name: value\"", h)
		}
		req.Header[name] = append(req.Header[name], value) // no canonicalization
	}
	return req
}

// do sends req and reads the whole response.
func do(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp, body}
}

func get(t *testing.T, path string, headers ...string) response {
	t.Helper()
	return send(t, http.MethodGet, path, "", headers...)
}

// assertStatus fails the test now unless resp has the status.
func assertStatus(t *testing.T, resp response, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d; body %s", resp.Request.Method, resp.Request.URL.RequestURI(), resp.StatusCode, status, resp.body)
	}
}

// noErrcode is the errcode expected of an error that WeChat did not give.
const noErrcode = 0

// assertError checks a refusal against the error table: the status, a JSON
// body {"error","message"[,"errcode"]} (errcode exactly when wantErrcode is
// not noErrcode), Retry-After in whole seconds on 429 and 503, and nothing
// secret in it.
func assertError(t *testing.T, resp response, status int, code string, wantErrcode int) {
	t.Helper()
	assertStatus(t, resp, status)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(resp.body, &body); err != nil {
		t.Fatalf("body %s is not a JSON object: %v", resp.body, err)
	}
	for field := range body {
		if field != "error" && field != "message" && field != "errcode" {
			t.Errorf("body %s has an undocumented field %q", resp.body, field)
		}
	}
	var gotCode, message string
	if err := json.Unmarshal(body["error"], &gotCode); err != nil || gotCode != code {
		t.Errorf("body %s: error %q, want %q", resp.body, gotCode, code)
	}
	if err := json.Unmarshal(body["message"], &message); err != nil || message == "" {
		t.Errorf("body %s: message must be a non-empty string", resp.body)
	}
	if raw, ok := body["errcode"]; wantErrcode == noErrcode {
		if ok {
			t.Errorf("body %s has an errcode, but WeChat gave none", resp.body)
		}
	} else if string(raw) != strconv.Itoa(wantErrcode) {
		t.Errorf("body %s: errcode %s, want %d", resp.body, raw, wantErrcode)
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
			t.Errorf("Retry-After %q, want whole seconds, at least 1", resp.Header.Get("Retry-After"))
		}
	}
	assertNoLeaks(t, resp)
}

// assertNoLeaks fails if a secret, a code or a session_key is anywhere in
// the response the client got.
func assertNoLeaks(t *testing.T, resp response) {
	t.Helper()
	var text strings.Builder
	resp.Header.Write(&text)
	text.Write(resp.body)
	if leaks := testkit.Leaks(text.String()); len(leaks) > 0 {
		t.Errorf("the response to %s carries %d secret(s), code(s) or session_key(s)", resp.Request.URL.Path, len(leaks))
	}
}

// reset forgets the requests received so far.
func (b *recordingBackend) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.received = nil
}

// handle is a handle block for the paths under /prefix/, or for every
// other path if prefix is empty.
func handle(prefix string, directives ...string) string {
	matcher := ""
	if prefix != "" {
		matcher = "/" + prefix + "/* "
	}
	return fmt.Sprintf("handle %s{\n%s\n}", matcher, strings.Join(directives, "\n"))
}

// loginUnder is the login_path subdirective of a gateway under /prefix/.
func loginUnder(prefix string) string { return "login_path /" + prefix + "/wx/login" }
