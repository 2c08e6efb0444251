package wechatlogin

import (
	"net/http"
	"time"
)

// presentedPlayer is a stand-in until token.go lands.
func (s *sessions) presentedPlayer(r *http.Request, _ time.Duration) (string, bool) {
	token, _ := sessionToken(r)
	id, err := s.verify(token)
	return id.OpenID, err == nil
}
