package integration

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

// cloudHostingHeaders are headers WeChat Cloud Hosting sets, which a backend
// ported from it trusts; the module sets none of them but X-WX-SOURCE (on a
// request with an identity, to wx_client, which assertOnlyIdentity checks),
// so a copy the backend sees can only be the client's.
var cloudHostingHeaders = []string{
	"X-WX-SOURCE", "X-WX-ENV", "X-WX-FROM-OPENID", "X-WX-CLOUDBASE-ACCESS-TOKEN",
	"X-WX-FROM-APPID", "X-WX-FROM-UNIONID", "X-WX-SERVICE", "X-WX-REGION",
}

// foldHeaderName is how a CGI-style backend reads a header name: lower case,
// with '_' and '.' as '-'.
func foldHeaderName(name string) string {
	return strings.NewReplacer("_", "-", ".", "-").Replace(strings.ToLower(name))
}

// assertNoClientFamily checks that the backend saw no header of the X-WX-
// family but the ones the module sets (whose values assertOnlyIdentity
// checks).
func assertNoClientFamily(t *testing.T, h http.Header) {
	t.Helper()
	for name, values := range h {
		folded := foldHeaderName(name)
		if strings.HasPrefix(folded, "x-wx-") && !slices.Contains([]string{"x-wx-openid", "x-wx-unionid", "x-wx-appid", "x-wx-source"}, folded) {
			t.Errorf("the backend saw %s: %q", name, values)
		}
	}
}

// TestConnectionCannotEraseIdentity: a client that names an identity header
// in Connection must not make reverse_proxy drop the trusted one as
// hop-by-hop, on a login or on a session-verified request.
func TestConnectionCannotEraseIdentity(t *testing.T) {
	const appID, secret = "wxconnection", "connection-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{{AppID: appID, Secret: secret, UnionBound: true}}})
	backend := testkit.NewBackend(t, nil)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.Handle("control", "request_header X-Trusted set-by-caddy", testkit.ProxyTo(backend)),
		testkit.Handle("", testkit.WechatLogin(appID, secret, simURL, sessionBlock("secret "+sessionSecretA)), testkit.ProxyTo(backend)),
	))
	openID, unionID := wechatsim.OpenID(appID, "alice"), wechatsim.UnionID("alice")

	// Control: the proxy does drop a header set before it when the client
	// names it in Connection; without that this test proves nothing.
	assertStatus(t, testkit.Get(t, "/control/game", "Connection: X-Trusted"), http.StatusOK)
	if got := backend.Last(t).Header.Get("X-Trusted"); got != "" {
		t.Fatalf("reverse_proxy kept a header named in Connection (%q): the test proves nothing", got)
	}

	connections := [][]string{
		{"Connection: X-Wx-Openid"},
		{"Connection: keep-alive, X-WX-APPID ,x-wx-unionid"},
		{"Connection: X-Wx-Openid", "Connection: X_WX_APPID"},
	}
	token := ""
	for i, connection := range connections {
		login := testkit.Get(t, "/wx/login?code=alice."+string(rune('a'+i)), connection...)
		assertStatus(t, login, http.StatusOK)
		got := backend.Last(t).Header
		assertIdentity(t, got, "x-wx-openid", openID)
		assertIdentity(t, got, "x-wx-unionid", unionID)
		assertIdentity(t, got, "x-wx-appid", appID)
		token = login.Header.Get("X-WX-SESSION")
	}
	for _, connection := range connections {
		for _, presented := range []string{"Authorization: Bearer " + token, "X-WX-SESSION: " + token} {
			assertStatus(t, testkit.Get(t, "/game", append([]string{presented}, connection...)...), http.StatusOK)
			got := backend.Last(t).Header
			assertIdentity(t, got, "x-wx-openid", openID)
			assertIdentity(t, got, "x-wx-unionid", unionID)
			assertIdentity(t, got, "x-wx-appid", appID)
		}
	}
}

// TestCloudHostingHeadersNeverReachTheBackend: every client-sent header of
// the X-WX- family is removed, not only the identity headers the module
// sets, in every spelling a server may let through.
func TestCloudHostingHeadersNeverReachTheBackend(t *testing.T) {
	const secret = "family-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: "wxfamily", Secret: secret},
		{AppID: "wxfamilysession", Secret: secret},
	}})
	backend := testkit.NewBackend(t, nil)
	withSession := testkit.Route("session", "wxfamilysession", secret, simURL, backend, sessionBlock("secret "+sessionSecretA))
	withoutSession := testkit.Handle("", testkit.WechatLogin("wxfamily", secret, simURL), testkit.ProxyTo(backend))
	control := testkit.Handle("control", testkit.ProxyTo(backend))

	// sendEverywhere sends headers on a plain proxy (the control: they do
	// arrive), a login, a game request, a login with sessions and a game
	// request presenting that session.
	sendEverywhere := func(t *testing.T, headers []string, round string) {
		t.Helper()
		assertStatus(t, testkit.Get(t, "/control/game", headers...), http.StatusOK)
		seen := backend.Last(t).Header
		for _, h := range headers {
			name, _, _ := strings.Cut(h, ": ")
			if len(identityValues(seen, foldHeaderName(name))) == 0 {
				t.Fatalf("without wechat_login, %s did not reach the backend: the test proves nothing", name)
			}
		}

		assertStatus(t, testkit.Get(t, "/wx/login?code=mallory."+round+"a", headers...), http.StatusOK)
		assertNoClientFamily(t, backend.Last(t).Header)
		assertOnlyIdentity(t, backend.Last(t).Header, "wxfamily", wechatsim.OpenID("wxfamily", "mallory"))

		assertStatus(t, testkit.Get(t, "/game", headers...), http.StatusOK)
		assertNoClientFamily(t, backend.Last(t).Header)
		assertOnlyIdentity(t, backend.Last(t).Header, "", "")

		login := testkit.Get(t, "/session/wx/login?code=mallory."+round+"b", headers...)
		assertStatus(t, login, http.StatusOK)
		assertNoClientFamily(t, backend.Last(t).Header)

		session := "Authorization: Bearer " + login.Header.Get("X-WX-SESSION")
		assertStatus(t, testkit.Get(t, "/session/game", append([]string{session}, headers...)...), http.StatusOK)
		assertNoClientFamily(t, backend.Last(t).Header)
		assertOnlyIdentity(t, backend.Last(t).Header, "wxfamilysession", wechatsim.OpenID("wxfamilysession", "mallory"))
	}

	t.Run("hyphenated", func(t *testing.T) {
		testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(control, withSession, withoutSession))
		var headers []string
		for _, name := range cloudHostingHeaders {
			headers = append(headers, name+": spoofed")
		}
		sendEverywhere(t, headers, "1")
	})

	t.Run("underscore and dot, allowed by the server", func(t *testing.T) {
		var underscored, dotted, headers []string
		for i, name := range cloudHostingHeaders {
			if i%2 == 0 {
				name = strings.ReplaceAll(name, "-", "_")
				underscored = append(underscored, name)
			} else {
				name = strings.ReplaceAll(name, "-", ".")
				dotted = append(dotted, name)
			}
			headers = append(headers, name+": spoofed")
		}
		testkit.StartCaddy(t, testkit.GlobalOptions("servers {\n\t\texpected_underscore_headers "+strings.Join(underscored, " ")+
			"\n\t\texpected_dot_headers "+strings.Join(dotted, " ")+"\n\t}")+testkit.Site(control, withSession, withoutSession))
		sendEverywhere(t, headers, "2")
	})
}

// cloudHostingOpenIDTemplate is GET /api/wx_openid of WeChat Cloud Hosting's
// express template, in Go: it answers the caller's openid only when
// X-WX-SOURCE is present, as Cloud Hosting's docs tell backends to check,
// and otherwise never answers. Every other path answers "ok".
func cloudHostingOpenIDTemplate(w http.ResponseWriter, r *http.Request) {
	if !strings.HasSuffix(r.URL.Path, "/api/wx_openid") {
		io.WriteString(w, "ok")
		return
	}
	if r.Header.Get("X-WX-SOURCE") != "" {
		io.WriteString(w, r.Header.Get("X-WX-OPENID"))
		return
	}
	<-r.Context().Done()
}

// TestCloudHostingTemplateRunsUnchanged: a backend written for Cloud Hosting
// answers every request the gateway forwards with a verified identity (a
// login, a session), because the gateway sets X-WX-SOURCE on those; and a
// client that sends its own X-WX-SOURCE on a request without one (no
// session under optional, no session block) never gets it to the backend,
// which then answers nothing, as it would to a caller that is not WeChat's.
func TestCloudHostingTemplateRunsUnchanged(t *testing.T) {
	const secret = "template-secret"
	_, simURL := testkit.NewSim(t, wechatsim.Options{Apps: []wechatsim.App{
		{AppID: "wxtemplate", Secret: secret},
		{AppID: "wxtemplateoptional", Secret: secret},
		{AppID: "wxtemplatenosession", Secret: secret},
	}})
	backend := testkit.NewBackend(t, cloudHostingOpenIDTemplate)
	testkit.StartCaddy(t, testkit.GlobalOptions("")+testkit.Site(
		testkit.Route("required", "wxtemplate", secret, simURL, backend, sessionBlock("secret "+sessionSecretA)),
		testkit.Route("optional", "wxtemplateoptional", secret, simURL, backend, sessionBlock("secret "+sessionSecretA, "optional")),
		testkit.Route("nosession", "wxtemplatenosession", secret, simURL, backend),
	))
	spoofed := []string{"X-WX-SOURCE: wx_client", "X-WX-OPENID: oSpoofed"}

	for _, prefix := range []string{"required", "optional"} {
		appID := map[string]string{"required": "wxtemplate", "optional": "wxtemplateoptional"}[prefix]
		alice := wechatsim.OpenID(appID, "alice")
		login := testkit.Get(t, "/"+prefix+"/wx/login?code=alice.1", spoofed...)
		assertStatus(t, login, http.StatusOK)
		assertOnlyIdentity(t, backend.Last(t).Header, appID, alice)

		for _, presented := range []string{"Authorization: Bearer ", "X-WX-SESSION: "} {
			answer := testkit.Get(t, "/"+prefix+"/api/wx_openid", append([]string{presented + login.Header.Get("X-WX-SESSION")}, spoofed...)...)
			assertStatus(t, answer, http.StatusOK)
			if string(answer.Body) != alice {
				t.Errorf("%s with a session: the template answered %q, want the openid %q", prefix, answer.Body, alice)
			}
		}
	}

	// Refused: nothing reaches the backend.
	before := backend.Count()
	assertError(t, testkit.Get(t, "/required/api/wx_openid", spoofed...), http.StatusUnauthorized, "invalid_session", noErrcode)
	if backend.Count() != before {
		t.Error("a refused request reached the backend")
	}

	// No identity: the client's X-WX-SOURCE is stripped, and the template,
	// seeing none, never answers.
	for _, path := range []string{"/optional/api/wx_openid", "/nosession/api/wx_openid"} {
		before := backend.Count()
		ctx, cancel := context.WithCancel(context.Background())
		answered := make(chan error, 1)
		go func() {
			_, err := testkit.Fetch(ctx, http.MethodGet, path, nil, spoofed...)
			answered <- err
		}()
		for deadline := time.Now().Add(30 * time.Second); backend.Count() == before && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if backend.Count() == before {
			cancel()
			t.Fatalf("%s: the request never reached the backend", path)
		}
		assertNoClientFamily(t, backend.Last(t).Header)
		assertOnlyIdentity(t, backend.Last(t).Header, "", "")
		select {
		case err := <-answered:
			t.Errorf("%s: the template answered a request without X-WX-SOURCE (%v): the test proves nothing", path, err)
		default:
		}
		cancel()
		<-answered
	}
}
