package testkit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The end-of-run scan fails a run whose logs carry a forbidden string,
// wherever it is, showing the line with the string hidden, and passes one
// whose logs carry none.
func TestReportLeaksFindsAForbiddenStringInAnyLine(t *testing.T) {
	const secret = "report-leaks-secret-91c4"
	Forbid(secret)
	report, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer report.Close()
	stderr := os.Stderr
	os.Stderr = report
	defer func() { os.Stderr = stderr }()

	clean := "{\"msg\":\"exchange\"}\n{\"msg\":\"served\"}\n"
	if reportLeaks(clean) {
		t.Error("clean logs reported as leaking")
	}
	if !reportLeaks(clean + "{\"msg\":\"config\",\"app_secret\":\"" + secret + "\"}\n" + clean) {
		t.Error("a secret in a log line went unreported")
	}
	shown, _ := os.ReadFile(report.Name())
	if !strings.Contains(string(shown), `{"msg":"config","app_secret":"***"}`) || strings.Contains(string(shown), secret) {
		t.Errorf("the report shows %q, want the line with the secret hidden", shown)
	}
}
