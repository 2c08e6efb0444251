package wechatsim

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// API endpoints called with an access_token.
const (
	msgSecCheckPath  = "/wxa/msg_sec_check"
	checkSessionPath = "/wxa/checksession"
	apiDomainIPPath  = "/cgi-bin/get_api_domain_ip"
)

// maxReceived bounds the requests APIRequests remembers, so that a
// long-running simulator does not grow without end.
const maxReceived = 1000

// Request is what the simulator received in one call to an API endpoint
// (msg_sec_check or checksession), as it arrived.
type Request struct {
	Method, Path, RawQuery, ContentType string
	Body                                []byte
}

// APIRequests returns the latest requests (up to 1000) received at the API
// endpoints, oldest first.
func (s *Server) APIRequests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.received...)
}

// record keeps r for APIRequests. Callers hold s.mu.
func (s *Server) record(r *http.Request, body []byte) {
	if len(s.received) == maxReceived {
		s.received = append(s.received[:0], s.received[1:]...)
	}
	s.received = append(s.received, Request{
		Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery,
		ContentType: r.Header.Get("Content-Type"), Body: body,
	})
}

// secCheckRequest is msg_sec_check's (v2) JSON body.
type secCheckRequest struct {
	Content string `json:"content"`
	Version int    `json:"version"`
	Scene   int    `json:"scene"`
	OpenID  string `json:"openid"`
}

type secCheckVerdict struct {
	Suggest string `json:"suggest"`
	Label   int    `json:"label"`
}

type secCheckDetail struct {
	Strategy string `json:"strategy"`
	ErrCode  int    `json:"errcode"`
	Suggest  string `json:"suggest"`
	Label    int    `json:"label"`
	Prob     int    `json:"prob"`
}

type secCheckAnswer struct {
	ErrCode int              `json:"errcode"`
	ErrMsg  string           `json:"errmsg"`
	Result  secCheckVerdict  `json:"result"`
	Detail  []secCheckDetail `json:"detail"`
	TraceID string           `json:"trace_id"`
}

// RiskyWord makes msg_sec_check judge a text risky (label 20001) when the
// text contains it; any other text passes (label 100).
const RiskyWord = "risky"

// msgSecCheck answers POST /wxa/msg_sec_check (text security, v2). Callers
// hold s.mu.
func (s *Server) msgSecCheck(r *http.Request, body []byte) any {
	s.record(r, body)
	if failed := s.checkToken(r); failed != nil {
		return failed
	}
	if r.Method != http.MethodPost {
		return s.fail(43302, "method should be post")
	}
	var req secCheckRequest
	switch err := json.Unmarshal(body, &req); {
	case len(body) == 0:
		return s.fail(44002, "empty post data")
	case err != nil || req.Version != 2 || req.Content == "":
		return s.fail(47001, "data format error")
	case req.Scene < 1 || req.Scene > 4:
		return s.fail(40129, "invalid scene")
	case req.OpenID == "":
		return s.fail(40003, "invalid openid")
	case s.busy():
		return s.fail(-1, "system error")
	}
	verdict := secCheckVerdict{Suggest: "pass", Label: 100}
	if strings.Contains(req.Content, RiskyWord) {
		verdict = secCheckVerdict{Suggest: "risky", Label: 20001}
	}
	return secCheckAnswer{
		ErrMsg:  "ok",
		Result:  verdict,
		Detail:  []secCheckDetail{{Strategy: "content_model", Suggest: verdict.Suggest, Label: verdict.Label, Prob: 90}},
		TraceID: fmt.Sprintf("%08x-%08x-%08x", uint32(s.now().Unix()), s.rng.Uint32(), s.rng.Uint32()),
	}
}

// checkSession answers GET /wxa/checksession: whether signature, the hex
// HMAC-SHA256 of "" keyed with a session_key, proves the latest session_key
// issued to openid (87009 otherwise). Callers hold s.mu.
func (s *Server) checkSession(r *http.Request, body []byte) any {
	s.record(r, body)
	if failed := s.checkToken(r); failed != nil {
		return failed
	}
	q := r.URL.Query()
	sessionKey, known := s.sessionKeys[q.Get("openid")]
	if !known || q.Get("sig_method") != "hmac_sha256" || !hmac.Equal([]byte(q.Get("signature")), []byte(SessionSignature(sessionKey))) {
		return s.fail(87009, "invalid signature")
	}
	return failure{ErrMsg: "ok"}
}

// apiDomainIP answers GET /cgi-bin/get_api_domain_ip: the addresses of
// WeChat's API, for a valid token. Callers hold s.mu.
func (s *Server) apiDomainIP(r *http.Request, body []byte) any {
	s.record(r, body)
	if failed := s.checkToken(r); failed != nil {
		return failed
	}
	return struct {
		IPList []string `json:"ip_list"`
	}{[]string{"101.226.103.0/25", "101.226.62.0/26", "183.3.234.0/26"}}
}

// SessionSignature is the signature checksession expects for sessionKey:
// hex HMAC-SHA256 of the empty string, keyed with the session_key.
func SessionSignature(sessionKey string) string {
	mac := hmac.New(sha256.New, []byte(sessionKey))
	return hex.EncodeToString(mac.Sum(nil))
}
