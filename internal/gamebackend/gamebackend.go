// Package gamebackend is a sample game server that knows nothing about
// WeChat: it answers every request with the identity headers the gateway
// gave it, so a demo or a benchmark can show what reached the backend.
package gamebackend

import (
	"encoding/json"
	"io"
	"net/http"
)

// Answer is the JSON body of every response: what the backend received.
type Answer struct {
	Path    string `json:"path"`
	OpenID  string `json:"openid"`
	UnionID string `json:"unionid"`
	AppID   string `json:"appid"`
	// Source is X-WX-SOURCE, which Cloud Hosting backends check before
	// trusting the rest: the gateway sets it exactly when there is an
	// identity.
	Source string `json:"source"`
	// BodyBytes is the size of the request body, which the gateway must
	// forward byte for byte even when it read the login code from it.
	BodyBytes int64 `json:"body_bytes"`
}

// Handler answers every request with an Answer. Empty identity fields are
// kept in the JSON, so that a missing (or stripped) header is visible.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Answer{
			Path:      r.URL.Path,
			OpenID:    r.Header.Get("X-WX-OPENID"),
			UnionID:   r.Header.Get("X-WX-UNIONID"),
			AppID:     r.Header.Get("X-WX-APPID"),
			Source:    r.Header.Get("X-WX-SOURCE"),
			BodyBytes: n,
		})
	})
}
