package wechatlogin

import (
	"io"
	"net/http"
	"strings"
)

// headerFamily is the identity headers of one platform's cloud, so that a
// backend written for that cloud runs unchanged behind the gateway; and the
// headers a client of that platform sends the gateway. A name is "" where
// the family has no such header.
type headerFamily struct {
	// prefix starts every name of the family: lower case, '-' separated.
	prefix string
	// Set for the upstream, canonical.
	openID, unionID, appID, sessionKey, anonymousOpenID, source string
	// sourceValue is the source header's value on a request with a
	// verified identity, and on no other: the cloud's value for a call from
	// its client (Cloud Hosting's docs tell backends to trust a request
	// only when X-WX-SOURCE is present, and its templates answer nothing
	// without it).
	sourceValue string
	// Read from the client, canonical: the login code, an anonymous
	// player's code, and the session token (also set on a login's answer).
	code, anonymousCode, session string
	// rank is the family's place in headerFamilies: when a client sends
	// one header in two families, the lower rank's copy is read.
	rank int
}

// headerFamilies are the families of every platform, in the order a header
// a client sends in two of them is read: WeChat's first, as a client
// written before the other families were known expects, then the others by
// name. All of them are stripped from every client request, whatever
// platforms are configured, since a backend may trust any of them
// (registerPlatform refuses a platform whose family is missing here).
// docs/identity-headers.md is their contract.
var headerFamilies = []*headerFamily{wechatHeaders, bilibiliHeaders, douyinHeaders, qqHeaders, taptapHeaders}

// familiesByLetter are headerFamilies by the letter after "x-" in their
// prefix, so that a header name is compared with one prefix or two, not
// with all of them.
var familiesByLetter = rankFamilies(headerFamilies)

// rankFamilies ranks each of families by its place there, and returns them
// by the letter after "x-" in their prefix, which must be "x-", a
// lower-case letter, and more.
func rankFamilies(families []*headerFamily) (byLetter ['z' - 'a' + 1][]*headerFamily) {
	for i, f := range families {
		if len(f.prefix) < 4 || f.prefix[:2] != "x-" || f.prefix[2] < 'a' || f.prefix[2] > 'z' {
			panic("header family prefix " + f.prefix + " is not x-<letter>…")
		}
		f.rank = i
		byLetter[f.prefix[2]-'a'] = append(byLetter[f.prefix[2]-'a'], f)
	}
	return byLetter
}

// presentedHeaders are the values of the family headers the gateway reads
// from a client (each the first value of its canonical spelling, in the
// first family that has it), taken as the headers are stripped.
type presentedHeaders struct {
	code, anonymousCode, session string
}

// stripClientIdentity removes from r everything of the identity families
// that the client sent: the headers, any Connection token naming one (so
// that the proxy cannot be made to drop the trusted headers as hop-by-hop),
// and the trailers. It returns the values of those the gateway itself
// reads, the login codes (X-WX-CODE…) and the session token
// (X-WX-SESSION…), so that they are read before anything is stripped and
// forwarded never.
//
// It runs first on every request, so it allocates nothing unless there is
// something to remove from the Connection header or the body can carry
// trailers.
func stripClientIdentity(r *http.Request) presentedHeaders {
	var presented presentedHeaders
	var from [3]*headerFamily // the family each of presented's values came from
	for name, values := range r.Header {
		f := identityFamily(name)
		if f == nil {
			continue
		}
		if len(values) > 0 {
			switch name {
			case f.code:
				readFirstFamily(&presented.code, &from[0], f, values[0])
			case f.anonymousCode:
				readFirstFamily(&presented.anonymousCode, &from[1], f, values[0])
			case f.session:
				readFirstFamily(&presented.session, &from[2], f, values[0])
			}
		}
		delete(r.Header, name)
	}
	stripIdentityConnectionTokens(r.Header)
	stripIdentityTrailers(r)
	return presented
}

// readFirstFamily sets *value to v, read in family f, unless v is empty
// (sent empty, a header is absent) or *value holds a value of a family
// before f already.
func readFirstFamily(value *string, from **headerFamily, f *headerFamily, v string) {
	if v != "" && (*from == nil || f.rank < (*from).rank) {
		*value, *from = v, f
	}
}

// stripIdentityHeaders removes every header of the identity families, in
// any case and with '_' or '.' for '-'. Backends behind CGI-style stacks
// fold those separators together, and a server may be configured to let
// such names through (expected_underscore_headers), so all spellings are
// removed here rather than relying on the server.
func stripIdentityHeaders(h http.Header) {
	for name := range h {
		if isIdentityHeader(name) {
			delete(h, name)
		}
	}
}

// stripIdentityConnectionTokens removes from the Connection header every
// token that names a header of an identity family, keeping the others (keep-alive, close,
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
// of an identity family, without allocating.
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

// isIdentityHeader reports whether name is of an identity family: whether
// it starts with one of their prefixes ("x-wx-", "x-tt-"…) ignoring case
// and reading '_' and '.' as '-'.
func isIdentityHeader(name string) bool {
	return identityFamily(name) != nil
}

// identityFamily is the family of name, as isIdentityHeader reads it, or
// nil.
func identityFamily(name string) *headerFamily {
	if len(name) < 3 || name[0]|0x20 != 'x' { // the usual header is rejected here
		return nil
	}
	letter := name[2] | 0x20 // lower case, if a letter: nothing else lands in a-z
	if letter < 'a' || letter > 'z' {
		return nil
	}
	for _, f := range familiesByLetter[letter-'a'] {
		if hasFamilyPrefix(name, f.prefix) {
			return f
		}
	}
	return nil
}

func hasFamilyPrefix(name, prefix string) bool {
	if len(name) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := name[i]
		switch {
		case c == '_' || c == '.':
			c = '-'
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// setIdentityHeaders gives the upstream the trusted identity, in family f,
// for the app appID. The caller has already stripped the client's copies.
// The values share one allocation, each header a full-capacity slice of its
// own, so that a later append to one copies it rather than overwriting
// another.
func setIdentityHeaders(header http.Header, f *headerFamily, appID string, id Identity, forwardSessionKey bool) {
	values := &[6]string{appID, f.sourceValue, id.OpenID, id.UnionID, id.AnonymousOpenID, id.SessionKey}
	header[f.appID] = values[0:1:1]
	header[f.source] = values[1:2:2]
	if id.OpenID != "" {
		header[f.openID] = values[2:3:3]
	}
	if id.UnionID != "" {
		header[f.unionID] = values[3:4:4]
	}
	if id.AnonymousOpenID != "" && f.anonymousOpenID != "" {
		header[f.anonymousOpenID] = values[4:5:5]
	}
	if forwardSessionKey && id.SessionKey != "" {
		header[f.sessionKey] = values[5:6:6]
	}
}
