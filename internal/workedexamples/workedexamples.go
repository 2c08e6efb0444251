// Package workedexamples reads WeChat's own worked examples of the
// session_key formulas (testdata/wechat_worked_examples.json names the page
// of each), so that the gateway's tests and the simulator's check their
// formulas against the same published values, and cannot agree on a wrong
// one. It imports nothing of the project, so any test can use it.
package workedexamples

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Examples is the file's content.
type Examples struct {
	PaymentSignatures []struct {
		Source     string `json:"source"`
		URI        string `json:"uri"`
		AppKey     string `json:"app_key"`
		SessionKey string `json:"session_key"`
		PostBody   string `json:"post_body"`
		PaySig     string `json:"pay_sig"` // empty for a user-state signature alone
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

// Load reads the examples, failing t if they do not read or hold no
// payment signature.
func Load(t testing.TB) Examples {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(here), "..", "..", "testdata", "wechat_worked_examples.json"))
	if err != nil {
		t.Fatal(err)
	}
	var examples Examples
	if err := json.Unmarshal(raw, &examples); err != nil || len(examples.PaymentSignatures) == 0 {
		t.Fatalf("the worked examples do not read: %v", err)
	}
	return examples
}
