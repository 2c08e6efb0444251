package wechatsim

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"testing"
)

// TestCryptoMatchesWechatWorkedExamples: the simulator checks signatures and
// encrypts open data exactly as WeChat's own worked examples say. The
// gateway's test (session_crypto_test.go) reads the same examples, so the
// two cannot agree on a wrong formula. (The simulator makes no rawData, so
// that example is the gateway's alone.)
func TestCryptoMatchesWechatWorkedExamples(t *testing.T) {
	raw, err := os.ReadFile("../testdata/wechat_worked_examples.json")
	if err != nil {
		t.Fatal(err)
	}
	var examples struct {
		PaymentSignatures []struct {
			Source     string `json:"source"`
			URI        string `json:"uri"`
			AppKey     string `json:"app_key"`
			SessionKey string `json:"session_key"`
			PostBody   string `json:"post_body"`
			PaySig     string `json:"pay_sig"`
			Signature  string `json:"signature"`
		} `json:"payment_signatures"`
		OpenData struct {
			Source        string `json:"source"`
			SessionKey    string `json:"session_key"`
			IV            string `json:"iv"`
			EncryptedData string `json:"encrypted_data"`
			Plaintext     string `json:"plaintext"`
		} `json:"open_data"`
	}
	if err := json.Unmarshal(raw, &examples); err != nil || len(examples.PaymentSignatures) == 0 {
		t.Fatalf("the worked examples do not read: %v", err)
	}
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
	open := examples.OpenData
	key, _ := base64.StdEncoding.DecodeString(open.SessionKey)
	iv, _ := base64.StdEncoding.DecodeString(open.IV)
	if got := base64.StdEncoding.EncodeToString(encryptOpenData(key, iv, []byte(open.Plaintext))); got != open.EncryptedData {
		t.Errorf("%s: encrypted to %s; WeChat's is %s", open.Source, got, open.EncryptedData)
	}
}
