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

// anonymousCodeField names a Douyin anonymous player's code in a login's
// query, JSON or form body, as Douyin's own API names it.
const anonymousCodeField = "anonymous_code"

// loginCredentials finds the credentials of a login request for platform
// p: the code, named field, and where p has them an anonymous player's
// code, named anonymousCodeField. Each is taken from, in order: the query,
// a JSON body's top-level field, a form body's field, and the header the
// client sent (presented: stripClientIdentity took it out). A body that was
// read is put back so the upstream receives it byte for byte. A login
// needs a code, or on Douyin an anonymous code, or both.
func loginCredentials(r *http.Request, field string, p *platform, presented presentedHeaders) (credentials, *jsonRefusal) {
	if p.anonymousCodeParam == "" {
		// The usual login, a code in the query, read without the two
		// fields' bookkeeping below.
		if value, found := queryValue(r.URL.RawQuery, field); found {
			code, refusal := checkCode(value)
			return credentials{code: code}, refusal
		}
	}
	fields := [2]string{field}
	if p.anonymousCodeParam != "" {
		fields[1] = anonymousCodeField
	}
	var values [2]string
	var found [2]bool
	for i, name := range fields {
		if name != "" {
			values[i], found[i] = queryValue(r.URL.RawQuery, name)
		}
	}
	if !found[0] || (fields[1] != "" && !found[1]) {
		inBody, foundInBody, refusal := bodyCodes(r, fields)
		if refusal != nil {
			return credentials{}, refusal
		}
		for i := range fields {
			if !found[i] && foundInBody[i] {
				values[i], found[i] = inBody[i], true
			}
		}
	}
	for i, header := range [2]string{presented.code, presented.anonymousCode} {
		if !found[i] && fields[i] != "" && header != "" {
			values[i], found[i] = header, true
		}
	}
	// tt.login gives a player not logged in to Douyin an anonymousCode and
	// no code: a client that sends both as it got them sends one empty,
	// which is absent, not a bad code.
	if found[0] && found[1] && (values[0] == "") != (values[1] == "") {
		found[0], found[1] = values[0] != "", values[1] != ""
	}
	if !found[0] && !found[1] {
		return credentials{}, badRequest("no login code: send the code from " + p.clientLogin + " as the " + field +
			" query parameter, JSON or form field, or the " + strings.ToUpper(p.headers.code) + " header")
	}
	var c credentials
	for i, slot := range [2]*string{&c.code, &c.anonymousCode} {
		if found[i] {
			code, refusal := checkCode(values[i])
			if refusal != nil {
				return credentials{}, refusal
			}
			*slot = code
		}
	}
	return c, nil
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

// bodyCodes looks for the fields (a second one "" when there is none) in a
// JSON or form body. Other bodies are left unread.
func bodyCodes(r *http.Request, fields [2]string) (values [2]string, found [2]bool, refusal *jsonRefusal) {
	if r.Body == nil || r.Body == http.NoBody {
		return values, found, nil
	}
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return values, found, nil
	}
	isJSON := mediaType == "application/json" || (len(mediaType) > 5 && mediaType[len(mediaType)-5:] == "+json")
	isForm := mediaType == "application/x-www-form-urlencoded"
	if !isJSON && !isForm {
		return values, found, nil
	}

	body, refusal := readBody(r)
	if refusal != nil {
		return values, found, refusal
	}
	if isJSON {
		return jsonCodes(body, fields)
	}
	return formCodes(body, fields)
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

func jsonCodes(body []byte, fields [2]string) (values [2]string, found [2]bool, refusal *jsonRefusal) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(body, &members); err != nil {
		return values, found, badRequest("malformed JSON body")
	}
	for i, field := range fields {
		raw, ok := members[field]
		if field == "" || !ok {
			continue
		}
		if err := json.Unmarshal(raw, &values[i]); err != nil {
			return values, found, badRequest("the " + field + " field must be a string")
		}
		found[i] = true
	}
	return values, found, nil
}

func formCodes(body []byte, fields [2]string) (values [2]string, found [2]bool, refusal *jsonRefusal) {
	members, err := url.ParseQuery(string(body))
	if err != nil {
		return values, found, badRequest("malformed form body")
	}
	for i, field := range fields {
		if v, ok := members[field]; field != "" && ok {
			values[i], found[i] = v[0], true
		}
	}
	return values, found, nil
}

// dropCode removes the codes (field, and p's anonymous code) from the query
// string before the request goes upstream (X-WX-CODE is gone already, with
// the rest of the identity families): the upstream has no use for a spent
// code, and Caddy's reverse_proxy logs the URI it sends at debug level.
// Other query parameters keep their order and encoding.
func dropCode(r *http.Request, field string, p *platform) {
	if r.URL.RawQuery == "" {
		return
	}
	kept := ""
	rest := r.URL.RawQuery
	for rest != "" {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		key, _, _ := strings.Cut(pair, "=")
		if name, err := url.QueryUnescape(key); err == nil && (name == field || (name == anonymousCodeField && p.anonymousCodeParam != "")) {
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
