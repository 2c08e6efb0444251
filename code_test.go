package wechatlogin

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func TestLoginCode(t *testing.T) {
	for _, tc := range []struct {
		name        string
		target      string
		contentType string
		body        string
		header      string
		want        string
		wantStatus  int // 0 when a code is expected
	}{
		{name: "query", target: "/wx/login?code=alice.1", want: "alice.1"},
		{name: "json", target: "/wx/login", contentType: "application/json", body: `{"code":"alice.2","level":3}`, want: "alice.2"},
		{name: "json with charset", target: "/wx/login", contentType: "application/json; charset=utf-8", body: `{"code":"alice.2"}`, want: "alice.2"},
		{name: "vendor json", target: "/wx/login", contentType: "application/vnd.game+json", body: `{"code":"alice.2"}`, want: "alice.2"},
		{name: "form", target: "/wx/login", contentType: "application/x-www-form-urlencoded", body: "device=ios&code=alice.3", want: "alice.3"},
		{name: "header", target: "/wx/login", header: "alice.4", want: "alice.4"},
		{name: "query wins over body", target: "/wx/login?code=alice.5", contentType: "application/json", body: `{"code":"bob.5"}`, want: "alice.5"},
		{name: "body wins over header", target: "/wx/login", contentType: "application/json", body: `{"code":"alice.6"}`, header: "bob.6", want: "alice.6"},
		{name: "json without the field falls to the header", target: "/wx/login", contentType: "application/json", body: `{"other":1}`, header: "alice.7", want: "alice.7"},
		{name: "nested field is not top-level", target: "/wx/login", contentType: "application/json", body: `{"data":{"code":"alice.8"}}`, wantStatus: 400},
		{name: "other content type is not read", target: "/wx/login", contentType: "text/plain", body: `code=alice.9`, wantStatus: 400},
		{name: "none", target: "/wx/login?player=alice", wantStatus: 400},
		{name: "empty query", target: "/wx/login?code=&device=alice", wantStatus: 400},
		{name: "too long", target: "/wx/login?code=alice." + strings.Repeat("a", 123), wantStatus: 400},
		{name: "128 bytes is fine", target: "/wx/login?code=" + strings.Repeat("a", 128), want: strings.Repeat("a", 128)},
		{name: "control character", target: "/wx/login?code=alice%01b", wantStatus: 400},
		{name: "not ascii", target: "/wx/login?code=alice%E4%BD%A0", wantStatus: 400},
		{name: "malformed json", target: "/wx/login", contentType: "application/json", body: `{"code":"alice.10`, wantStatus: 400},
		{name: "json code not a string", target: "/wx/login", contentType: "application/json", body: `{"code":["alice.11"]}`, wantStatus: 400},
		{name: "json array", target: "/wx/login", contentType: "application/json", body: `["alice.12"]`, wantStatus: 400},
		{name: "malformed form", target: "/wx/login", contentType: "application/x-www-form-urlencoded", body: "code=alice.13%zz", wantStatus: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, tc.target, strings.NewReader(tc.body))
			if tc.body == "" {
				r = httptest.NewRequest(http.MethodGet, tc.target, nil)
			}
			if tc.contentType != "" {
				r.Header.Set("Content-Type", tc.contentType)
			}
			code, refusal := wechatLoginCode(r, "code", tc.header)
			if tc.wantStatus != 0 {
				if refusal == nil || refusal.status != tc.wantStatus || refusal.code != refusalInvalidRequest {
					t.Fatalf("got %q, %v; want status %d", code, refusal, tc.wantStatus)
				}
				// Every refused input above holds "alice", as a code or
				// near one: no message may repeat it.
				if strings.Contains(refusal.message, "alice") {
					t.Errorf("the error message repeats the code: %q", refusal.message)
				}
				return
			}
			if refusal != nil || code != tc.want {
				t.Fatalf("got %q, %v; want %q", code, refusal, tc.want)
			}
			if tc.body != "" {
				forwarded, _ := io.ReadAll(r.Body)
				if string(forwarded) != tc.body || r.ContentLength != int64(len(tc.body)) {
					t.Errorf("the body is not forwarded byte for byte: %q (length %d)", forwarded, r.ContentLength)
				}
			}
		})
	}
}

func TestLoginCodeCustomField(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/login?code=wrong", strings.NewReader(`{"wxcode":"alice.1"}`))
	r.Header.Set("Content-Type", "application/json")
	// code_field renames the query and body fields, not the header.
	if code, refusal := wechatLoginCode(r, "wxcode", ""); refusal != nil || code != "alice.1" {
		t.Fatalf("got %q, %v", code, refusal)
	}
}

// errAfterReader fails like http.MaxBytesReader does past request_body's
// max_size.
type errAfterReader struct{ err error }

func (r errAfterReader) Read([]byte) (int, error) { return 0, r.err }

func TestLoginCodeBodyTooLarge(t *testing.T) {
	for name, body := range map[string]io.Reader{
		"request_body max_size": errAfterReader{&http.MaxBytesError{Limit: 64}},
		"our own cap":           bytes.NewReader(bytes.Repeat([]byte(" "), maxLoginBody+1)),
	} {
		r := httptest.NewRequest(http.MethodPost, "/wx/login", body)
		r.Header.Set("Content-Type", "application/json")
		if _, refusal := wechatLoginCode(r, "code", ""); refusal == nil || refusal.status != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: got %v, want 413", name, refusal)
		}
	}
	r := httptest.NewRequest(http.MethodPost, "/wx/login", errAfterReader{errors.New("connection reset")})
	r.Header.Set("Content-Type", "application/json")
	if _, refusal := wechatLoginCode(r, "code", ""); refusal == nil || refusal.status != http.StatusBadRequest {
		t.Errorf("a failed read: got %v, want 400", refusal)
	}
}

func TestDropCode(t *testing.T) {
	for _, tc := range []struct{ query, want string }{
		{"code=alice.1", ""},
		{"a=1&code=alice.1&b=2%203", "a=1&b=2%203"},
		{"c%6Fde=alice.1&z=1", "z=1"},
		{"code=x&code=y&codex=1", "codex=1"},
		{"z=1&a=2", "z=1&a=2"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/wx/login?"+tc.query, nil)
		dropCode(r, "code", wechatPlatform)
		if r.URL.RawQuery != tc.want {
			t.Errorf("%q: query became %q, want %q", tc.query, r.URL.RawQuery, tc.want)
		}
		if strings.Contains(r.RequestURI, "alice") {
			t.Errorf("%q: RequestURI still holds the code: %q", tc.query, r.RequestURI)
		}
	}
}

// queryValue reads plain queries in place; it must agree with
// url.ParseQuery on every query and field.
func FuzzQueryValueAgreesWithParseQuery(f *testing.F) {
	for _, seed := range [][2]string{
		{"code=alice.1", "code"}, {"x=1&code=a&code=b", "code"}, {"code", "code"}, {"=v&&code=", "code"},
		{"=v", ""}, {"code=a;b", "code"}, {"c%6Fde=a%2Eb", "code"}, {"code=a+b", "code"}, {"co+de=1", "co de"},
		{"code=%zz&code=2", "code"}, {"a=1&", "a"}, {"&", ""},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, rawQuery, field string) {
		values, _ := url.ParseQuery(rawQuery)
		want, wantOK := values[field]
		got, ok := queryValue(rawQuery, field)
		if ok != wantOK || (ok && got != want[0]) {
			t.Fatalf("queryValue(%q, %q) = %q, %v; url.ParseQuery reads %q", rawQuery, field, got, ok, want)
		}
	})
}

func FuzzLoginCode(f *testing.F) {
	f.Add("code=alice.1", "application/json", `{"code":"alice.2"}`, "alice.3")
	f.Add("", "application/x-www-form-urlencoded", "code=alice.2&x=%zz", "")
	f.Add("code=%00", "text/plain", "", "\x7f")
	f.Add("", "application/json", `{"code":"\u0001"}`, "")
	f.Fuzz(func(t *testing.T, query, contentType, body, header string) {
		r, err := http.NewRequest(http.MethodPost, "http://example.test/wx/login", strings.NewReader(body))
		if err != nil {
			t.Skip()
		}
		r.URL.RawQuery = query
		r.Header.Set("Content-Type", contentType)
		code, refusal := wechatLoginCode(r, "code", header)
		if refusal != nil {
			if refusal.status != http.StatusBadRequest && refusal.status != http.StatusRequestEntityTooLarge {
				t.Fatalf("unexpected status %d", refusal.status)
			}
			if code != "" && strings.Contains(refusal.message, code) {
				t.Fatal("the error message repeats the code")
			}
			return
		}
		if code == "" || len(code) > maxCodeLen {
			t.Fatalf("accepted a code of %d bytes", len(code))
		}
		for i := 0; i < len(code); i++ {
			if code[i] < 0x20 || code[i] > 0x7e {
				t.Fatalf("accepted a non-printable code %q", code)
			}
		}
		if r.ContentLength >= 0 && r.Body != nil {
			if rest, _ := io.ReadAll(r.Body); len(rest) != len(body) {
				t.Fatalf("the body was not put back whole: %d of %d bytes", len(rest), len(body))
			}
		}
	})
}

// wechatLoginCode is the code of a WeChat login r, headerValue being the
// X-WX-CODE the client sent.
func wechatLoginCode(r *http.Request, field, headerValue string) (string, *jsonRefusal) {
	creds, refusal := loginCredentials(r, field, wechatPlatform, presentedHeaders{code: headerValue})
	return creds.code, refusal
}
