package wechatlogin

import (
	"io"
	"net/http"
)

// Identity headers set for the upstream. They are the names WeChat Cloud
// Hosting uses, so backends written for it run unchanged.
const (
	headerOpenID     = "X-Wx-Openid"
	headerUnionID    = "X-Wx-Unionid"
	headerAppID      = "X-Wx-Appid"
	headerSessionKey = "X-Wx-Session-Key"
)

// identityHeaderNames are the identity headers, lower case and with '-'
// separators: the form isIdentityHeader compares against.
var identityHeaderNames = [...]string{"x-wx-openid", "x-wx-unionid", "x-wx-appid", "x-wx-session-key"}

// stripIdentityHeaders removes every client-sent copy of an identity header,
// in any case and with '_' or '.' for '-'. Backends behind CGI-style stacks
// fold those separators together, and a server may be configured to let
// such names through (expected_underscore_headers), so all spellings are
// removed here rather than relying on the server.
//
// It runs on every request, so it allocates nothing.
func stripIdentityHeaders(h http.Header) {
	for name := range h {
		if isIdentityHeader(name) {
			delete(h, name)
		}
	}
}

// stripIdentityTrailers does for request trailers what stripIdentityHeaders
// does for headers: a backend that merges trailers into headers must not
// receive an identity from the client that way. Trailers arrive only after
// the body, so the body is wrapped to remove them as it ends, before the
// proxy copies them. Only a body that can carry trailers is wrapped.
func stripIdentityTrailers(r *http.Request) {
	if r.Trailer == nil && len(r.TransferEncoding) == 0 {
		return
	}
	stripIdentityHeaders(r.Trailer)
	r.Body = &trailerStrippingBody{ReadCloser: r.Body, r: r}
}

type trailerStrippingBody struct {
	io.ReadCloser
	r *http.Request
}

func (b *trailerStrippingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		stripIdentityHeaders(b.r.Trailer) // net/http has just filled them in
	}
	return n, err
}

func isIdentityHeader(name string) bool {
	for _, want := range identityHeaderNames {
		if headerNameEqualFold(name, want) {
			return true
		}
	}
	return false
}

// headerNameEqualFold reports whether name equals want (lower case, '-'
// separated) ignoring case and treating '_' and '.' as '-'.
func headerNameEqualFold(name, want string) bool {
	if len(name) != len(want) {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '_' || c == '.':
			c = '-'
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		if c != want[i] {
			return false
		}
	}
	return true
}

// setIdentityHeaders gives the upstream the trusted identity. The caller has
// already stripped the client's copies.
func (h *Handler) setIdentityHeaders(header http.Header, id Identity) {
	header[headerOpenID] = []string{id.OpenID}
	if id.UnionID != "" {
		header[headerUnionID] = []string{id.UnionID}
	}
	header[headerAppID] = []string{h.AppID}
	if h.ForwardSessionKey && id.SessionKey != "" {
		header[headerSessionKey] = []string{id.SessionKey}
	}
}
