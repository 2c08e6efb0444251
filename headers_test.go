package wechatlogin

import (
	"cmp"
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
		// Douyin Cloud's family, and the one the gateway gives QQ.
		"X-Tt-Openid", "x_tt_openid", "X.TT.ANONYMOUS.OPENID", "X-Tt-Unionid", "X-TT-APPID", "x-tt-source", "X-Tt-Env", "X-Tt-Logid",
		"X-Tt-Session", "X-Tt-Code", "X-Tt-Anonymous-Code", "X_TT_SESSION_KEY",
		"X-Qq-Openid", "x_qq_openid", "X.QQ.APPID", "X-Qq-Unionid", "X-Qq-Source", "X-Qq-Session", "X-Qq-Code", "X-QQ-SESSION-KEY",
		"X-Tap-Openid", "x_tap_appid", "X.TAP.SOURCE", "X-Bili-Openid", "x_bili_unionid", "X.BILI.SESSION",
	}
	for _, name := range family {
		r.Header[name] = []string{"spoofed", "twice"} // raw map access keeps the spelling, as HTTP/2 and server options can
	}
	// Sent in several families, a header is read in WeChat's.
	r.Header["X-Wx-Code"] = []string{"the-code", "second"}
	r.Header["X-Wx-Session"] = []string{"the-token"}
	kept := []string{"Authorization", "Xx-Wx-Appid", "X-Wx", "X-Wxopenid", "Wx-Openid", "X-Forwarded-For",
		"X-Tt", "X-Ttopenid", "Tt-Openid", "X-Qqopenid", "X-Q-Openid", "X-Ttt-Openid", "X-Tapopenid", "X-Bilibili-Openid", "X-Ta-Openid"}
	for _, name := range kept {
		r.Header[name] = []string{"kept"}
	}
	r.Header["Connection"] = []string{"keep-alive, X-Wx-Openid", "X_WX_APPID,Upgrade ,\tx-wx-anything", "X-Wx-Session", "x-tt-openid, X.QQ.OPENID"}

	r.Header["X-Tt-Anonymous-Code"] = []string{"the-anonymous-code"}
	got := stripClientIdentity(r)
	if got.code != "the-code" || got.session != "the-token" || got.anonymousCode != "the-anonymous-code" {
		t.Errorf("read %+v, want the first values the client sent", got)
	}
	for _, name := range family {
		if _, ok := r.Header[name]; ok {
			t.Errorf("%s survived", name)
		}
	}
	for _, name := range kept {
		if r.Header[name] == nil {
			t.Errorf("%s was removed but is of no identity family", name)
		}
	}
	if got, want := r.Header["Connection"], []string{"keep-alive", "Upgrade"}; !slices.Equal(got, want) {
		t.Errorf("Connection %q, want %q", got, want)
	}
}

// TestStripClientIdentityReadsOneFamily: a client that sends a code or a
// session in several families has one read, in the order
// docs/identity-headers.md gives, and a copy sent empty is as if absent.
func TestStripClientIdentityReadsOneFamily(t *testing.T) {
	for _, tc := range []struct {
		sent http.Header
		want presentedHeaders
	}{
		{http.Header{"X-Bili-Code": {"bili"}, "X-Wx-Code": {"wx"}}, presentedHeaders{code: "wx"}},
		{http.Header{"X-Tt-Code": {"tt"}, "X-Bili-Code": {"bili"}, "X-Tap-Code": {"tap"}}, presentedHeaders{code: "bili"}},
		{http.Header{"X-Tap-Session": {"tap"}, "X-Qq-Session": {"qq"}, "X-Tt-Session": {"tt"}}, presentedHeaders{session: "tt"}},
		{http.Header{"X-Wx-Session": {""}, "X-Tt-Session": {"tt"}}, presentedHeaders{session: "tt"}},
		{http.Header{"X-Wx-Code": {}, "X-Qq-Code": {"", "second"}, "X-Tap-Code": {"tap"}}, presentedHeaders{code: "tap"}},
		{http.Header{"X-Wx-Code": {""}}, presentedHeaders{}},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header = tc.sent.Clone()
		if got := stripClientIdentity(r); got != tc.want {
			t.Errorf("sent %v: read %+v, want %+v", tc.sent, got, tc.want)
		}
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
		{[]string{"X-Tt-Openid, close, x_qq_appid"}, []string{"close"}},
		{[]string{"X-TT-ANONYMOUS-OPENID"}, nil},
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
		"X-Tt-Openid": true, "x_tt_anonymous_openid": true, "X.TT.": true, "X-Tt": false, "X-Ttopenid": false,
		"X-Qq-Openid": true, "x.qq.appid": true, "X-Qq": false, "X-Q-Openid": false, "X-Tx-Openid": false,
		"X-Tap-Openid": true, "x_bili_source": true, "X-Bilibili-Openid": false, "X-Tapx": false,
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
		r.Header[wechatHeaders.session] = session
		stripClientIdentity(r)
	}); n != 0 {
		t.Errorf("stripClientIdentity allocates %v times per request", n)
	}
}

// FuzzStripClientIdentity: whatever names and Connection tokens a client
// sends, nothing of any identity family is left, everything else is, and
// the codes and session the gateway reads are the ones sent, in the family
// given (an index into headerFamilies).
func FuzzStripClientIdentity(f *testing.F) {
	f.Add("X_WX_OPENID", "v", "keep-alive, X-Wx-Openid", "code", "token", uint8(0))
	f.Add("x.wx.from-openid", "", "X-Wx-Appid,,Upgrade", "", "", uint8(0))
	f.Add("Accept", "*/*", " , ", "c", "", uint8(1))
	f.Add("X-Wx-Session", "v", "", "", "", uint8(2))
	f.Add("x_tt_openid", "v", "X-TT-APPID, close", "c", "t", uint8(1))
	f.Add("X.QQ.UNIONID", "v", "x_qq_openid", "c", "t", uint8(2))
	f.Add("x_tap_openid", "v", "X-Bili-Appid", "c", "t", uint8(3))
	f.Add("X.BILI.OPENID", "v", "X_TAP_SOURCE", "c", "t", uint8(4))
	f.Add("X-Bili-Code", "bili", "", "wx", "", uint8(4))
	f.Add("X-Wx-Session", "", "", "", "tt-token", uint8(1))
	f.Add("X-B\u0130LI-OPENID", "v", "x-\u212Aa, X-\u1E82X-OPENID", "", "", uint8(0))
	f.Add("X-", "v", "x-w, X-, x-ta", "", "", uint8(3))
	f.Add("", "0", "0", "0", "", uint8(1))
	f.Fuzz(func(t *testing.T, name, value, connection, code, session string, family uint8) {
		if len(documentedFamilyOrder) != len(headerFamilies) {
			t.Fatalf("%d families, %d in documentedFamilyOrder", len(headerFamilies), len(documentedFamilyOrder))
		}
		f := headerFamilies[int(family)%len(headerFamilies)]
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header = http.Header{"Accept": {"*/*"}, name: {value}, "Connection": {connection, "close"}}
		if code != "" {
			r.Header[f.code] = []string{code}
		}
		if session != "" {
			r.Header[f.session] = []string{session}
		}
		before := r.Header.Clone()
		first := func(name string) string { // "" where the family has no such header
			if values := before[name]; name != "" && len(values) > 0 {
				return values[0]
			}
			return ""
		}
		// The first family's copy that is not empty wins, in the order
		// docs/identity-headers.md gives, so that a request with several
		// is read one way.
		var wantRead presentedHeaders
		for _, f := range documentedFamilyOrder {
			wantRead.code = cmp.Or(wantRead.code, first(f.code))
			wantRead.anonymousCode = cmp.Or(wantRead.anonymousCode, first(f.anonymousCode))
			wantRead.session = cmp.Or(wantRead.session, first(f.session))
		}
		if read := stripClientIdentity(r); read != wantRead {
			t.Fatalf("read %+v from %v, want %+v", read, before, wantRead)
		}
		// ASCII case only: HTTP/1, HTTP/2 and HTTP/3 servers refuse a name
		// that is not an ASCII token, and Go's client refuses to send one,
		// so a name that only Unicode folds into a family (X-Bİli-…,
		// whose İ strings.ToLower makes i) never reaches a backend.
		folded := strings.NewReplacer("_", "-", ".", "-").Replace(asciiLower(name))
		inFamily := false
		for _, prefix := range []string{"x-wx-", "x-tt-", "x-qq-", "x-tap-", "x-bili-"} {
			inFamily = inFamily || strings.HasPrefix(folded, prefix)
		}
		if inFamily != isIdentityHeader(name) {
			t.Fatalf("%q: of a family %v, taken for one %v", name, inFamily, isIdentityHeader(name))
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

// documentedFamilyOrder is the order in which docs/identity-headers.md says
// a header sent in several families is read.
var documentedFamilyOrder = []*headerFamily{wechatHeaders, bilibiliHeaders, douyinHeaders, qqHeaders, taptapHeaders}

func asciiLower(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, s)
}

func TestSetIdentityHeaders(t *testing.T) {
	for _, tc := range []struct {
		name    string
		family  *headerFamily
		forward bool
		id      Identity
		want    map[string]string
	}{
		{"no unionid", wechatHeaders, false, Identity{OpenID: "o1", SessionKey: "k"},
			map[string]string{"X-Wx-Openid": "o1", "X-Wx-Appid": "wxapp", "X-Wx-Unionid": "", "X-Wx-Session-Key": "", "X-Wx-Source": "wx_client"}},
		{"unionid", wechatHeaders, false, Identity{OpenID: "o1", UnionID: "u1", SessionKey: "k"}, map[string]string{"X-Wx-Unionid": "u1", "X-Wx-Session-Key": ""}},
		{"session key forwarded", wechatHeaders, true, Identity{OpenID: "o1", SessionKey: "k"}, map[string]string{"X-Wx-Session-Key": "k"}},
		{"douyin", douyinHeaders, true, Identity{OpenID: "o1", UnionID: "u1", SessionKey: "k", AnonymousOpenID: "a1"},
			map[string]string{"X-Tt-Openid": "o1", "X-Tt-Unionid": "u1", "X-Tt-Appid": "wxapp", "X-Tt-Session-Key": "k", "X-Tt-Anonymous-Openid": "a1", "X-Tt-Source": "tt_client", "X-Wx-Openid": ""}},
		{"douyin anonymous", douyinHeaders, false, Identity{AnonymousOpenID: "a1", SessionKey: "k"},
			map[string]string{"X-Tt-Openid": "", "X-Tt-Anonymous-Openid": "a1", "X-Tt-Appid": "wxapp", "X-Tt-Session-Key": ""}},
		{"qq", qqHeaders, false, Identity{OpenID: "o1", UnionID: "u1"}, map[string]string{"X-Qq-Openid": "o1", "X-Qq-Unionid": "u1", "X-Qq-Appid": "wxapp", "X-Qq-Source": "qq_client"}},
	} {
		header := http.Header{}
		setIdentityHeaders(header, tc.family, "wxapp", tc.id, tc.forward)
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
