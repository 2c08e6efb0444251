// Package gamebackend is a sample game server that knows nothing about
// WeChat or any other platform: it answers every request with the identity
// headers the gateway gave it, in whichever platform's family they came, so
// a demo or a benchmark can show what reached the backend.
package gamebackend

import (
	"encoding/json"
	"io"
	"net/http"
)

// Answer is the JSON body of every response: what the backend received.
type Answer struct {
	Path string `json:"path"`
	// Platform is the family the identity came in: wechat (X-WX-), douyin
	// (X-TT-), qq (X-QQ-), taptap (X-TAP-) or bilibili (X-BILI-); none
	// without an identity.
	Platform        string `json:"platform,omitempty"`
	OpenID          string `json:"openid"`
	UnionID         string `json:"unionid"`
	AppID           string `json:"appid"`
	AnonymousOpenID string `json:"anonymous_openid,omitempty"`
	// Source is the family's source header (X-WX-SOURCE…), which Cloud
	// Hosting backends check before trusting the rest: the gateway sets it
	// exactly when there is an identity.
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
		answer := Answer{Path: r.URL.Path, BodyBytes: n}
		for _, f := range families {
			if appID := r.Header.Get(f.prefix + "APPID"); appID != "" {
				answer.Platform, answer.AppID = f.platform, appID
				answer.OpenID = r.Header.Get(f.prefix + "OPENID")
				answer.UnionID = r.Header.Get(f.prefix + "UNIONID")
				answer.AnonymousOpenID = r.Header.Get(f.prefix + "ANONYMOUS-OPENID")
				answer.Source = r.Header.Get(f.prefix + "SOURCE")
				break
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
	})
}

// families are the identity header families a gateway sends, by platform.
var families = []struct{ platform, prefix string }{
	{"wechat", "X-WX-"}, {"douyin", "X-TT-"}, {"qq", "X-QQ-"}, {"taptap", "X-TAP-"}, {"bilibili", "X-BILI-"},
}
