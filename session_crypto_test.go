package wechatlogin

import (
	"encoding/json"
	"os"
	"testing"
)

// workedExamples are WeChat's own worked examples of the session_key
// formulas (testdata/wechat_worked_examples.json names each page). The
// simulator's test reads the same file, so that the gateway and the
// simulator cannot agree on a wrong formula.
type workedExamples struct {
	PaymentSignatures []struct {
		Source     string `json:"source"`
		URI        string `json:"uri"`
		AppKey     string `json:"app_key"`
		SessionKey string `json:"session_key"`
		PostBody   string `json:"post_body"`
		PaySig     string `json:"pay_sig"`
		Signature  string `json:"signature"`
	} `json:"payment_signatures"`
	RawDataSignature struct {
		Source     string `json:"source"`
		RawData    string `json:"raw_data"`
		SessionKey string `json:"session_key"`
		Signature  string `json:"signature"`
	} `json:"raw_data_signature"`
	OpenData struct {
		Source        string `json:"source"`
		AppID         string `json:"app_id"`
		SessionKey    string `json:"session_key"`
		IV            string `json:"iv"`
		EncryptedData string `json:"encrypted_data"`
		Plaintext     string `json:"plaintext"`
	} `json:"open_data"`
}

func loadWorkedExamples(t *testing.T) workedExamples {
	t.Helper()
	raw, err := os.ReadFile("testdata/wechat_worked_examples.json")
	if err != nil {
		t.Fatal(err)
	}
	var examples workedExamples
	if err := json.Unmarshal(raw, &examples); err != nil {
		t.Fatal(err)
	}
	return examples
}

// TestGatewayCryptoMatchesWechatWorkedExamples: pay_sig, the user-state
// signature, the rawData signature and open-data decryption give exactly
// what WeChat's documentation says they give.
func TestGatewayCryptoMatchesWechatWorkedExamples(t *testing.T) {
	examples := loadWorkedExamples(t)
	if len(examples.PaymentSignatures) == 0 {
		t.Fatal("no worked examples read")
	}
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
