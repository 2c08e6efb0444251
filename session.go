package wechatlogin

import (
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// minSessionSecret is the shortest HMAC key accepted: HS256 is only as strong
// as its key, and 32 bytes matches the hash size.
const minSessionSecret = 32

// SessionConfig makes the handler issue a session token at login and accept
// it on later requests, so that every request of a player carries its
// identity and none costs a WeChat call.
type SessionConfig struct {
	// HMAC keys for the HS256 tokens, as written (placeholders such as
	// {env.X} and {file.PATH} are resolved at provision), 32 bytes or more.
	// The first signs new tokens; all of them verify, so a new key can be put
	// first without logging any player out.
	Secrets []string `json:"secrets,omitempty"`
	// How long a token is valid. Default 2h.
	TTL caddy.Duration `json:"ttl,omitempty"`
	// Let requests without a valid session through, without identity,
	// instead of refusing them with 401.
	Optional bool `json:"optional,omitempty"`
	// Answer a successful login at the gateway with the token as JSON,
	// forwarding nothing, for backends with no login endpoint.
	Respond bool `json:"respond,omitempty"`
}

// sessionRejection names why a request's session was refused, as the
// sessions_rejected_total metric's reason label: a small fixed set.
func sessionRejection(err error) string {
	switch err {
	case errNoSession:
		return "missing"
	case errSessionSignature:
		return "bad_signature"
	case errSessionExpired:
		return "expired"
	case errSessionNotYetValid:
		return "not_yet_valid"
	case errSessionAudience:
		return "wrong_audience"
	case errForeignSession:
		return "other_app"
	default:
		return "malformed"
	}
}

// sessionIssuingWriter adds the session token to a successful (2xx) upstream
// response to a login, with Cache-Control: no-store in place of whatever
// caching the upstream allowed, so that no shared cache keeps one player's
// token for another. Any other response goes out without a token.
type sessionIssuingWriter struct {
	caddyhttp.ResponseWriterWrapper
	token       string
	wroteHeader bool
	// values backs the two header values it sets, so that a login's writer
	// and its headers cost one allocation.
	values [2]string
}

func newSessionIssuingWriter(w http.ResponseWriter, token string) *sessionIssuingWriter {
	return &sessionIssuingWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, token: token}
}

func (w *sessionIssuingWriter) WriteHeader(status int) {
	if !w.wroteHeader && status >= 200 {
		w.wroteHeader = true
		if status < 300 {
			// Header().Set with the names already canonical, each value a
			// slice of its own (full capacity: an append copies it).
			w.values = [2]string{w.token, "no-store"}
			w.Header()[headerSession] = w.values[0:1:1]
			w.Header()["Cache-Control"] = w.values[1:2:2]
		} else {
			w.Header().Del(headerSession)
		}
	}
	w.ResponseWriterWrapper.WriteHeader(status)
}

func (w *sessionIssuingWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.Write(b)
}

// ReadFrom is overridden because the wrapper's own would reach the
// underlying writer without passing through WriteHeader above.
func (w *sessionIssuingWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.ReadFrom(r)
}
