package wechatlogin

import (
	"io"
	"net/http"
	"strings"
)

// Identity headers set for the upstream. They are the names WeChat Cloud
// Hosting uses, so backends written for it run unchanged.
const (
	headerOpenID     = "X-Wx-Openid"
	headerUnionID    = "X-Wx-Unionid"
	headerAppID      = "X-Wx-Appid"
	headerSessionKey = "X-Wx-Session-Key"
	// headerSource is Cloud Hosting's mark of a call from WeChat: its docs
	// tell backends to trust a request only when it is present, and its
	// templates answer nothing without it.
	headerSource = "X-Wx-Source"
)

// sourceMiniGameClient is Cloud Hosting's X-WX-SOURCE for a call from a
// mini-game client, which every request the gateway vouches for is.
const sourceMiniGameClient = "wx_client"

// identityFamily is the prefix of every header name the gateway owns, lower
// case and '-' separated: the four it sets and everything Cloud Hosting sets
// (X-WX-SOURCE, X-WX-ENV, X-WX-FROM-OPENID…), which a backend ported from it
// trusts as much.
const identityFamily = "x-wx-"

// stripClientIdentity removes from r everything of the X-WX- family that the
// client sent: the headers, any Connection token naming one (so that the
// proxy cannot be made to drop the trusted headers as hop-by-hop), and the
// trailers. It returns the values of the two the gateway itself reads, the
// login code (X-WX-CODE) and the session token (X-WX-SESSION), so that they
// are read before anything is stripped and forwarded never.
//
// It runs first on every request, so it allocates nothing unless there is
// something to remove from the Connection header or the body can carry
// trailers.
func stripClientIdentity(r *http.Request) (code, session string) {
	if values := r.Header[headerCode]; len(values) > 0 {
		code = values[0]
	}
	if values := r.Header[headerSession]; len(values) > 0 {
		session = values[0]
	}
	stripIdentityHeaders(r.Header)
	stripIdentityConnectionTokens(r.Header)
	stripIdentityTrailers(r)
	return code, session
}

// stripIdentityHeaders removes every header of the X-WX- family, in any case
// and with '_' or '.' for '-'. Backends behind CGI-style stacks fold those
// separators together, and a server may be configured to let such names
// through (expected_underscore_headers), so all spellings are removed here
// rather than relying on the server.
func stripIdentityHeaders(h http.Header) {
	for name := range h {
		if isIdentityHeader(name) {
			delete(h, name)
		}
	}
}

// stripIdentityConnectionTokens removes from the Connection header every
// token that names an X-WX- header, keeping the others (keep-alive, close,
// Upgrade…). A client could otherwise name X-WX-OPENID there and have
// reverse_proxy delete the trusted header as hop-by-hop.
func stripIdentityConnectionTokens(h http.Header) {
	values := h["Connection"]
	i := 0
	for i < len(values) && !namesIdentityHeader(values[i]) {
		i++
	}
	if i == len(values) {
		return // the usual case: nothing to rewrite, nothing allocated
	}
	kept := append([]string(nil), values[:i]...)
	for _, value := range values[i:] {
		var tokens []string
		for token := range strings.SplitSeq(value, ",") {
			if token = strings.Trim(token, " \t"); token != "" && !isIdentityHeader(token) {
				tokens = append(tokens, token)
			}
		}
		if len(tokens) > 0 {
			kept = append(kept, strings.Join(tokens, ", "))
		}
	}
	if len(kept) == 0 {
		delete(h, "Connection")
		return
	}
	h["Connection"] = kept
}

// namesIdentityHeader reports whether a Connection header value has a token
// of the X-WX- family, without allocating.
func namesIdentityHeader(value string) bool {
	for value != "" {
		var token string
		token, value, _ = strings.Cut(value, ",")
		if isIdentityHeader(strings.Trim(token, " \t")) {
			return true
		}
	}
	return false
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

// isIdentityHeader reports whether name is of the X-WX- family: whether it
// starts with "x-wx-" ignoring case and reading '_' and '.' as '-'.
func isIdentityHeader(name string) bool {
	if len(name) < len(identityFamily) {
		return false
	}
	for i := 0; i < len(identityFamily); i++ {
		c := name[i]
		switch {
		case c == '_' || c == '.':
			c = '-'
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		if c != identityFamily[i] {
			return false
		}
	}
	return true
}

// setIdentityHeaders gives the upstream the trusted identity, and
// X-WX-SOURCE, which only a request with one carries. The caller has
// already stripped the client's copies. The values share one allocation,
// each header a full-capacity slice of its own, so that a later append to
// one copies it rather than overwriting another.
func (h *Handler) setIdentityHeaders(header http.Header, id Identity) {
	values := &[5]string{id.OpenID, h.AppID, sourceMiniGameClient, id.UnionID}
	header[headerOpenID] = values[0:1:1]
	header[headerAppID] = values[1:2:2]
	header[headerSource] = values[2:3:3]
	if id.UnionID != "" {
		header[headerUnionID] = values[3:4:4]
	}
	if h.ForwardSessionKey && id.SessionKey != "" {
		values[4] = id.SessionKey
		header[headerSessionKey] = values[4:5:5]
	}
}
