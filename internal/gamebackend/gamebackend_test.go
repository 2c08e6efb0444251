package gamebackend_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/gamebackend"
)

func TestHandlerEchoesIdentity(t *testing.T) {
	tests := []struct {
		name   string
		header map[string]string
		body   string
		want   gamebackend.Answer
	}{
		{
			name: "identity headers and body size",
			header: map[string]string{
				"X-Wx-Openid":  "oPlayer",
				"X-Wx-Unionid": "oUnion",
				"X-Wx-Appid":   "wx1234567890abcdef",
				"X-Wx-Source":  "wx_client",
			},
			body: `{"code":"alice.1"}`,
			want: gamebackend.Answer{Path: "/wx/login", Platform: "wechat", OpenID: "oPlayer", UnionID: "oUnion", AppID: "wx1234567890abcdef", Source: "wx_client", BodyBytes: 18},
		},
		{
			name:   "a Douyin anonymous player",
			header: map[string]string{"X-Tt-Anonymous-Openid": "_000anon", "X-Tt-Appid": "tt1234567890abcdef"},
			want:   gamebackend.Answer{Path: "/wx/login", Platform: "douyin", AppID: "tt1234567890abcdef", AnonymousOpenID: "_000anon"},
		},
		{
			name: "no identity",
			want: gamebackend.Answer{Path: "/wx/login"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/wx/login", strings.NewReader(tt.body))
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			gamebackend.Handler().ServeHTTP(rec, req)

			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			var got gamebackend.Answer
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if got != tt.want {
				t.Errorf("answer = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// An absent identity must show as an empty field, not vanish from the JSON:
// the demo relies on it to show a stripped header.
func TestHandlerKeepsEmptyFields(t *testing.T) {
	rec := httptest.NewRecorder()
	gamebackend.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/game/state", nil))
	var fields map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &fields); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"openid", "unionid", "appid", "source"} {
		if v, ok := fields[name]; !ok || v != "" {
			t.Errorf("field %s = %v (present %t), want \"\"", name, v, ok)
		}
	}
}
