package wechatlogin

import (
	"testing"

	"github.com/caddy-wechat-login/caddy-wechat-login/internal/workedexamples"
)

// TestGatewayCryptoMatchesWechatWorkedExamples: pay_sig, the user-state
// signature, the rawData signature and open-data decryption give exactly
// what WeChat's documentation says they give. The simulator's test reads
// the same examples, so that the gateway and the simulator cannot agree on
// a wrong formula.
func TestGatewayCryptoMatchesWechatWorkedExamples(t *testing.T) {
	examples := workedexamples.Load(t)
	for _, ex := range examples.PaymentSignatures {
		if ex.PaySig != "" {
			if got := paySignature(ex.AppKey, ex.URI, []byte(ex.PostBody)); got != ex.PaySig {
				t.Errorf("%s: pay_sig %s; WeChat's is %s", ex.Source, got, ex.PaySig)
			}
		}
		if got := userStateSignature(ex.SessionKey, []byte(ex.PostBody)); got != ex.Signature {
			t.Errorf("%s: signature %s; WeChat's is %s", ex.Source, got, ex.Signature)
		}
	}
	raw := examples.RawDataSignature
	if got := rawDataSignature(raw.RawData, raw.SessionKey); got != raw.Signature {
		t.Errorf("%s: rawData signature %s; WeChat's is %s", raw.Source, got, raw.Signature)
	}
	open := examples.OpenData
	ciphertext, ok := decodeOpenData(open.EncryptedData, open.IV)
	if !ok {
		t.Fatalf("%s: the example does not decode", open.Source)
	}
	plain, err := ciphertext.decrypt(open.SessionKey)
	if err != nil || string(plain) != open.Plaintext {
		t.Errorf("%s: decrypted %q (%v); want %q", open.Source, plain, err, open.Plaintext)
	}
	if _, err := ciphertext.decrypt("HyVFkGl5F5OQWJZZaNzBBg=="); err == nil {
		t.Error("the example decrypted under another player's key")
	}
}
