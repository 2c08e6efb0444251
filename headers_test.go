package wechatlogin

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

func TestStripClientIdentity(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	family := []string{
		"X-Wx-Openid", "x-wx-openid", "X-WX-OPENID", "X_WX_OPENID", "x.wx.openid", "X-Wx_Openid",
		"X-Wx-Unionid", "X_WX_UNIONID", "X-Wx-Appid", "x.wx.appid", "X-Wx-Session-Key", "X_WX_SESSION_KEY",
		"X-Wx-Openidx", "X-Wx-Open", "X-Wx-Session", "X-Wx-Code", "X-Wx-Unionid-Extra", "X-Wx-", "x_wx_anything",
		"X_wx.Source", "X-WX-ENV", "X-WX-FROM-OPENID", "X-WX-CLOUDBASE-ACCESS-TOKEN", // set by Cloud Hosting
	}
	for _, name := range family {
		r.Header[name] = []string{"spoofed", "twice"} // raw map access keeps the spelling, as HTTP/2 and server options can
	}
	r.Header["X-Wx-Code"] = []string{"the-code", "second"}
	r.Header["X-Wx-Session"] = []string{"the-token"}
	kept := []string{"Authorization", "Xx-Wx-Appid", "X-Wx", "X-Wxopenid", "Wx-Openid", "X-Forwarded-For"}
	for _, name := range kept {
		r.Header[name] = []string{"kept"}
	}
	r.Header["Connection"] = []string{"keep-alive, X-Wx-Openid", "X_WX_APPID,Upgrade ,\tx-wx-anything", "X-Wx-Session"}

	code, session := stripClientIdentity(r)
	if code != "the-code" || session != "the-token" {
		t.Errorf("read code %q and session %q, want the first values the client sent", code, session)
	}
	for _, name := range family {
		if _, ok := r.Header[name]; ok {
			t.Errorf("%s survived", name)
		}
	}
	for _, name := range kept {
		if r.Header[name] == nil {
			t.Errorf("%s was removed but is not of the X-WX- family", name)
		}
	}
	if got, want := r.Header["Connection"], []string{"keep-alive", "Upgrade"}; !slices.Equal(got, want) {
		t.Errorf("Connection %q, want %q", got, want)
	}
}

func TestStripIdentityConnectionTokens(t *testing.T) {
	for _, tc := range []struct {
		connection []string
		want       []string // nil: no Connection header left
	}{
		{nil, nil},
		{[]string{"keep-alive"}, []string{"keep-alive"}},
		{[]string{"X-Wx-Openid"}, nil},
		{[]string{" X-WX-OPENID , X-Wx-Appid "}, nil},
		{[]string{"close", "x-wx-openid"}, []string{"close"}},
		{[]string{"x-wx-openid", "close"}, []string{"close"}},
		{[]string{"Upgrade, X-Wx-Unionid, keep-alive"}, []string{"Upgrade, keep-alive"}},
		{[]string{",,"}, []string{",,"}}, // nothing of ours: left as it came
		{[]string{"X-Wx-Openid,,close"}, []string{"close"}},
		{[]string{"X-Forwarded-For"}, []string{"X-Forwarded-For"}},
	} {
		h := http.Header{}
		if tc.connection != nil {
			h["Connection"] = slices.Clone(tc.connection)
		}
		stripIdentityConnectionTokens(h)
		if got, ok := h["Connection"]; !slices.Equal(got, tc.want) || ok != (tc.want != nil) {
			t.Errorf("Connection %q became %q, want %q", tc.connection, got, tc.want)
		}
	}
}

func TestIsIdentityHeader(t *testing.T) {
	for name, want := range map[string]bool{
		"X-Wx-Openid": true, "x_wx_openid": true, "X.WX.": true, "x-wx-": true, "X-WX-SOURCE": true,
		"X-Wx": false, "": false, "X-Wx_": true, "XWx-Openid": false, "X--Wx-Openid": false, "Y-Wx-Openid": false,
		"X-Wy-Openid": false, "X-Wx:Openid": false, " X-Wx-Openid": false,
	} {
		if got := isIdentityHeader(name); got != want {
			t.Errorf("isIdentityHeader(%q) = %v, want %v", name, got, want)
		}
	}
}

// What runs first on every request allocates nothing for an ordinary one,
// with or without a session token.
func TestStripClientIdentityAllocatesNothing(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header = http.Header{"User-Agent": {"x"}, "Accept": {"*/*"}, "Authorization": {"Bearer t"}, "X-Request-Id": {"1"}, "Connection": {"keep-alive"}}
	session := []string{"token"}
	if n := testing.AllocsPerRun(100, func() {
		r.Header[headerSession] = session
		stripClientIdentity(r)
	}); n != 0 {
		t.Errorf("stripClientIdentity allocates %v times per request", n)
	}
}

// FuzzStripClientIdentity: whatever names and Connection tokens a client
// sends, nothing of the X-WX- family is left, everything else is, and the
// code and session the gateway reads are the ones sent.
func FuzzStripClientIdentity(f *testing.F) {
	f.Add("X_WX_OPENID", "v", "keep-alive, X-Wx-Openid", "code", "token")
	f.Add("x.wx.from-openid", "", "X-Wx-Appid,,Upgrade", "", "")
	f.Add("Accept", "*/*", " , ", "c", "")
	f.Add("X-Wx-Session", "v", "", "", "")
	f.Fuzz(func(t *testing.T, name, value, connection, code, session string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header = http.Header{"Accept": {"*/*"}, name: {value}, "Connection": {connection, "close"}}
		if code != "" {
			r.Header[headerCode] = []string{code}
		}
		if session != "" {
			r.Header[headerSession] = []string{session}
		}
		before := r.Header.Clone()
		first := func(name string) string {
			if values := before[name]; len(values) > 0 {
				return values[0]
			}
			return ""
		}
		gotCode, gotSession := stripClientIdentity(r)
		if gotCode != first(headerCode) || gotSession != first(headerSession) {
			t.Fatalf("read code %q and session %q from %v", gotCode, gotSession, before)
		}
		for name, values := range before {
			_, left := r.Header[name]
			switch {
			case name == "Connection":
			case isIdentityHeader(name) && left:
				t.Fatalf("%q survived", name)
			case !isIdentityHeader(name) && !slices.Equal(r.Header[name], values):
				t.Fatalf("%q became %q", name, r.Header[name])
			}
		}
		var want []string // the Connection tokens not of the family, in order
		for _, value := range before["Connection"] {
			for token := range strings.SplitSeq(value, ",") {
				if token = strings.Trim(token, " \t"); token != "" && !isIdentityHeader(token) {
					want = append(want, token)
				}
			}
		}
		var got []string
		for _, value := range r.Header["Connection"] {
			for token := range strings.SplitSeq(value, ",") {
				if token = strings.Trim(token, " \t"); token != "" {
					got = append(got, token)
				}
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("Connection %q became %q: tokens %q, want %q", before["Connection"], r.Header["Connection"], got, want)
		}
	})
}

func TestSetIdentityHeaders(t *testing.T) {
	for _, tc := range []struct {
		name    string
		forward bool
		id      Identity
		want    map[string]string
	}{
		{"no unionid", false, Identity{OpenID: "o1", SessionKey: "k"}, map[string]string{headerOpenID: "o1", headerAppID: "wxapp", "X-Wx-Source": "wx_client", headerUnionID: "", headerSessionKey: ""}},
		{"unionid", false, Identity{OpenID: "o1", UnionID: "u1", SessionKey: "k"}, map[string]string{headerUnionID: "u1", headerSessionKey: ""}},
		{"session key forwarded", true, Identity{OpenID: "o1", SessionKey: "k"}, map[string]string{headerSessionKey: "k"}},
	} {
		h := &Handler{AppID: "wxapp", ForwardSessionKey: tc.forward}
		header := http.Header{}
		h.setIdentityHeaders(header, tc.id)
		for name, want := range tc.want {
			if got := header.Get(name); got != want {
				t.Errorf("%s: %s = %q, want %q", tc.name, name, got, want)
			}
		}
	}
}

func BenchmarkStripClientIdentity(b *testing.B) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header = http.Header{"User-Agent": {"x"}, "Accept": {"*/*"}, "Authorization": {"Bearer t"}, "X-Request-Id": {"1"},
		"Accept-Encoding": {"gzip"}, "Content-Type": {"application/json"}, "X-Forwarded-For": {"1.2.3.4"}, "Connection": {"keep-alive"}}
	b.ReportAllocs()
	for b.Loop() {
		stripClientIdentity(r)
	}
}

// trailerBody fills in the request's trailers as it ends, as net/http does.
type trailerBody struct {
	io.Reader
	r       *http.Request
	trailer http.Header
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == io.EOF {
		b.r.Trailer = b.trailer
	}
	return n, err
}

func (*trailerBody) Close() error { return nil }

func TestStripIdentityTrailers(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/game", nil)
	r.TransferEncoding = []string{"chunked"}
	r.Trailer = http.Header{"X-Wx-Openid": nil} // declared up front
	r.Body = &trailerBody{Reader: strings.NewReader("{}"), r: r, trailer: http.Header{
		"X-Wx-Openid": {"victim"}, "X_wx_unionid": {"victim"}, "X-Wx-From-Openid": {"victim"}, "X.wx.source": {"victim"},
		"Content-Digest": {"sha-256=:x:"},
	}}
	stripIdentityTrailers(r)
	if _, ok := r.Trailer["X-Wx-Openid"]; ok {
		t.Error("a declared identity trailer survived")
	}
	if _, err := io.ReadAll(r.Body); err != nil {
		t.Fatal(err)
	}
	for name := range r.Trailer {
		if isIdentityHeader(name) {
			t.Errorf("trailer %s survived the end of the body", name)
		}
	}
	if r.Trailer.Get("Content-Digest") == "" {
		t.Error("an ordinary trailer was removed")
	}

	plain := httptest.NewRequest(http.MethodPost, "/game", strings.NewReader("{}"))
	body := plain.Body
	stripIdentityTrailers(plain)
	if plain.Body != body {
		t.Error("a body that cannot carry trailers was wrapped")
	}
}
