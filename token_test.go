package wechatlogin

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/testkit"
)

// decodeSegment decodes one base64url segment of a token.
func decodeSegment(t testing.TB, segment string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(segment)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signWithLibrary signs claims with golang-jwt, a third-party library, with
// the header it writes changed by editHeader.
func signWithLibrary(t testing.TB, method jwt.SigningMethod, claims jwt.MapClaims, editHeader func(map[string]any), key string) string {
	t.Helper()
	token := jwt.NewWithClaims(method, claims)
	if editHeader != nil {
		editHeader(token.Header)
	}
	var signingKey any = []byte(key)
	if method == jwt.SigningMethodNone {
		signingKey = jwt.UnsafeAllowNoneSignatureType
	}
	signed, err := token.SignedString(signingKey)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// libraryVerify is golang-jwt's verdict on a token at now, configured as RFC
// 7519 asks (HS256 only, exp required, nbf and iat honoured, all three with
// the gateway's leeway), plus the rules the gateway documents on top that no
// library knows: in the header, typ absent or "JWT", none of crit, b64,
// jku, jwk, x5u and x5c, no member named twice; in the claims, no aud; sub,
// iss, jti, appid and unionid strings; a non-empty sub and the gateway's
// appid; no control characters in the identity; dates within 2^53 seconds.
func libraryVerify(token, appID string, now time.Time, secrets ...string) (Identity, error) {
	parser := jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithStrictDecoding(), jwt.WithLeeway(maxClockSkew),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithTimeFunc(func() time.Time { return now }))
	var keys jwt.VerificationKeySet
	for _, s := range secrets {
		keys.Keys = append(keys.Keys, []byte(s))
	}
	claims := jwt.MapClaims{}
	parsed, err := parser.ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return keys, nil })
	if err != nil {
		return Identity{}, err
	}
	if typ, ok := parsed.Header["typ"]; ok && typ != "JWT" {
		return Identity{}, errors.New("typ is not JWT")
	}
	for _, name := range []string{"crit", "b64", "jku", "jwk", "x5u", "x5c"} {
		if _, ok := parsed.Header[name]; ok {
			return Identity{}, errors.New("header parameter " + name)
		}
	}
	if namesAMemberTwice(decodeSegmentOrNil(strings.SplitN(token, ".", 2)[0])) {
		return Identity{}, errors.New("a header member named twice")
	}
	if _, ok := claims["aud"]; ok {
		return Identity{}, errors.New("aud")
	}
	for _, name := range []string{"sub", "appid", "unionid", "iss", "jti"} {
		if v, ok := claims[name]; ok {
			if _, isString := v.(string); !isString {
				return Identity{}, errors.New(name + " is not a string")
			}
		}
	}
	for _, name := range []string{"exp", "nbf", "iat"} {
		if v, ok := claims[name].(float64); ok && math.Abs(v) >= 1<<53 {
			return Identity{}, errors.New(name + " out of range")
		}
	}
	sub, _ := claims["sub"].(string)
	unionID, _ := claims["unionid"].(string)
	control := func(r rune) bool { return r < 0x20 || r == 0x7f }
	if claims["appid"] != appID || sub == "" || strings.ContainsFunc(sub+unionID, control) {
		return Identity{}, errors.New("not the gateway's")
	}
	return Identity{OpenID: sub, UnionID: unionID}, nil
}

// namesAMemberTwice reports whether a JSON object names a top-level member
// twice, which golang-jwt cannot see (it keeps the last).
func namesAMemberTwice(object []byte) bool {
	var members map[string]json.RawMessage
	if json.Unmarshal(object, &members) != nil {
		return false
	}
	dec := json.NewDecoder(strings.NewReader(string(object)))
	count, depth := 0, 0
	for expectName := false; ; {
		token, err := dec.Token()
		if err != nil {
			return count > len(members)
		}
		switch token {
		case json.Delim('{'), json.Delim('['):
			depth++
			expectName = depth == 1
			continue
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 1 {
			if expectName {
				count++
			}
			expectName = !expectName
		}
	}
}

func decodeSegmentOrNil(segment string) []byte {
	b, _ := base64.RawURLEncoding.DecodeString(segment)
	return b
}

func TestTokenRoundTrip(t *testing.T) {
	clock := testkit.NewClock(sessionEpoch)
	tokens := newTestSessionTokens(clock, sessionAppID, sessionSecret)
	for _, id := range []Identity{aliceIdentity, bobIdentity} {
		token, expires := tokens.issue(tokens.apps[0], id)
		if !expires.Equal(sessionEpoch.Add(sessionTTL)) {
			t.Errorf("expires %s, want now+ttl %s", expires, sessionEpoch.Add(sessionTTL))
		}
		got, err := verified(tokens, token)
		if err != nil || got != publicIdentity(id) {
			t.Fatalf("verify: %+v %v, want %+v", got, err, publicIdentity(id))
		}
		if got, err := libraryVerify(token, sessionAppID, clock.Now(), sessionSecret); err != nil || got != publicIdentity(id) {
			t.Errorf("golang-jwt reads %+v %v, want %+v", got, err, publicIdentity(id))
		}

		parts := strings.Split(token, ".")
		if parts[0] != encodeSegment(`{"alg":"HS256","typ":"JWT"}`) {
			t.Errorf("header %s", decodeSegment(t, parts[0]))
		}
		if len(parts[2]) != signatureLen {
			t.Errorf("signature %q is not signatureLen (%d) long", parts[2], signatureLen)
		}
		var claims map[string]any
		if err := json.Unmarshal(decodeSegment(t, parts[1]), &claims); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{
			"sub":   id.OpenID,
			"appid": sessionAppID,
			"iat":   float64(sessionEpoch.Unix()),
			"exp":   float64(sessionEpoch.Add(sessionTTL).Unix()),
		}
		if id.UnionID != "" {
			want["unionid"] = id.UnionID
		}
		if !maps.Equal(claims, want) {
			t.Errorf("claims %v, want exactly %v", claims, want)
		}
		if payload := string(decodeSegment(t, parts[1])); strings.Contains(payload, id.SessionKey) || strings.Contains(strings.ToLower(payload), "session") {
			t.Errorf("the token payload carries the session_key: %s", payload)
		}
	}
}

// issue writes the claims by hand; they must be byte for byte what
// encoding/json writes, whatever WeChat puts in an openid or unionid, and
// the token must verify to the same identity, signed as golang-jwt signs.
func FuzzTokenIssueWritesClaimsAsEncodingJSON(f *testing.F) {
	f.Add(aliceIdentity.OpenID, aliceIdentity.UnionID, int64(0))
	f.Add(bobIdentity.OpenID, "", int64(3600))
	f.Add(`o"quoted\\`, "<u&n>", int64(-1))
	f.Add("o\u00e9t\u00e9\u2028", "\xff\xfe", int64(1<<40))
	f.Add("o\x00\x1f\x7f", "u\tv", int64(-1<<40))
	f.Fuzz(func(t *testing.T, openID, unionID string, offset int64) {
		if openID == "" {
			return
		}
		clock := testkit.NewClock(time.Unix(offset, 0))
		tokens := newTestSessionTokens(clock, sessionAppID, sessionSecret)
		id := Identity{OpenID: openID, UnionID: unionID}
		token, expires := tokens.issue(tokens.apps[0], id)
		parts := strings.Split(token, ".")
		if len(parts) != 3 {
			t.Fatalf("token %q has %d parts", token, len(parts))
		}
		want, _ := json.Marshal(sessionClaims{Subject: openID, AppID: sessionAppID, UnionID: unionID, IssuedAt: offset, ExpiresAt: expires.Unix()})
		if got := decodeSegment(t, parts[1]); string(got) != string(want) {
			t.Fatalf("claims\n%s\nwant what encoding/json writes\n%s", got, want)
		}
		signed, _ := jwt.SigningMethodHS256.Sign(parts[0]+"."+parts[1], []byte(sessionSecret))
		if want := base64.RawURLEncoding.EncodeToString(signed); parts[2] != want {
			t.Fatalf("signature %s, golang-jwt signs %s", parts[2], want)
		}
		var read sessionClaims
		if err := json.Unmarshal(want, &read); err != nil {
			t.Fatal(err)
		}
		got, err := verified(tokens, token)
		if !isHeaderValue(read.Subject) || !isHeaderValue(read.UnionID) {
			if err != errMalformedSession {
				t.Fatalf("verify: %+v %v, want %v (not a header value)", got, err, errMalformedSession)
			}
		} else if want := (Identity{OpenID: read.Subject, UnionID: read.UnionID}); err != nil || got != want {
			t.Fatalf("verify: %+v %v, want %+v", got, err, want)
		}
	})
}

// Every rule of verification, each shown by a token signed with the right
// key by golang-jwt (a third-party library) or by hand, and differing from
// a valid one in one way; the reason is the sessions_rejected_total label.
func TestTokenVerification(t *testing.T) {
	clock := testkit.NewClock(sessionEpoch)
	tokens := newTestSessionTokens(clock, sessionAppID, sessionSecret)
	now := clock.Now()
	valid := func(edit func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"sub": aliceIdentity.OpenID, "appid": sessionAppID, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		if edit != nil {
			edit(c)
		}
		return c
	}
	sign := func(edit func(jwt.MapClaims)) string {
		return signWithLibrary(t, jwt.SigningMethodHS256, valid(edit), nil, sessionSecret)
	}
	withHeader := func(edit func(map[string]any)) string {
		return signWithLibrary(t, jwt.SigningMethodHS256, valid(nil), edit, sessionSecret)
	}
	const hs256 = `{"alg":"HS256","typ":"JWT"}`
	rawPayload := func(payload string) string { return signRaw(hs256, payload, sessionSecret) }
	claimsJSON := func(extra string) string {
		return fmt.Sprintf(`{"sub":%q,"appid":%q,"iat":%d,"exp":%d%s}`, aliceIdentity.OpenID, sessionAppID, now.Unix(), now.Add(time.Hour).Unix(), extra)
	}
	issued := issueToken(tokens, aliceIdentity)
	parts := strings.Split(issued, ".")
	alice := Identity{OpenID: aliceIdentity.OpenID}

	for _, tc := range []struct {
		name   string
		token  string
		reason string   // "" when accepted
		want   Identity // when accepted
	}{
		{name: "valid, signed by the library", token: sign(nil), want: alice},
		{name: "valid, unionid", token: sign(func(c jwt.MapClaims) { c["unionid"] = aliceIdentity.UnionID }), want: publicIdentity(aliceIdentity)},
		{name: "unknown claims are ignored", token: sign(func(c jwt.MapClaims) { c["role"] = "admin"; c["lvl"] = []int{1} }), want: alice},
		{name: "iss and jti as strings", token: sign(func(c jwt.MapClaims) { c["iss"] = "https://game.example"; c["jti"] = "1" }), want: alice},
		{name: "a fractional exp", token: sign(func(c jwt.MapClaims) { c["exp"] = float64(now.Add(time.Hour).Unix()) + 0.5 }), want: alice},
		{name: "a fractional exp, past", token: sign(func(c jwt.MapClaims) { c["exp"] = float64(now.Add(-maxClockSkew).Unix()) - 0.5 }), reason: "expired"},
		{name: "a fractional exp within the leeway", token: sign(func(c jwt.MapClaims) { c["exp"] = float64(now.Add(-maxClockSkew).Unix()) + 1.5 }), want: alice},
		{name: "escaped strings", token: rawPayload(strings.Replace(claimsJSON(""), aliceIdentity.OpenID[:2], `\u006f\u0041`, 1)), want: alice},
		{name: "a repeated claim keeps the last value", token: rawPayload(claimsJSON(`,"sub":"oSomeoneElse"`)), want: Identity{OpenID: "oSomeoneElse"}},
		{name: "the issued token", token: issued, want: publicIdentity(aliceIdentity)},

		{name: "header with a kid (every secret is tried)", token: withHeader(func(h map[string]any) { h["kid"] = "another-key" }), want: alice},
		{name: "header without typ, as jose writes it", token: withHeader(func(h map[string]any) { delete(h, "typ") }), want: alice},
		{name: "header members reordered", token: signRaw(`{"typ":"JWT","alg":"HS256"}`, claimsJSON(""), sessionSecret), want: alice},
		{name: "header with JSON whitespace everywhere", token: signRaw(" \t{\r\n\"alg\" :\t\"HS256\" ,\n\"typ\":\"JWT\"}\n ", claimsJSON(""), sessionSecret), want: alice},
		{name: "header with escaped names and values", token: signRaw(`{"\u0061lg":"HS\u0032\u0035\u0036"}`, claimsJSON(""), sessionSecret), want: alice},
		{name: "header with cty and other parameters", token: withHeader(func(h map[string]any) { h["cty"] = "JWT"; h["x5t"] = "abc"; h["zip"] = nil }), want: alice},
		{name: "header with typ jwt", token: withHeader(func(h map[string]any) { h["typ"] = "jwt" }), reason: "malformed"},
		{name: "header with typ null", token: withHeader(func(h map[string]any) { h["typ"] = nil }), reason: "malformed"},
		{name: "header with typ JOSE", token: withHeader(func(h map[string]any) { h["typ"] = "JOSE" }), reason: "malformed"},
		{name: "header with crit", token: withHeader(func(h map[string]any) { h["crit"] = []string{"exp"} }), reason: "malformed"},
		{name: "header with b64 false", token: withHeader(func(h map[string]any) { h["b64"] = false }), reason: "malformed"},
		{name: "header with jku", token: withHeader(func(h map[string]any) { h["jku"] = "https://attacker.example/keys" }), reason: "malformed"},
		{name: "header with jwk", token: withHeader(func(h map[string]any) { h["jwk"] = map[string]string{"kty": "oct", "k": "AA"} }), reason: "malformed"},
		{name: "header with x5u", token: withHeader(func(h map[string]any) { h["x5u"] = "https://attacker.example/cert" }), reason: "malformed"},
		{name: "header with x5c", token: withHeader(func(h map[string]any) { h["x5c"] = []string{"MIIB"} }), reason: "malformed"},
		{name: "header naming alg twice", token: signRaw(`{"alg":"none","alg":"HS256"}`, claimsJSON(""), sessionSecret), reason: "malformed"},
		{name: "header naming typ twice", token: signRaw(`{"alg":"HS256","typ":"JWT","typ":"JWT"}`, claimsJSON(""), sessionSecret), reason: "malformed"},
		{name: "header alg hs256", token: signRaw(`{"alg":"hs256"}`, claimsJSON(""), sessionSecret), reason: "malformed"},
		{name: "header alg not a string", token: signRaw(`{"alg":["HS256"]}`, claimsJSON(""), sessionSecret), reason: "malformed"},
		{name: "header without alg", token: signRaw(`{"typ":"JWT"}`, claimsJSON(""), sessionSecret), reason: "malformed"},
		{name: "header an array", token: signRaw(`["alg","HS256"]`, claimsJSON(""), sessionSecret), reason: "malformed"},
		{name: "header null", token: signRaw(`null`, claimsJSON(""), sessionSecret), reason: "malformed"},
		{name: "header with trailing data", token: signRaw(`{"alg":"HS256"}{}`, claimsJSON(""), sessionSecret), reason: "malformed"},
		{name: "header with padding, signed so", token: signSegments(encodeSegment(`{"alg":"HS256"}`)+"=", encodeSegment(claimsJSON("")), sessionSecret), reason: "malformed"},
		// The signature is checked before the header is read: an edited
		// header is a forgery first.
		{name: "header with padding added", token: strings.Replace(signRaw(`{"alg":"HS256"}`, claimsJSON(""), sessionSecret), ".", "=.", 1), reason: "bad_signature"},
		{name: "RS256 header with an HMAC signature", token: signRaw(`{"alg":"RS256","typ":"JWT"}`, claimsJSON(""), sessionSecret), reason: "malformed"},
		{name: "HS384 with the same key", token: signWithLibrary(t, jwt.SigningMethodHS384, valid(nil), nil, sessionSecret), reason: "malformed"},
		{name: "HS512 with the same key", token: signWithLibrary(t, jwt.SigningMethodHS512, valid(nil), nil, sessionSecret), reason: "malformed"},
		{name: "alg none", token: signWithLibrary(t, jwt.SigningMethodNone, valid(nil), nil, ""), reason: "malformed"},
		{name: "alg none with another header's signature", token: encodeSegment(`{"alg":"none","typ":"JWT"}`) + "." + parts[1] + "." + parts[2], reason: "bad_signature"},
		{name: "alg none signed with the key", token: signRaw(`{"alg":"none","typ":"JWT"}`, claimsJSON(""), sessionSecret), reason: "malformed"},
		{name: "unacceptable header, forged", token: signRaw(`{"alg":"RS256","typ":"JWT"}`, claimsJSON(""), otherSessionSecret), reason: "bad_signature"},

		{name: "another key", token: signWithLibrary(t, jwt.SigningMethodHS256, valid(nil), nil, otherSessionSecret), reason: "bad_signature"},
		{name: "edited payload", token: parts[0] + "." + encodeSegment(strings.Replace(string(decodeSegment(t, parts[1])), aliceIdentity.OpenID, bobIdentity.OpenID, 1)) + "." + parts[2], reason: "bad_signature"},
		{name: "edited signature", token: parts[0] + "." + parts[1] + "." + encodeSegment(strings.Repeat("x", 32)), reason: "bad_signature"},

		{name: "no exp", token: sign(func(c jwt.MapClaims) { delete(c, "exp") }), reason: "malformed"},
		{name: "exp as a string", token: sign(func(c jwt.MapClaims) { c["exp"] = fmt.Sprint(now.Add(time.Hour).Unix()) }), reason: "malformed"},
		{name: "exp null", token: sign(func(c jwt.MapClaims) { c["exp"] = nil }), reason: "malformed"},
		{name: "exp beyond 2^53 seconds", token: sign(func(c jwt.MapClaims) { c["exp"] = 1e300 }), reason: "malformed"},
		{name: "iat as a string", token: sign(func(c jwt.MapClaims) { c["iat"] = "now" }), reason: "malformed"},
		{name: "nbf as a boolean", token: sign(func(c jwt.MapClaims) { c["nbf"] = true }), reason: "malformed"},
		{name: "sub as a number", token: sign(func(c jwt.MapClaims) { c["sub"] = 12345 }), reason: "malformed"},
		{name: "sub null", token: sign(func(c jwt.MapClaims) { c["sub"] = nil }), reason: "malformed"},
		{name: "appid as a number", token: sign(func(c jwt.MapClaims) { c["appid"] = 1 }), reason: "malformed"},
		{name: "unionid as an array", token: sign(func(c jwt.MapClaims) { c["unionid"] = []string{"u"} }), reason: "malformed"},
		{name: "iss as a number", token: sign(func(c jwt.MapClaims) { c["iss"] = 7 }), reason: "malformed"},
		{name: "jti as an object", token: sign(func(c jwt.MapClaims) { c["jti"] = map[string]int{} }), reason: "malformed"},
		{name: "empty sub", token: sign(func(c jwt.MapClaims) { c["sub"] = "" }), reason: "malformed"},
		{name: "sub with a line break", token: sign(func(c jwt.MapClaims) { c["sub"] = "o1\r\nX-Wx-Appid: wxother" }), reason: "malformed"},
		{name: "payload not an object", token: rawPayload(`["sub"]`), reason: "malformed"},
		{name: "payload with trailing data", token: rawPayload(claimsJSON("") + " {}"), reason: "malformed"},

		{name: "aud the gateway does not claim", token: sign(func(c jwt.MapClaims) { c["aud"] = "wxsomeoneelse" }), reason: "wrong_audience"},
		{name: "aud naming the app_id", token: sign(func(c jwt.MapClaims) { c["aud"] = []string{sessionAppID} }), reason: "wrong_audience"},

		{name: "expired", token: sign(func(c jwt.MapClaims) { c["exp"] = now.Add(-maxClockSkew).Unix() }), reason: "expired"},
		{name: "expired, within the leeway", token: sign(func(c jwt.MapClaims) { c["exp"] = now.Add(-maxClockSkew + time.Second).Unix() }), want: alice},
		{name: "exp zero", token: sign(func(c jwt.MapClaims) { c["exp"] = 0 }), reason: "expired"},
		{name: "nbf an hour away", token: sign(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() }), reason: "not_yet_valid"},
		{name: "nbf within the leeway", token: sign(func(c jwt.MapClaims) { c["nbf"] = now.Add(maxClockSkew).Unix() }), want: alice},
		{name: "nbf just past the leeway", token: sign(func(c jwt.MapClaims) { c["nbf"] = now.Add(maxClockSkew + time.Second).Unix() }), reason: "not_yet_valid"},
		{name: "iat an hour away", token: sign(func(c jwt.MapClaims) { c["iat"] = now.Add(time.Hour).Unix() }), reason: "not_yet_valid"},
		{name: "iat within the leeway", token: sign(func(c jwt.MapClaims) { c["iat"] = now.Add(maxClockSkew).Unix() }), want: alice},

		{name: "another app_id", token: sign(func(c jwt.MapClaims) { c["appid"] = "wxanotherapp" }), reason: "other_app"},
		{name: "no app_id", token: sign(func(c jwt.MapClaims) { delete(c, "appid") }), reason: "other_app"},

		{name: "garbage", token: "garbage", reason: "malformed"},
		{name: "three garbage segments", token: "a.b.c", reason: "malformed"},
		{name: "dots", token: "..", reason: "malformed"},
		{name: "empty", token: "", reason: "malformed"},
		{name: "a fourth segment", token: issued + "." + parts[2], reason: "malformed"},
		{name: "signature spelled with other unused bits", token: parts[0] + "." + parts[1] + "." + respell(parts[2]), reason: "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := verified(tokens, tc.token)
			if reason := rejectionReason(err); reason != tc.reason {
				t.Errorf("verify: %+v, %v (reason %q), want reason %q", id, err, reason, tc.reason)
			} else if err == nil && id != tc.want {
				t.Errorf("verify: %+v, want %+v", id, tc.want)
			}
			// The gateway and a backend's JWT library agree on every token.
			if libID, libErr := libraryVerify(tc.token, sessionAppID, now, sessionSecret); (err == nil) != (libErr == nil) || id != libID {
				t.Errorf("the gateway says %+v %v; golang-jwt says %+v %v", id, err, libID, libErr)
			}
		})
	}
}

// Tokens minted by the npm packages jose and jsonwebtoken (testdata/jwt,
// with the script that made them) verify exactly when their header is one
// the gateway accepts: what those libraries write by default, typ first, a
// kid; never crit, b64, jku, another alg or none. golang-jwt agrees.
func TestTokensMintedByNpmLibraries(t *testing.T) {
	raw, err := os.ReadFile("testdata/jwt/tokens.json")
	if err != nil {
		t.Fatal(err)
	}
	var fixtures struct {
		Secret, AppID, Sub string
		Tokens             []struct {
			Library, Header, Token string
			Accept                 bool
		}
	}
	if err := json.Unmarshal(raw, &fixtures); err != nil {
		t.Fatal(err)
	}
	clock := testkit.NewClock(sessionEpoch)
	tokens := newTestSessionTokens(clock, fixtures.AppID, otherSessionSecret, fixtures.Secret)
	for _, fixture := range fixtures.Tokens {
		t.Run(fixture.Library+", "+fixture.Header, func(t *testing.T) {
			id, err := verified(tokens, fixture.Token)
			switch {
			case fixture.Accept && (err != nil || id.OpenID != fixtures.Sub):
				t.Errorf("refused %s: %+v %v", decodeSegmentOrNil(strings.Split(fixture.Token, ".")[0]), id, err)
			case !fixture.Accept && err == nil:
				t.Errorf("accepted %s", decodeSegmentOrNil(strings.Split(fixture.Token, ".")[0]))
			}
			if libID, libErr := libraryVerify(fixture.Token, fixtures.AppID, clock.Now(), fixtures.Secret); (err == nil) != (libErr == nil) || id != libID {
				t.Errorf("the gateway says %+v %v; golang-jwt says %+v %v", id, err, libID, libErr)
			}
		})
	}
}

// respell changes the unused low bits of a segment's last character:
// lenient base64 decodes it to the same bytes.
func respell(segment string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, segment[len(segment)-1])
	return segment[:len(segment)-1] + string(alphabet[last^1])
}

func TestRespellKeepsTheBytes(t *testing.T) {
	token := issueToken(newTestSessionTokens(testkit.NewClock(sessionEpoch), sessionAppID, sessionSecret), aliceIdentity)
	signature := strings.Split(token, ".")[2]
	if slices.Equal(decodeSegment(t, respell(signature)), decodeSegment(t, signature)) == false {
		t.Fatal("respell no longer makes a lenient spelling of the same signature")
	}
}

// A token is valid from its iat less a minute until its exp plus a minute,
// as documented: gateways a little apart in time accept each other's
// tokens, and a token does not live much longer than its ttl.
func TestTokenLifetime(t *testing.T) {
	clock := testkit.NewClock(sessionEpoch)
	tokens := newTestSessionTokens(clock, sessionAppID, sessionSecret)
	token := issueToken(tokens, aliceIdentity)
	for _, tc := range []struct {
		at     time.Duration // from issue
		reason string
	}{
		{-2 * time.Minute, "not_yet_valid"}, // a gateway whose clock is behind by more than the leeway
		{-time.Minute - time.Second, "not_yet_valid"},
		{-time.Minute, ""},
		{0, ""},
		{sessionTTL + time.Minute - time.Nanosecond, ""},
		{sessionTTL + time.Minute, "expired"},
		{sessionTTL + 2*time.Minute, "expired"},
	} {
		clock.Set(sessionEpoch.Add(tc.at))
		if _, err := verified(tokens, token); rejectionReason(err) != tc.reason {
			t.Errorf("at issue%+v: %v, want reason %q", tc.at, err, tc.reason)
		}
	}
}

// Putting a new secret first rotates without logging anybody out.
func TestTokenSecretRotation(t *testing.T) {
	clock := testkit.NewClock(sessionEpoch)
	before := newTestSessionTokens(clock, sessionAppID, otherSessionSecret)
	rotating := newTestSessionTokens(clock, sessionAppID, sessionSecret, otherSessionSecret)
	after := newTestSessionTokens(clock, sessionAppID, sessionSecret)

	oldToken := issueToken(before, aliceIdentity)
	if id, err := verified(rotating, oldToken); err != nil || id != publicIdentity(aliceIdentity) {
		t.Errorf("a token signed by the old secret was refused during rotation: %v", err)
	}
	newToken := issueToken(rotating, bobIdentity)
	if _, err := verified(after, newToken); err != nil {
		t.Errorf("the first secret did not sign: %v", err)
	}
	if _, err := verified(before, newToken); err == nil {
		t.Error("a new token is still signed by the old secret")
	}
	if _, err := verified(after, oldToken); err == nil {
		t.Error("an old token verified once its secret was removed")
	}
}

func TestTokenClaimsFastPathAgreesWithJSON(t *testing.T) {
	for _, payload := range []string{
		`{"appid":"wx1","unionid":"u1","sub":"o1","exp":1795470000,"iat":1795462800}`,
		`{"appid":"wx1","sub":"o1","exp":1795470000,"iat":1795462800,"nbf":1795462800}`,
		`{"sub":"o1","sub":"o2","exp":1}`,
		`{}`,
		`{"sub":"o1",}`,
		`{"sub":"o1"`,
		`{"sub":1}`,
		`{"exp":"1"}`,
		`{"exp":01}`,
		`{"exp":1.5}`,
		`{"exp":-1}`,
		`{"SUB":"o1"}`,
		`{"sub":"o\u0031"}`,
		`{"sub":"o` + "\x7f" + `"}`,
		`{"sub" :"o1"}`,
		`{"aud":["x"],"sub":"o1"}`,
		`{"sub":null}`,
	} {
		var fast sessionClaims
		ok := fast.parseFlat([]byte(payload), flatTestApps)
		var slow sessionClaims
		err := slow.parseJSON([]byte(payload))
		if ok && (err != nil || fast != slow) {
			t.Errorf("%s: fast path read %+v, encoding/json %+v (%v)", payload, fast, slow, err)
		}
	}
	// What issue writes always takes the fast path.
	token := issueToken(newTestSessionTokens(testkit.NewClock(sessionEpoch), sessionAppID, sessionSecret), aliceIdentity)
	var c sessionClaims
	if !c.parseFlat(decodeSegment(t, strings.Split(token, ".")[1]), []*loginApp{{platform: wechatPlatform, appID: sessionAppID}}) || c.Subject != aliceIdentity.OpenID || c.UnionID != aliceIdentity.UnionID || c.AppID != sessionAppID {
		t.Errorf("an issued token's claims missed the fast path: %+v", c)
	}
}

// TestTokenClaimsEveryByteAsEncodingJSON puts each of the 256 bytes in a
// claim's value, and in a key: the fast path reads what encoding/json
// reads or leaves the claims to it, and issue writes what json.Marshal
// writes.
func TestTokenClaimsEveryByteAsEncodingJSON(t *testing.T) {
	for c := range 256 {
		value := "o" + string([]byte{byte(c)}) + "x"
		for _, payload := range []string{
			`{"sub":"` + value + `","appid":"wx1","exp":1}`,
			`{"sub":"o1","` + value + `":"v","exp":1}`,
			`{"su` + string([]byte{byte(c)}) + `":"o1","exp":1}`,
		} {
			var fast sessionClaims
			if !fast.parseFlat([]byte(payload), flatTestApps) {
				continue
			}
			var slow sessionClaims
			if err := slow.parseJSON([]byte(payload)); err != nil || fast != slow {
				t.Errorf("%q: fast path read %+v, encoding/json %+v (%v)", payload, fast, slow, err)
			}
		}
		claims := sessionClaims{Subject: value, AppID: "wx1", UnionID: value, IssuedAt: 1, ExpiresAt: 2}
		want, _ := json.Marshal(claims)
		if got := appendClaims(nil, claims); string(got) != string(want) {
			t.Errorf("byte %#x: issue writes %s, encoding/json %s", c, got, want)
		}
	}
}

// flatTestApps are the apps parseFlat is given in its tests: a WeChat app
// and a Douyin app.
var flatTestApps = []*loginApp{{platform: wechatPlatform, appID: "wx1"}, {platform: douyinPlatform, appID: "tt1"}}

func FuzzTokenClaimsFastPath(f *testing.F) {
	f.Add([]byte(`{"appid":"tt1","platform":"douyin","anonymous_openid":"a1","exp":1795470000,"iat":1795462800}`))
	f.Add([]byte(`{"appid":"wx1","unionid":"u1","sub":"o1","exp":1795470000,"iat":1795462800}`))
	f.Add([]byte(`{"sub":"o1",}`))
	f.Add([]byte(`{"exp":01,"nbf":2}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		var fast sessionClaims
		if !fast.parseFlat(payload, flatTestApps) {
			return
		}
		var slow sessionClaims
		if err := slow.parseJSON(payload); err != nil || fast != slow {
			t.Fatalf("%q: fast path read %+v, encoding/json %+v (%v)", payload, fast, slow, err)
		}
	})
}

// FuzzTokenAgreesWithGolangJWT signs claims under a header (the gateway's,
// or any JSON: the seeds are the headers JWT libraries write and those the
// gateway refuses) with one of three keys, and checks that the gateway and
// golang-jwt (with the rules libraryVerify lists) accept the token or
// refuse it together, with the same identity, at any time around the
// epoch. The claims are {"appid":…} followed by sub, exp, nbf
// and iat when their JSON is not empty, then by rest as written, so that the
// fuzzer spends its time on claim values rather than on JSON syntax.
func FuzzTokenAgreesWithGolangJWT(f *testing.F) {
	const hs256 = `{"alg":"HS256","typ":"JWT"}`
	clock := testkit.NewClock(sessionEpoch)
	tokens := newTestSessionTokens(clock, sessionAppID, sessionSecret, otherSessionSecret)
	secrets := []string{sessionSecret, otherSessionSecret, "an-unknown-secret-0123456789abcdef"}
	epoch := sessionEpoch.Unix()
	later := fmt.Sprint(epoch + 3600)
	for _, seed := range []struct{ sub, exp, nbf, iat, rest string }{
		{`"o1"`, later, "", fmt.Sprint(epoch), ""},
		{`"o1"`, later, fmt.Sprint(epoch + 60), fmt.Sprint(epoch + 61), `,"unionid":"u1"`},
		{`"o\u0041"`, later + ".9", "-1", "0", `,"aud":[]`},
		{`"o1"`, `"` + later + `"`, "", "", ""},
		{`1`, later, "null", "true", `,"iss":7`},
		{`"o1"`, "1e300", "", "", `,"sub":"o2","jti":"x"`},
		{`"o1"`, "9007199254740993", "", "", `,"appid":"wxother"`},
		{`"o1\r\n"`, fmt.Sprint(epoch - 59), "", "", `,"role":{"admin":true}`},
		{"", later, "", "", ""},
	} {
		f.Add(hs256, seed.sub, seed.exp, seed.nbf, seed.iat, seed.rest, uint8(0), int64(0))
	}
	for _, header := range []string{
		`{"alg":"HS256"}`,
		`{"typ":"JWT","alg":"HS256"}`,
		`{"alg":"HS256","typ":"JWT","kid":"1"}`,
		` { "alg" : "HS256" ,` + "\n\t" + `"kid" : 7 } `,
		`{"\u0061lg":"HS256","typ":"J\u0057T"}`,
		`{"alg":"HS256","typ":"jwt"}`,
		`{"alg":"HS256","typ":null}`,
		`{"alg":"HS256","crit":["exp"],"exp":1}`,
		`{"alg":"HS256","b64":false}`,
		`{"alg":"HS256","jku":"x","jwk":{},"x5u":"x","x5c":[]}`,
		`{"alg":"none","alg":"HS256"}`,
		`{"alg":"HS256","x":{"alg":"none","alg":1}}`,
		`{"alg":"hs256"}`,
		`{"alg":"HS512"}`,
		`{"alg":"none"}`,
		`["HS256"]`,
		`{"alg":"HS256"} {}`,
	} {
		f.Add(header, `"o1"`, later, "", "", "", uint8(1), int64(0))
	}
	f.Add(hs256, `"o1"`, later, "", "", "", uint8(2), int64(-7200))

	f.Fuzz(func(t *testing.T, header, sub, exp, nbf, iat, rest string, key uint8, offset int64) {
		payload := `{"appid":"` + sessionAppID + `"`
		for _, claim := range []struct{ name, value string }{{"sub", sub}, {"exp", exp}, {"nbf", nbf}, {"iat", iat}} {
			if claim.value != "" {
				payload += `,"` + claim.name + `":` + claim.value
			}
		}
		payload += rest + "}"
		now := sessionEpoch.Add(time.Duration(offset%(1<<32)) * time.Second) // within ±136 years: no Duration overflow
		clock.Set(now)
		token := signRaw(header, payload, secrets[int(key)%len(secrets)])
		id, err := verified(tokens, token)
		libID, libErr := libraryVerify(token, sessionAppID, now, sessionSecret, otherSessionSecret)
		if (err == nil) != (libErr == nil) || id != libID {
			t.Fatalf("header %s, payload %s at %s: the gateway says %+v %v; golang-jwt says %+v %v", header, payload, now, id, err, libID, libErr)
		}
	})
}

// libraryClaims is how golang-jwt would read our tokens in production: a
// claims struct, which decodes faster than MapClaims.
type libraryClaims struct {
	AppID   string `json:"appid"`
	UnionID string `json:"unionid,omitempty"`
	jwt.RegisteredClaims
}

func (c *libraryClaims) Validate() error {
	if len(c.Audience) > 0 || c.Subject == "" || c.AppID != sessionAppID {
		return errors.New("not the gateway's")
	}
	return nil
}

// BenchmarkTokenVerify compares verify with the fastest golang-jwt setup
// that checks the same rules, side by side in one run; token.go's comment
// records the numbers.
func BenchmarkTokenVerify(b *testing.B) {
	clock := testkit.NewClock(sessionEpoch)
	tokens := newTestSessionTokens(clock, sessionAppID, sessionSecret, otherSessionSecret)
	token := issueToken(tokens, aliceIdentity)
	b.Run("handwritten", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if id, err := verified(tokens, token); err != nil || id.OpenID != aliceIdentity.OpenID {
				b.Fatal(id, err)
			}
		}
	})
	b.Run("golang-jwt", func(b *testing.B) {
		parser := jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithStrictDecoding(), jwt.WithLeeway(maxClockSkew),
			jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithTimeFunc(clock.Now))
		keys := jwt.VerificationKeySet{Keys: []jwt.VerificationKey{[]byte(sessionSecret), []byte(otherSessionSecret)}}
		keyfunc := func(*jwt.Token) (any, error) { return keys, nil }
		b.ReportAllocs()
		for b.Loop() {
			var claims libraryClaims
			if _, err := parser.ParseWithClaims(token, &claims, keyfunc); err != nil || claims.Subject != aliceIdentity.OpenID {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTokenIssue is the signing of a session token, which every
// successful login pays.
func BenchmarkTokenIssue(b *testing.B) {
	tokens := newTestSessionTokens(testkit.NewClock(sessionEpoch), sessionAppID, sessionSecret)
	b.ReportAllocs()
	for b.Loop() {
		tokens.issue(tokens.apps[0], aliceIdentity)
	}
}
