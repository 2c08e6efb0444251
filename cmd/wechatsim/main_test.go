package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/wechatsim"
)

func TestRevokeTokensEndpoint(t *testing.T) {
	sim := wechatsim.New(wechatsim.Options{Apps: []wechatsim.App{demoApp}})
	ts := httptest.NewServer(withAdmin(sim))
	defer ts.Close()
	post := func(path, body string) *http.Response {
		t.Helper()
		resp, err := http.Post(ts.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	var answer struct {
		AccessToken string `json:"access_token"`
	}
	resp := post("/cgi-bin/stable_token", `{"grant_type":"client_credential","appid":"`+demoApp.AppID+`","secret":"`+demoApp.Secret+`"}`)
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil || !sim.TokenValid(demoApp.AppID, answer.AccessToken) {
		t.Fatalf("stable_token through the admin mux: %d, %v", resp.StatusCode, err)
	}
	token := answer.AccessToken
	if resp := post("/sim/revoke-tokens", ""); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("revoke without appid: %d; want 400", resp.StatusCode)
	}
	if resp := post("/sim/revoke-tokens?appid="+demoApp.AppID, ""); resp.StatusCode != http.StatusNoContent {
		t.Errorf("revoke: %d; want 204", resp.StatusCode)
	}
	if sim.TokenValid(demoApp.AppID, token) {
		t.Error("the token is still valid after the revocation")
	}
}
