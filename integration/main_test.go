package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-wechat-login/caddy-wechat-login"
	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

func TestMain(m *testing.M) {
	testkit.Forbid(sessionSecretA, sessionSecretB, sessionSecretC)
	os.Exit(testkit.RunScanningLogs(m, "wechat exchange"))
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

// assertStatus fails the test now unless resp has the status.
func assertStatus(t *testing.T, resp testkit.Response, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d; body %s", resp.Request.Method, resp.Request.URL.RequestURI(), resp.StatusCode, status, resp.Body)
	}
}

// noErrcode is the errcode expected of an error that WeChat did not give.
const noErrcode = 0

// assertError checks a refusal against the error table: the status, the
// JSON refusal testkit.CheckRefusal checks, with no fields but
// "error", "message" and "errcode" (errcode exactly when wantErrcode is not
// noErrcode).
func assertError(t *testing.T, resp testkit.Response, status int, code string, wantErrcode int) {
	t.Helper()
	assertStatus(t, resp, status)
	if err := testkit.CheckRefusal(resp, status, code); err != nil {
		t.Error(err)
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(resp.Body, &body); err != nil {
		t.Fatalf("body %s is not a JSON object: %v", resp.Body, err)
	}
	for field := range body {
		if field != "error" && field != "message" && field != "errcode" {
			t.Errorf("body %s has an undocumented field %q", resp.Body, field)
		}
	}
	if raw, ok := body["errcode"]; wantErrcode == noErrcode {
		if ok {
			t.Errorf("body %s has an errcode, but WeChat gave none", resp.Body)
		}
	} else if string(raw) != strconv.Itoa(wantErrcode) {
		t.Errorf("body %s: errcode %s, want %d", resp.Body, raw, wantErrcode)
	}
}

// assertNoLeaks fails if a secret, a code or a session_key is anywhere in
// the response the client got.
func assertNoLeaks(t *testing.T, resp testkit.Response) {
	t.Helper()
	if leaks := resp.Leaks(); len(leaks) > 0 {
		t.Errorf("the response to %s carries %d secret(s), code(s) or session_key(s)", resp.Request.URL.Path, len(leaks))
	}
}
