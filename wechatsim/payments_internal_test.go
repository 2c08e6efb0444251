package wechatsim

import (
	"encoding/base64"
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/workedexamples"
)

// TestCryptoMatchesWechatWorkedExamples: the simulator checks signatures,
// signs rawData and encrypts open data exactly as WeChat's own worked
// examples say. The gateway's test (session_crypto_test.go) reads the same
// examples, so the two cannot agree on a wrong formula.
func TestCryptoMatchesWechatWorkedExamples(t *testing.T) {
	examples := workedexamples.Load(t)
	for _, ex := range examples.PaymentSignatures {
		if ex.PaySig != "" {
			if got := hexHMAC(ex.AppKey, []byte(ex.URI+"&"+ex.PostBody)); got != ex.PaySig {
				t.Errorf("%s: pay_sig %s; WeChat's is %s", ex.Source, got, ex.PaySig)
			}
		}
		if got := hexHMAC(ex.SessionKey, []byte(ex.PostBody)); got != ex.Signature {
			t.Errorf("%s: signature %s; WeChat's is %s", ex.Source, got, ex.Signature)
		}
	}
	raw := examples.RawDataSignature
	s := New(Options{})
	s.sessionKeys["player"] = raw.SessionKey
	if got, ok := s.SignRawData("player", raw.RawData); !ok || got != raw.Signature {
		t.Errorf("%s: rawData signature %s; WeChat's is %s", raw.Source, got, raw.Signature)
	}
	open := examples.OpenData
	key, _ := base64.StdEncoding.DecodeString(open.SessionKey)
	iv, _ := base64.StdEncoding.DecodeString(open.IV)
	if got := base64.StdEncoding.EncodeToString(encryptOpenData(key, iv, []byte(open.Plaintext))); got != open.EncryptedData {
		t.Errorf("%s: encrypted to %s; WeChat's is %s", open.Source, got, open.EncryptedData)
	}
}
