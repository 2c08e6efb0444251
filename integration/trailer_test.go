package integration

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// A chunked request may end with trailers, which some backends merge into
// headers (Apache's MergeTrailers): an identity must not arrive that way
// either, on a login or on a session-carrying game request.
func TestSpoofedIdentityTrailers(t *testing.T) {
	const secret = "trailer-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: "wxtrailer", Secret: secret}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.Handle("", testkit.WechatLogin("wxtrailer", secret, simURL, sessionBlock("secret "+sessionSecretA)), testkit.ProxyTo(backend))))

	login := rawChunked(t, "/wx/login", "", `{"code":"trudy.1"}`)
	if login.StatusCode != http.StatusOK {
		t.Fatalf("login: %d", login.StatusCode)
	}
	for _, tc := range []struct {
		name, path, header string
	}{
		{"login", "/wx/login", ""},
		{"game request with a session", "/game", "X-WX-SESSION: " + login.Header.Get("X-WX-SESSION")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := `{"code":"trudy.2"}`
			if resp := rawChunked(t, tc.path, tc.header, body); resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			got := backend.Last(t)
			if string(got.Body) != body {
				t.Errorf("body %q, want %q", got.Body, body)
			}
			if got.Trailer.Get("X-Checksum") != "kept" {
				t.Errorf("the ordinary trailer did not arrive (trailers %v): the test proves nothing", got.Trailer)
			}
			for name, values := range got.Trailer {
				if strings.EqualFold(strings.NewReplacer("_", "-", ".", "-").Replace(name), "x-wx-openid") || strings.EqualFold(name, "x-wx-appid") {
					t.Errorf("identity trailer %s: %q reached the backend", name, values)
				}
			}
			if want := wechatsim.OpenID("wxtrailer", "trudy"); got.Header.Get("X-WX-OPENID") != want {
				t.Errorf("X-WX-OPENID %q, want %q", got.Header.Get("X-WX-OPENID"), want)
			}
		})
	}
}

// rawChunked sends a POST with a chunked JSON body followed by trailers,
// one of them spoofing an identity, over a plain connection.
func rawChunked(t *testing.T, path, header, body string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", testkit.HTTPPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	extra := ""
	if header != "" {
		extra = header + "\r\n"
	}
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"+
		"Trailer: X-Wx-Openid, X-Wx-Appid, X-Checksum\r\n%sConnection: close\r\n\r\n"+
		"%x\r\n%s\r\n0\r\nX-Wx-Openid: victim\r\nX-Wx-Appid: wxvictim\r\nX-Checksum: kept\r\n\r\n", path, extra, len(body), body)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}
