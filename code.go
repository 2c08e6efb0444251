package wechatlogin

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// maxCodeLen bounds a code: WeChat's are 32 characters; anything much longer
// is not a code and is refused before it costs a WeChat call.
const maxCodeLen = 128

// maxLoginBody bounds how much of a login body is read to find the code when
// the server sets no request_body limit of its own.
const maxLoginBody = 1 << 20

// loginCode finds the code of a login request in, in order: the query
// parameter field, a JSON body's top-level field, a form body's field and
// headerValue, the X-WX-CODE header the client sent (stripClientIdentity
// took it out). A body that was read is put back so the upstream receives it
// byte for byte.
func loginCode(r *http.Request, field, headerValue string) (string, *jsonRefusal) {
	if code, ok := queryValue(r.URL.RawQuery, field); ok {
		return checkCode(code)
	}
	code, found, refusal := bodyCode(r, field)
	if refusal != nil {
		return "", refusal
	}
	if found {
		return checkCode(code)
	}
	if headerValue != "" {
		return checkCode(headerValue)
	}
	return "", badRequest("no login code: send the code from wx.login as the " + field + " query parameter, JSON or form field, or the X-WX-CODE header")
}

// maxPlainQuery bounds the query strings queryValue reads in place: far
// below url.ParseQuery's limit on the number of parameters.
const maxPlainQuery = 4 << 10

// queryValue is the first value of field in a raw query string, as
// url.ParseQuery reads it. A query with nothing to unescape and no
// semicolon, as logins send them, is read in place: a login then builds no
// map of every parameter. Any other goes through url.ParseQuery.
func queryValue(rawQuery, field string) (string, bool) {
	if len(rawQuery) > maxPlainQuery || strings.ContainsAny(rawQuery, "%+;") {
		values, _ := url.ParseQuery(rawQuery)
		if v, ok := values[field]; ok {
			return v[0], true
		}
		return "", false
	}
	for rest := rawQuery; rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		if key, value, _ := strings.Cut(pair, "="); key == field && pair != "" {
			return value, true
		}
	}
	return "", false
}

// bodyCode looks for the code in a JSON or form body. Other bodies are left
// unread.
func bodyCode(r *http.Request, field string) (code string, found bool, refusal *jsonRefusal) {
	if r.Body == nil || r.Body == http.NoBody {
		return "", false, nil
	}
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return "", false, nil
	}
	isJSON := mediaType == "application/json" || (len(mediaType) > 5 && mediaType[len(mediaType)-5:] == "+json")
	isForm := mediaType == "application/x-www-form-urlencoded"
	if !isJSON && !isForm {
		return "", false, nil
	}

	body, refusal := readBody(r)
	if refusal != nil {
		return "", false, refusal
	}
	if isJSON {
		return jsonCode(body, field)
	}
	return formCode(body, field)
}

// readBody reads the whole body and replaces it with a replayable copy.
func readBody(r *http.Request) ([]byte, *jsonRefusal) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxLoginBody+1))
	_ = r.Body.Close()
	if err != nil {
		if maxErr := (*http.MaxBytesError)(nil); errors.As(err, &maxErr) {
			return nil, bodyTooLarge()
		}
		return nil, badRequest("could not read the request body")
	}
	if len(body) > maxLoginBody {
		return nil, bodyTooLarge()
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	return body, nil
}

func bodyTooLarge() *jsonRefusal {
	return newRefusal(http.StatusRequestEntityTooLarge, refusalInvalidRequest, "request body too large")
}

func jsonCode(body []byte, field string) (string, bool, *jsonRefusal) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return "", false, badRequest("malformed JSON body")
	}
	raw, ok := fields[field]
	if !ok {
		return "", false, nil
	}
	var code string
	if err := json.Unmarshal(raw, &code); err != nil {
		return "", false, badRequest("the " + field + " field must be a string")
	}
	return code, true, nil
}

func formCode(body []byte, field string) (string, bool, *jsonRefusal) {
	values, err := url.ParseQuery(string(body))
	if err != nil {
		return "", false, badRequest("malformed form body")
	}
	codes, ok := values[field]
	if !ok {
		return "", false, nil
	}
	return codes[0], true, nil
}

// dropCode removes the code from the query string before the request goes
// upstream (X-WX-CODE is gone already, with the rest of the X-WX- family):
// the upstream has no use for a spent code, and Caddy's reverse_proxy logs
// the URI it sends at debug level.
// Other query parameters keep their order and encoding.
func dropCode(r *http.Request, field string) {
	if r.URL.RawQuery == "" {
		return
	}
	kept := ""
	rest := r.URL.RawQuery
	for rest != "" {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		key, _, _ := strings.Cut(pair, "=")
		if name, err := url.QueryUnescape(key); err == nil && name == field {
			continue
		}
		if kept != "" {
			kept += "&"
		}
		kept += pair
	}
	if kept != r.URL.RawQuery {
		r.URL.RawQuery = kept
		r.RequestURI = r.URL.RequestURI()
	}
}

// checkCode refuses what cannot be a WeChat code before it reaches WeChat.
// The message never repeats the code.
func checkCode(code string) (string, *jsonRefusal) {
	if code == "" {
		return "", badRequest("the login code is empty")
	}
	if len(code) > maxCodeLen {
		return "", badRequest("the login code is too long")
	}
	for i := 0; i < len(code); i++ {
		if c := code[i]; c < 0x20 || c > 0x7e {
			return "", badRequest("the login code must be printable ASCII")
		}
	}
	return code, nil
}
