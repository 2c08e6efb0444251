package wechatlogin

import "net/http"

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
