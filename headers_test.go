package wechatlogin

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestStripIdentityHeaders(t *testing.T) {
	h := http.Header{}
	spoofed := []string{
		"X-Wx-Openid", "x-wx-openid", "X-WX-OPENID", "X_WX_OPENID", "x.wx.openid", "X-Wx_Openid",
		"X-Wx-Unionid", "X_WX_UNIONID", "X-Wx-Appid", "x.wx.appid", "X-Wx-Session-Key", "X_WX_SESSION_KEY",
	}
	for _, name := range spoofed {
		h[name] = []string{"spoofed", "twice"} // raw map access keeps the spelling, as HTTP/2 and server options can
	}
	kept := []string{"X-Wx-Openidx", "X-Wx-Open", "X-Wx-Session", "X-Wx-Code", "Authorization", "X-Wx-Unionid-Extra", "Xx-Wx-Appid"}
	for _, name := range kept {
		h[name] = []string{"kept"}
	}
	stripIdentityHeaders(h)
	for _, name := range spoofed {
		if _, ok := h[name]; ok {
			t.Errorf("%s survived", name)
		}
	}
	for _, name := range kept {
		if h[name] == nil {
			t.Errorf("%s was removed but is not an identity header", name)
		}
	}
}

func TestStripIdentityHeadersAllocatesNothing(t *testing.T) {
	h := http.Header{"User-Agent": {"x"}, "Accept": {"*/*"}, "Authorization": {"Bearer t"}, "X-Request-Id": {"1"}}
	if n := testing.AllocsPerRun(100, func() { stripIdentityHeaders(h) }); n != 0 {
		t.Errorf("stripIdentityHeaders allocates %v times per request", n)
	}
}

func TestSetIdentityHeaders(t *testing.T) {
	for _, tc := range []struct {
		name    string
		forward bool
		id      Identity
		want    map[string]string
	}{
		{"no unionid", false, Identity{OpenID: "o1", SessionKey: "k"}, map[string]string{headerOpenID: "o1", headerAppID: "wxapp", headerUnionID: "", headerSessionKey: ""}},
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

func BenchmarkStripIdentityHeaders(b *testing.B) {
	h := http.Header{"User-Agent": {"x"}, "Accept": {"*/*"}, "Authorization": {"Bearer t"}, "X-Request-Id": {"1"},
		"Accept-Encoding": {"gzip"}, "Content-Type": {"application/json"}, "X-Forwarded-For": {"1.2.3.4"}}
	b.ReportAllocs()
	for b.Loop() {
		stripIdentityHeaders(h)
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
		"X-Wx-Openid": {"victim"}, "X_wx_unionid": {"victim"}, "Content-Digest": {"sha-256=:x:"},
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
