package wechatlogin

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
)

// WeChat's formulas around a player's session_key. Two encodings: AES uses
// the key base64-decoded (16 bytes); every signature uses it as the text
// WeChat sent. Hex is lower case, as WeChat compares it.

// errUndecryptable: the data does not decrypt under the key (bad padding),
// which almost always means a stale key after another wx.login.
var errUndecryptable = errors.New("the data does not decrypt under the player's session_key")

// openDataCiphertext is an encryptedData/iv pair decoded, checked for the
// shapes AES-128-CBC needs.
type openDataCiphertext struct {
	data, iv []byte
}

// decodeOpenData decodes the base64 encryptedData and iv a client sent, or
// reports that they cannot be AES-128-CBC output.
func decodeOpenData(encryptedData, iv string) (openDataCiphertext, bool) {
	data, errData := base64.StdEncoding.DecodeString(encryptedData)
	ivBytes, errIV := base64.StdEncoding.DecodeString(iv)
	ok := errData == nil && errIV == nil && len(ivBytes) == aes.BlockSize && len(data) > 0 && len(data)%aes.BlockSize == 0
	return openDataCiphertext{data: data, iv: ivBytes}, ok
}

// decrypt is AES-128-CBC with the session_key base64-decoded as the key,
// PKCS#7 padding removed.
func (c openDataCiphertext) decrypt(sessionKey string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(sessionKey)
	if err != nil || len(key) != 16 {
		return nil, errors.New("the kept session_key is not 16 base64-encoded bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	plain := make([]byte, len(c.data))
	cipher.NewCBCDecrypter(block, c.iv).CryptBlocks(plain, c.data)
	return unpadPKCS7(plain)
}

func unpadPKCS7(plain []byte) ([]byte, error) {
	n := int(plain[len(plain)-1])
	if n == 0 || n > aes.BlockSize {
		return nil, errUndecryptable
	}
	for _, b := range plain[len(plain)-n:] {
		if int(b) != n {
			return nil, errUndecryptable
		}
	}
	return plain[:len(plain)-n], nil
}

// rawDataSignature is the signature wx.getUserInfo-style APIs give with
// rawData: hex sha1(rawData followed by the session_key text).
func rawDataSignature(rawData, sessionKey string) string {
	sum := sha1.Sum([]byte(rawData + sessionKey))
	return hex.EncodeToString(sum[:])
}

// userStateSignature is the user-state signature of a server API call (or
// of wx.requestMidasPaymentGameItem's signData): hex HMAC-SHA256 keyed with
// the session_key text over msg. Over "" it proves the key to checksession
// and resetusersessionkey.
func userStateSignature(sessionKey string, msg []byte) string {
	return hmacSHA256Hex([]byte(sessionKey), nil, msg)
}

// paySignature is pay_sig: hex HMAC-SHA256 keyed with the AppKey over
// uri + "&" + body, where uri is a server API's path without its query, or
// "requestMidasPaymentGameItem" for the client's call.
func paySignature(appKey, uri string, body []byte) string {
	return hmacSHA256Hex([]byte(appKey), []byte(uri+"&"), body)
}

func hmacSHA256Hex(key, prefix, msg []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write(prefix)
	mac.Write(msg)
	return hex.EncodeToString(mac.Sum(nil))
}

// sameSignature compares a presented hex signature with the expected one in
// constant time; hex case does not matter.
func sameSignature(presented, expected string) bool {
	got, errGot := hex.DecodeString(presented)
	want, errWant := hex.DecodeString(expected)
	return errGot == nil && errWant == nil && subtle.ConstantTimeCompare(got, want) == 1
}
